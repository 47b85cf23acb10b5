"""Where the inference log lives: the layout its writer (`include/serving/inference_log.py`, in the
bento) and its readers (`include/data/inference_log.py`, the monitor's) share.

Parts are partitioned by the event date of the record (`inference/<usecase>/dt=YYYY-MM-DD/`), so
a reader takes a window by listing prefixes. Columns of a part: request_id, the request's fields as
sent (the contract key, the event time and every input), the model features computed from them
(`feature.<name>`), score, decision, model_version, slot and served_at (UTC).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from include.settings import Settings
    from include.usecases import UseCase

PREFIX = "inference"
FEATURE_PREFIX = "feature."
"""Model features are logged beside the request fields they came from, as `feature.<name>`."""


def part_prefix(usecase: str, day: date) -> str:
    return f"{PREFIX}/{usecase}/dt={day.isoformat()}/"


def log_lateness(settings: Settings, usecase: UseCase) -> timedelta:
    """How much older than the newest event a record may be and still be logged: the writers'
    bound (LOOP_INFERENCE_LOG_MAX_LATENESS_HOURS, by default one data interval), which also says
    when a day is closed to them (`include/data/inference_log.py`)."""
    hours = settings.inference_log_max_lateness_hours
    return timedelta(hours=hours) if hours else usecase.calendar.interval
