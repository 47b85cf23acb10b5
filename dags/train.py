"""
### train: retrain the model on validated data, then run the champion gate

Runs when the `monitor` DAG asks (drift or decay, with the reason and the report), every Monday
as scheduled retraining, from the UI with the form below, and, with `LOOP_RETRAIN_ON=data` (the
default), whenever validated partitions arrive (events coalesce: one run at a time, and a run
consumes every event queued while the previous one ran). With `LOOP_RETRAIN_ON=drift`, new data
alone never trains: the monitor asks for the first model once enough data is validated.

First, **admit**: a run the schedule did not start (the monitor's request, an alert through the
webhook, the UI, REST) trains only if the retrain policy's guards allow it: no other training
running, and not within the cooldown since the last training (`include/monitoring/policy.py`,
`admit`). Otherwise it ends there, skipped, with the reason recorded in MLflow
(`<model>-admission`). Tick **Force** in the form to train anyway. One run at a time
(`max_active_runs=1`) is what makes this check and the training it admits one step.

Then it trains XGBoost on a rolling window of validated partitions (newest
partition held out for evaluation), logs everything to MLflow, registers a version with alias
`challenger`, logs the monitor's reference profile of it (`include/monitoring/profile.py`), and
promotes it to `champion` only if it passes the gate in `include/model/gate.py`.
"""

from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from include.airflow_glue import CHAMPION_MODEL, VALIDATED_DATA, airflow_outcome, form_params, task_defaults
from include.model.params import TrainParams, form_defaults
from include.settings import get_settings
from include.usecases import get_calendar

settings = get_settings()
calendar = get_calendar()
WEEKLY = CronTriggerTimetable("0 6 * * 1", timezone="UTC")  # scheduled retraining, Mondays 06:00 UTC


@dag(
    schedule=(AssetOrTimeSchedule(timetable=WEEKLY, assets=VALIDATED_DATA) if settings.retrain_on == "data" else WEEKLY),
    start_date=pendulum.instance(calendar.start_datetime),
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(retry_delay=timedelta(seconds=30)),
    tags=["loop", "model", "mlflow"],
    doc_md=__doc__,
    # One definition of the knobs: the form is generated from TrainParams (bounds included).
    params=form_params(TrainParams, form_defaults(settings))
    | {
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Train even if the retrain guards hold (another training running, the cooldown since the last).",
        )
    },
)
def train():
    @task.short_circuit
    def admit(params=None, dag_run=None, ti=None) -> bool:
        from include.monitoring.monitor import admit_training
        from include.usecases import get_usecase

        running = ti.get_dr_count(dag_id=dag_run.dag_id, states=["running"])  # this run included
        decision = admit_training(
            get_settings(),
            get_usecase(),
            dag_id=dag_run.dag_id,
            dag_run_id=dag_run.run_id,
            run_type=dag_run.run_type.value,
            requested_by=dag_run.triggering_user_name or "",
            force=params["force"],
            training_active=running > 1,
        )
        print(f"admission: {decision['action']} ({decision['reason']})")
        return decision["action"] == "train"

    @task
    def train_challenger(params=None, dag_run=None) -> dict:
        from include.model.training import train_candidate
        from include.usecases import get_usecase

        with airflow_outcome():  # not enough data yet: skipped
            return train_candidate(
                get_usecase(), TrainParams.from_mapping(params), get_settings(), dag_id=dag_run.dag_id, dag_run_id=dag_run.run_id
            )

    @task
    def profile_reference(candidate: dict) -> dict:
        from include.monitoring.profile import log_reference_profile
        from include.usecases import get_usecase

        uri = log_reference_profile(
            get_settings().mlflow_tracking_uri, get_usecase(), candidate["model_name"], candidate["version"]
        )
        return {**candidate, "profile_uri": uri}

    @task
    def champion_gate(candidate: dict) -> dict:
        from include.model.gate import run_champion_gate
        from include.usecases import get_usecase

        settings = get_settings()  # with a refit to come, the gate records its decision and leaves the alias
        return run_champion_gate(
            get_usecase(), settings, candidate["model_name"], candidate["version"], move_alias=not settings.refit
        )

    @task
    def refit(decision: dict, params=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.model.refit import refit_accepted
        from include.usecases import get_usecase

        if not decision["promoted"]:
            raise AirflowSkipException(f"version {decision['version']} not promoted: {decision['reason']}")
        if not get_settings().refit:  # LOOP_REFIT=false: the gate moved the alias to the challenger
            raise AirflowSkipException(f"LOOP_REFIT is off: version {decision['version']} serves as judged")
        return refit_accepted(
            get_usecase(),
            TrainParams.from_mapping(params),
            get_settings(),
            decision,
            dag_id=dag_run.dag_id,
            dag_run_id=dag_run.run_id,
        )

    @task
    def serve_refit(refitted: dict) -> dict:
        from include.model.refit import serve_accepted
        from include.usecases import get_usecase

        return serve_accepted(get_settings(), refitted, get_usecase())

    @task(outlets=[CHAMPION_MODEL], trigger_rule="none_failed_min_one_success")
    def announce_champion(decision: dict, served: dict | None = None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision["promoted"]:
            raise AirflowSkipException(f"version {decision['version']} not promoted: {decision['reason']}")
        ref = {k: (served or decision)[k] for k in ("model_name", "version", "run_id")}
        outlet_events[CHAMPION_MODEL].extra = ref
        return ref

    candidate = train_challenger()
    admit() >> candidate
    decision = champion_gate(profile_reference(candidate))
    served = serve_refit(profile_reference.override(task_id="profile_refit")(refit(decision)))
    announce_champion(decision, served)


train()
