"""The backtest's timeline: the calendar's intervals (the use case's partitions) grouped into weeks
counted from the calendar's start, numbered from 1. With a weekly calendar a week is one partition
(the flights of 2013: Tuesday to Monday in New York time, the last week a single day), with a daily
calendar seven.

* A model trained at the end of week t uses the training window of the `train` DAG's defaults: the
  partitions of the `window_weeks` weeks ending with week t, the newest `eval_partitions` of them
  held out for evaluation, as `select_partitions` picks them. It serves week t+1.
* The first model is trained at the end of the first week with a full window and serves the week
  after; every policy serves the same weeks, from there to the last.
* After serving week w, the monitor sees that week whole: features, the served model's scores and
  the labels, which land with the week's data. The policy decides; a retrain trains on the window
  ending with week w, and the new model serves week w+1. Nothing is trained after the last week
  (no week is left to serve), and a retrain is counted only when its model serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from include.usecases import Calendar


class NoWeekToServe(ValueError):
    """The replay is too short for its training window: no week is left to serve."""


@dataclass(frozen=True)
class Week:
    number: int
    """1 for the calendar's first week."""
    start: datetime
    end: datetime
    partitions: tuple[tuple[datetime, datetime], ...]
    """The calendar's intervals in the week (one for a weekly calendar)."""


def replay_weeks(calendar: Calendar, weeks: int | None = None) -> list[Week]:
    """The calendar's intervals grouped into weeks from its start (the first `weeks` only, if given)."""
    groups: dict[int, list[tuple[datetime, datetime]]] = {}
    for start, end in calendar.intervals():
        groups.setdefault((start.date() - calendar.start).days // 7, []).append((start, end))
    out = [Week(i + 1, parts[0][0], parts[-1][1], tuple(parts)) for i, parts in enumerate(groups.values())]
    return out[:weeks] if weeks else out


def partition_records(weeks: list[Week]) -> list[dict]:
    """The weeks' partitions as the records `select_partitions` reads (bounds in UTC, as the gate writes them)."""
    return [
        {
            "partition": start.isoformat(),
            "interval_start": start.astimezone(UTC).isoformat(),
            "interval_end": end.astimezone(UTC).isoformat(),
        }
        for week in weeks
        for start, end in week.partitions
    ]


def first_model_week(weeks: list[Week], window_weeks: int) -> int:
    """The first week with a full training window behind it; raises if no week would be left to serve."""
    if len(weeks) <= window_weeks:
        raise NoWeekToServe(
            f"{len(weeks)} weeks to replay and a {window_weeks}-week training window leave no week to serve: "
            "replay more weeks (--weeks, --start/--end) or shorten the window (--window-weeks)"
        )
    return window_weeks


def fixed_schedule(first: int, last: int, every: int | None) -> list[int]:
    """The weeks after which a schedule retraining every `every` weeks trains a model that serves: the
    first model (end of week `first`) serves from week first+1, each model `every` weeks, and nothing
    is trained after week `last`. None: never."""
    return [] if every is None else list(range(first + every, last, every))


def matching_interval(retrains: int, first: int, last: int) -> int:
    """The k whose `fixed_schedule` retrains closest to `retrains` times (the smaller k on a tie);
    k = the number of served weeks when `retrains` is 0 (a schedule that never comes due)."""
    served = last - first
    if served < 1:
        raise ValueError(f"no served weeks between the first model (week {first}) and the last week ({last})")
    return min(range(1, served + 1), key=lambda k: (abs(len(fixed_schedule(first, last, k)) - retrains), k))
