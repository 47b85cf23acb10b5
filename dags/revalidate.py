"""
### revalidate: put a quarantined partition through the data gate again, after a fix

Manual only. Name the partition as the quarantine alert and the summary do (`dt=…Z`). Either the
upstream system has delivered a corrected file to the partition's landing path, or tick
**Re-fetch** to pull the interval again from the use case's source. The quarantined input stays
under `quarantine/` as evidence. A passing partition emits the validated-data Asset event, so
`train` and `monitor` pick it up like any new partition; one that still fails is quarantined again
(with a new alert). Refused, with the reason, for a partition that was never quarantined or whose
landing input has not changed since.
"""

from datetime import timedelta

from airflow.sdk import Param, dag, task

from include.airflow_glue import VALIDATED_DATA, airflow_outcome, optional_reason, task_defaults
from include.settings import get_settings


@dag(
    schedule=None,
    catchup=False,
    default_args=task_defaults(retry_delay=timedelta(seconds=20)),
    tags=["loop", "data", "gx", "manual"],
    doc_md=__doc__,
    params={
        "partition": Param(
            type="string",
            pattern=r"^dt=\d{4}-\d{2}-\d{2}T\d{4}Z$",
            title="Quarantined partition",
            description="Its id as the quarantine alert names it, e.g. dt=2013-01-29T0500Z.",
        ),
        "refetch": Param(
            False,
            type="boolean",
            title="Re-fetch from the source",
            description="Replace the landing input with a fresh pull of the interval (the quarantined input is kept).",
        ),
        "reason": optional_reason("What was fixed (kept in the run's note and log)."),
    },
)
def revalidate():
    @task(outlets=[VALIDATED_DATA])
    def validate_again(params=None, outlet_events=None) -> dict:
        from include.data.gate import validated_ref
        from include.data.revalidate import revalidate_quarantined
        from include.usecases import get_usecase

        print(f"re-validating {params['partition']}: {params['reason'] or '(no reason given)'}")
        with airflow_outcome():  # refused, or quarantined again: fails without retries
            record = revalidate_quarantined(
                get_usecase(),
                params["partition"],
                refetch=params["refetch"],
                max_bad_row_share=get_settings().max_bad_row_share,
            )
        outlet_events[VALIDATED_DATA].extra = validated_ref(record)
        return validated_ref(record)

    validate_again()


revalidate()
