"""
### monitor: drift and decay of the live model, and retrain requests

Runs when validated partitions arrive (their labels have just landed, so decay can be measured
for the predictions made on those days), or from the UI for chosen dates. For the model version
that serves traffic (`include/monitoring/`):

1. **check** — reads the inference log of the window one day at a time, joins the labels, and
   compares it with the reference profile saved with the model's training run: PSI per feature,
   JS for categoricals, score PSI and KS, base rate, live ROC AUC / log loss / calibration, missing
   and unknown values. Everything goes to MLflow (`<model>-monitoring`: one run per window, metrics
   charted over time, a report and a drift plot). The retrain policy (`include/monitoring/policy.py`) decides:
   drift or decay → retrain, unless a guard holds (a training run already active, cooldown since
   the last training, the daily cap, the same cause already requested); every decision is recorded
   with its reason.
2. **request_retrain** — only on a `retrain` decision: triggers `train` with the reason and the
   report's URI, so the challenger still has to pass the champion gate and the rollout. The train
   run's id comes from the decision (window and model version): a cleared or repeated monitor run
   finds the run it already started and is skipped, instead of starting a second training. The
   "training active" read above only spares a pointless request; the train run's own first task
   applies the guards again, one run at a time, where it cannot race.
"""

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from include.airflow_glue import VALIDATED_DATA, task_defaults
from include.settings import get_settings
from include.usecases import get_calendar

calendar = get_calendar()


@dag(
    schedule=[VALIDATED_DATA],
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
        from include.monitoring.monitor import run_monitor
        from include.monitoring.windows import monitoring_window
        from include.usecases import get_usecase

        usecase = get_usecase()
        events = [e.extra for evs in (triggering_asset_events or {}).values() for e in evs]
        start, end = monitoring_window(usecase.calendar.timezone, params["window_start"], params["window_end"], events)
        active = ti.get_dr_count(dag_id="train", states=["queued", "running"]) > 0
        return run_monitor(
            get_settings(), usecase, start, end, dag_id=dag_run.dag_id, dag_run_id=dag_run.run_id, training_active=active
        )

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
