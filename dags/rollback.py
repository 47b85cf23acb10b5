"""
### rollback: put a chosen model version back in front of users

Manual only: trigger it from the UI with the version to restore (the form checks the input) and
a reason. The version goes through the same build (reused), idle-slot start and infra validation
as any rollout, then takes all traffic at once (no canary: this is the way back, and the version
has served before). The `champion` alias moves to it, so the next challenger is gated against what
actually serves; the reason is recorded on the version. The run ends early if the version already
serves all traffic.
"""

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from include.assets import DEPLOYMENT
from include.config import get_settings
from include.notify import task_defaults

settings = get_settings()


@dag(
    schedule=None,
    start_date=pendulum.instance(settings.start_datetime),
    catchup=False,
    max_active_runs=1,
    # The tasks start and stop the slots: they run where the slots live (LOOP_SERVING_QUEUE).
    default_args=task_defaults(retry_delay=timedelta(seconds=15), queue=settings.serving_queue),
    tags=["loop", "serving", "manual"],
    doc_md=__doc__,
    params={
        "version": Param(
            type="string",
            pattern=r"^[0-9]+$",
            title="Model version to restore",
            description="A registered version of the model (see MLflow), e.g. 3.",
        ),
        "reason": Param("", type="string", maxLength=500, title="Reason", description="Recorded on the model version."),
    },
)
def rollback():
    @task.short_circuit
    def plan(params=None) -> dict | None:
        from include.deploy import plan_rollout
        from include.usecases import get_usecase

        return plan_rollout(get_settings(), get_usecase(), params["version"])  # None: already live, skip the rest

    @task
    def restore(ref: dict, params=None, dag_run=None, outlet_events=None) -> dict:
        from include.deploy import fail_fast, restore_version
        from include.usecases import get_usecase

        with fail_fast():
            return restore_version(get_settings(), get_usecase(), ref, params["reason"], dag_run.run_id)

    @task(outlets=[DEPLOYMENT])
    def record(live: dict, outlet_events=None) -> dict:
        outlet_events[DEPLOYMENT].extra = live
        return live

    record(restore(plan()))


rollback()
