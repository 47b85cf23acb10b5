"""
### rollback: put a chosen model version back in front of users

Manual only: trigger it from the UI with the version to restore (the form checks the input) and
a reason. It first waits for the serving slots (the rollout lease: never during a deploy's canary).
The version goes through the same rollout tasks as `deploy` (the bento is reused,
idle-slot start, infra validation), then takes all traffic in one step: the `canary` task in
restore mode, a single short bake, since this is the way back and the version has served before. The `champion` alias moves to it, so the next challenger is gated against what
actually serves; the reason is recorded on the version. The run ends early if the version already
serves all traffic.
"""

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from include.airflow_glue import claim_serving_slots, optional_reason, rollout_claim, rollout_steps, task_defaults
from include.settings import get_settings
from include.usecases import get_calendar

settings = get_settings()
calendar = get_calendar()


@dag(
    schedule=None,
    start_date=pendulum.instance(calendar.start_datetime),
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
        "reason": optional_reason("Recorded on the model version."),
    },
)
def rollback():
    @task.short_circuit
    def plan(params=None, dag_run=None) -> dict | None:
        from include.rollout.rollout import plan_rollout
        from include.usecases import get_usecase

        # Waits while another deploy or rollback holds the slots; None: already live, skip the rest.
        return plan_rollout(
            get_settings(), get_usecase(), params["version"], restore_reason=params["reason"] or "", **rollout_claim(dag_run)
        )

    rollout_steps(claim_serving_slots() >> plan())


rollback()
