"""
### train: retrain the model on validated data, then run the champion gate

Runs when the `monitor` DAG asks (drift or decay, with the reason and the report), every Monday
as scheduled retraining, from the UI with the form below, and, with `LOOP_RETRAIN_ON=data` (the
default), whenever validated partitions arrive (events coalesce: one run at a time, and a run
consumes every event queued while the previous one ran). With `LOOP_RETRAIN_ON=drift`, new data
alone never trains: the monitor asks for the first model once enough data is validated.

Trains XGBoost on a rolling window of validated partitions (newest
partition held out for evaluation), logs everything to MLflow, registers a version with alias
`challenger`, and promotes it to `champion` only if it passes the gate in `include/evaluate.py`.
"""

from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from include.assets import CHAMPION_MODEL, VALIDATED_DATA
from include.config import get_settings
from include.notify import task_defaults

settings = get_settings()
WEEKLY = CronTriggerTimetable("0 6 * * 1", timezone="UTC")  # scheduled retraining, Mondays 06:00 UTC


@dag(
    schedule=(AssetOrTimeSchedule(timetable=WEEKLY, assets=VALIDATED_DATA) if settings.retrain_on == "data" else WEEKLY),
    start_date=pendulum.instance(settings.start_datetime),
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(retry_delay=timedelta(seconds=30)),
    tags=["loop", "model", "mlflow"],
    doc_md=__doc__,
    params={
        "window_weeks": Param(
            settings.train_window_weeks,
            type="integer",
            minimum=2,
            maximum=104,
            title="Training window (weeks)",
            description="Validated partitions this far back from the newest.",
        ),
        "eval_partitions": Param(
            settings.eval_partitions,
            type="integer",
            minimum=1,
            maximum=8,
            title="Evaluation partitions",
            description="Newest partitions held out for evaluation.",
        ),
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date",
            title="As of (optional)",
            description="Train as if this date were today: use partitions starting on or before it.",
        ),
        "n_estimators": Param(300, type="integer", minimum=10, maximum=5000, title="Trees"),
        "max_depth": Param(6, type="integer", minimum=1, maximum=16, title="Max depth"),
        "learning_rate": Param(0.1, type="number", exclusiveMinimum=0, maximum=1, title="Learning rate"),
        "subsample": Param(0.9, type="number", exclusiveMinimum=0, maximum=1, title="Row subsample"),
        "colsample_bytree": Param(0.8, type="number", exclusiveMinimum=0, maximum=1, title="Column subsample"),
        "min_child_weight": Param(1.0, type="number", minimum=0, maximum=1000, title="Min child weight"),
        "reason": Param(
            "",
            type="string",
            maxLength=500,
            title="Reason",
            description="Why this run: recorded on the MLflow run (e.g. 'alert 1234: drift on temp').",
        ),
        "report_uri": Param(
            None,
            type=["null", "string"],
            maxLength=1000,
            title="Monitoring report (optional)",
            description="Set by the monitor when it requests retraining: the drift/decay report behind the request.",
        ),
    },
)
def train():
    @task
    def train_challenger(params=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.train import NotEnoughData, TrainParams, train_candidate
        from include.usecases import get_usecase

        try:
            return train_candidate(
                get_usecase(), TrainParams.from_mapping(params), get_settings(), dag_id=dag_run.dag_id, dag_run_id=dag_run.run_id
            )
        except NotEnoughData as exc:
            raise AirflowSkipException(str(exc)) from exc

    @task
    def champion_gate(candidate: dict) -> dict:
        from include.evaluate import run_champion_gate
        from include.usecases import get_usecase

        return run_champion_gate(get_usecase(), get_settings(), candidate["model_name"], candidate["version"])

    @task(outlets=[CHAMPION_MODEL])
    def announce_champion(decision: dict, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision["promoted"]:
            raise AirflowSkipException(f"version {decision['version']} not promoted: {decision['reason']}")
        ref = {k: decision[k] for k in ("model_name", "version", "run_id")}
        outlet_events[CHAMPION_MODEL].extra = ref
        return ref

    announce_champion(champion_gate(train_challenger()))


train()
