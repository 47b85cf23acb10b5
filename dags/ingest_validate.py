"""
### ingest_validate: land one partition per data interval and put it through the data gate

Each data interval of the use case's calendar (weekly for the flights, daily or weekly for yours)
lands as one Parquet partition (from the replay source in the demo,
from your upstream system in production) and is validated by the Great Expectations suite
generated from the use case's contract (`include/data/gate.py`):

* a few bad rows → quarantined with a reason per row; the rest is published;
* a bad batch (schema, types, row count, freshness, unit change, duplicate, too many bad rows,
  a column far from the last validated intervals) → quarantined whole, the task fails naming
  the partition and the failed expectations, and nothing downstream runs. Fix the input, then
  re-validate it from the `revalidate` form (or clear the task).

A passing partition emits the validated-data Asset event that schedules `train`.
"""

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from include.airflow_glue import VALIDATED_DATA, airflow_outcome, task_defaults
from include.settings import get_settings
from include.usecases import get_calendar

settings = get_settings()
calendar = get_calendar()


@dag(
    # One partition per data interval of the use case's calendar: midnight to midnight in its
    # timezone (DST-aware), daily or weekly (on the start date's weekday).
    schedule=CronDataIntervalTimetable(calendar.cron, timezone=calendar.timezone),
    start_date=pendulum.instance(calendar.start_datetime),
    end_date=pendulum.instance(calendar.end_datetime),
    catchup=True,
    max_active_runs=settings.ingest_max_active_runs,  # intervals validated side by side in a catch-up
    default_args=task_defaults(retry_delay=timedelta(seconds=20)),
    tags=["loop", "data", "gx"],
    doc_md=__doc__,
)
def ingest_validate():
    @task
    def land(data_interval_start=None, data_interval_end=None) -> str:
        from include.data.partitions import Partition, land_partition
        from include.usecases import get_usecase

        usecase = get_usecase()
        partition = Partition(usecase.name, data_interval_start, data_interval_end)
        return land_partition(usecase, partition, replay=get_settings().replay)

    @task(outlets=[VALIDATED_DATA])
    def validate(landing_uri: str, data_interval_start=None, data_interval_end=None, outlet_events=None) -> dict:
        from include.data.gate import validate_partition, validated_ref
        from include.data.partitions import Partition
        from include.usecases import get_usecase

        usecase = get_usecase()
        partition = Partition(usecase.name, data_interval_start, data_interval_end)
        with airflow_outcome():  # a quarantined batch fails now: retrying the same bytes cannot help
            record = validate_partition(usecase, partition, max_bad_row_share=get_settings().max_bad_row_share)
        ref = validated_ref(record)
        outlet_events[VALIDATED_DATA].extra = ref
        return ref

    validate(land())


ingest_validate()
