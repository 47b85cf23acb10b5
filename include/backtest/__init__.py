"""`make backtest`: every retrain policy replayed on the use case's history, week by week.

No servers: no MLflow, no Airflow, no GX. The replay calls what the DAGs call, on the rows the use
case's `load_interval` returns (already in the contract's shape: the data gate is not replayed):
`dataset.select_partitions` for the training window, the training task's own steps
(`training.training_rows`, `fit_model`, `evaluate`) for the model and its evaluation,
`profile.reference_profile` for its reference, `windows.frame_report` for what the monitor sees,
`policy.decide` for the decision. The week's score (`metrics.compute_metrics` of its labelled
rows) and CBPE's estimate are the report's own.

One module per concern:

* `timeline`: the calendar's intervals as weeks, which week trains the first model, fixed schedules.
* `replay`: the models of each window and the served weeks, computed once and fitted models kept on disk.
* `policies`: the policies compared and the loop that serves the weeks under them in step.
* `summary`: a policy's results from its weekly records, and the sweep of the default policy.
* `report`: the tables, the plot and results.json.
* `run`: `run_backtest`, all of the above for one use case; `__main__`: the command line.

The policies: `never` (the first model serves every week), `weekly`, `every 4 weeks`, `every k
weeks` with k chosen so it retrains as often as `default`, `drift (today's rule)`
(`PolicyConfig.todays_rule()`) and `default` (`PolicyConfig.from_settings`: the policy the monitor
runs with the same settings); the monitor's two get the use case's `drift_exempt` features, as the
monitor gives them. Times are data time, as in the monitor: "now" is the end of the week seen, the
last training the end of the serving model's window.

Writes to `--out` (default `backtest/`): `results.json` (settings, runtime, per policy its retrains,
per-week and mean ROC AUC and log loss, alerts, CBPE against the realised AUC, the default policy's
drift numbers), `results.md` (the table printed at the end) and `served_quality.png`.

    python -m include.backtest [--weeks N | --start DATE --end DATE] [--out DIR] [--usecase NAME] [--sweep]
"""
