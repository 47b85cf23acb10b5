"""
### monitor: drift and decay of the live model, and retrain requests

Runs on two clocks (`AssetOrTimeSchedule`):

* **every LOOP_MONITOR_EVERY_MINUTES** (scheduled, or triggered with no dates): the periodic check
  of served traffic, before any label exists — the LOOP_MONITOR_WINDOW_DAYS days of the inference
  log up to the newest logged event: feature drift against each feature's noise threshold,
  weighed by the model's attributions, and the performance estimated from the scores (CBPE);
* **when validated partitions arrive** (their labels have just landed), or from the UI for
  chosen dates: the same, plus live ROC AUC / log loss / calibration, so decay is measured for
  the predictions made on those days.

Windows are on the event clock (the records' event time, days in the use case's timezone):
`include/monitoring/windows.py`. For the model version that serves traffic (`include/monitoring/`):

1. **check** — reads the window's inference log one day at a time and compares it with the
   reference profile saved with the model's training run (training rows' features, held-out rows'
   scores, calibration and attributions): PSI per feature against its noise threshold, JS for
   categoricals, score PSI and KS, the estimated ROC AUC, base rate, missing and unknown values,
   and with labels the realised metrics. Everything goes to MLflow (`<model>-monitoring`: one run
   per window and kind, metrics charted over time, a report and a drift plot). The retrain policy
   (`include/monitoring/policy.py`) decides: drift carrying enough of the model, an estimated or
   realised drop (the latter with its confidence interval) → retrain, unless a guard holds (a
   training run already active, cooldown since the last training, the daily cap, the same cause
   already requested); every decision is recorded with its reason.
2. **request_retrain** — only on a `retrain` decision: triggers `train` with the reason and the
   report's URI, so the challenger still has to pass the champion gate and the rollout. The train
   run's id comes from the decision (window and model version): a cleared or repeated monitor run
   finds the run it already started and is skipped, instead of starting a second training. The
   "training active" read above only spares a pointless request; the train run's own first task
   applies the guards again, one run at a time, where it cannot race.

The check also compacts the inference log: the window's days, and every closed day (older than the
newest logged event by more than the writers' lateness bound), deleting the parts a merge replaced
once it is old enough (`include/data/inference_log.py`).
"""

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import AssetOrTimeSchedule, DeltaTriggerTimetable, Param, dag, task

from include.airflow_glue import VALIDATED_DATA, task_defaults
from include.settings import get_settings
from include.usecases import get_calendar

calendar = get_calendar()
every = timedelta(minutes=get_settings().monitor_every_minutes)


@dag(
    schedule=AssetOrTimeSchedule(timetable=DeltaTriggerTimetable(every), assets=[VALIDATED_DATA]),
    start_date=pendulum.instance(calendar.start_datetime),
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(retry_delay=timedelta(seconds=30)),
    tags=["loop", "monitoring", "mlflow"],
    doc_md=__doc__,
    params={
        "window_start": Param(
            None, type=["null", "string"], format="date", title="Window start (optional)", description="First day checked."
        ),
        "window_end": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Window end (optional)",
            description="Day after the last day checked.",
        ),
    },
)
def monitor():
    @task
    def check(params=None, triggering_asset_events=None, dag_run=None, ti=None) -> dict:
        from include.monitoring.monitor import MonitorWindow, check_served_traffic, run_monitor
        from include.monitoring.windows import monitoring_window
        from include.usecases import get_usecase

        usecase, settings = get_usecase(), get_settings()
        events = [e.extra for evs in (triggering_asset_events or {}).values() for e in evs]
        active = ti.get_dr_count(dag_id="train", states=["queued", "running"]) > 0
        run = {"dag_id": dag_run.dag_id, "dag_run_id": dag_run.run_id}
        if not (events or params["window_start"] or params["window_end"]):
            return check_served_traffic(settings, usecase, **run, training_active=active)  # the periodic check: no labels
        start, end = monitoring_window(usecase.calendar.timezone, params["window_start"], params["window_end"], events)
        return run_monitor(settings, usecase, MonitorWindow(start, end, **run), training_active=active)

    @task.short_circuit
    def needs_retraining(result: dict) -> bool:
        print(f"decision: {result['action']} ({result['reason']})")
        return result["action"] == "retrain"

    result = check()
    request_retrain = TriggerDagRunOperator(
        task_id="request_retrain",
        trigger_dag_id="train",
        trigger_run_id=result["retrain_run_id"],
        conf=result["retrain_conf"],
        skip_when_already_exists=True,  # the decision's run exists: skip, neither fail nor start another
        reset_dag_run=False,  # and never clear it: that would train a second time
    )
    needs_retraining(result) >> request_retrain


monitor()
