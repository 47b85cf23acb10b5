"""
### deploy: roll the champion out blue/green behind Traefik

Runs when the `champion` alias moves (the champion-model Asset), or from the UI for a chosen
version. Steps (`include/model/packaging.py`, `include/rollout/`):

0. **claim_slots** — takes the serving host's rollout lease; while another deploy or rollback
   holds it, it waits (a sensor in reschedule mode), so their traffic changes never interleave;
1. **plan** — nothing to do if the version already serves 100% of traffic (the run ends here);
2. **build_bento** — one bento per model version (reused if built), pinned to the project's lock,
   labelled with its lineage; the model's files must have the digest training recorded on the
   version (`include/integrity.py`), else the version is tagged `deploy.rejected` and the task
   fails without retries;
3. **start_candidate** — the idle slot (blue or green) serves the bento, with no traffic yet;
4. **infra_validate** — a golden set sent straight to the slot must score exactly as the MLflow
   registry's model does, within the latency budget; a failure stops the slot, tags the version
   `deploy.rejected` and alerts, and traffic never moves;
5. **canary** — 10% → 50% → 100% of traffic (LOOP_CANARY_STEPS), each step baked while Traefik's
   per-slot 5xx rate and latency are watched; a breach rolls back at once (tag `deploy.rolled_back`,
   alert);
6. **finalize** — the old slot drains and stops; the deployment is recorded on the model version.
"""

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from include.airflow_glue import CHAMPION_MODEL, claim_serving_slots, rollout_claim, rollout_steps, task_defaults
from include.settings import get_settings
from include.usecases import get_calendar

settings = get_settings()
calendar = get_calendar()


@dag(
    schedule=[CHAMPION_MODEL],
    start_date=pendulum.instance(calendar.start_datetime),
    catchup=False,
    max_active_runs=1,  # one deploy at a time; the rollout lease also keeps deploy and rollback apart
    # The tasks start and stop the slots: they run where the slots live (LOOP_SERVING_QUEUE).
    default_args=task_defaults(retry_delay=timedelta(seconds=15), queue=settings.serving_queue),
    tags=["loop", "serving", "bentoml"],
    doc_md=__doc__,
    params={
        "version": Param(
            None,
            type=["null", "string"],
            pattern=r"^[0-9]+$",
            title="Model version (optional)",
            description="Registered version to roll out; empty means the current `champion`.",
        ),
    },
)
def deploy():
    @task.short_circuit
    def plan(params=None, dag_run=None) -> dict | None:
        from include.rollout.rollout import plan_rollout
        from include.usecases import get_usecase

        # Waits while another deploy or rollback holds the slots; None: already live, skip the rest.
        return plan_rollout(get_settings(), get_usecase(), params["version"], **rollout_claim(dag_run))

    rollout_steps(claim_serving_slots() >> plan())


deploy()
