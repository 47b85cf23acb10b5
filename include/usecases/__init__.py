"""Use cases: what data the loop ingests and what model it trains.

The machinery (storage, validation, training, gate, serving, monitoring) only talks to a
`UseCase`. To run the loop on your own data, add a module here that defines
`USECASE = UseCase(...)` and set LOOP_USECASE to its name; nothing else changes. A use case is
self-contained: its contract, source, features, target, calendar and cadence, the words the demo
uses for its records, and the broken deliveries the demo plants. It is checked when it is
loaded (`UseCase.__post_init__` for the names, `check_usecase` for what its functions return),
and every error names the field.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    import pandas as pd

    from include.settings import Settings

Kind = Literal["int", "float", "str", "datetime"]


@dataclass(frozen=True)
class Column:
    """One column of the landing contract."""

    name: str
    kind: Kind
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    mean_between: tuple[float, float] | None = None
    """Batch-level bounds on the column mean: catches unit changes that stay inside the range."""
    history_check: bool = True
    """Hold each batch to the column's recent history (`include.data.history`); False for a column
    that moves with the calendar (a month, a day of the month), whose past says nothing of the next interval."""


@dataclass(frozen=True)
class Contract:
    """What a landing partition must look like; the GX suite is generated from it."""

    columns: tuple[Column, ...]
    key: tuple[str, ...]
    """Columns that identify a record; must be unique within a partition."""
    event_time: str
    """UTC timestamp column; every row must fall inside the partition's interval."""
    rows_per_day: tuple[int, int]
    """Row-count bounds for one day of data; scaled by the interval length."""
    freshness_hours: int = 24
    """The newest row must be at most this many hours before the interval end."""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"contract has no column {name!r}")


class UseCaseError(ValueError):
    """A use case that contradicts itself; the message names the use case and the field."""


@dataclass(frozen=True)
class Calendar:
    """When the data starts and ends, the timezone intervals are cut in, and the data interval."""

    start: date
    end: date
    timezone: str
    cadence: Literal["daily", "weekly"] = "weekly"
    """One landing partition per day, or per week (starting on the start date's weekday)."""

    @property
    def interval(self) -> timedelta:
        return timedelta(days=1) if self.cadence == "daily" else timedelta(weeks=1)

    @property
    def cron(self) -> str:
        """The data intervals as a cron expression (midnight to midnight in `timezone`)."""
        return "0 0 * * *" if self.cadence == "daily" else f"0 0 * * {self.start.isoweekday() % 7}"

    @property
    def start_datetime(self) -> datetime:
        return datetime.combine(self.start, time(), ZoneInfo(self.timezone))

    @property
    def end_datetime(self) -> datetime:
        return datetime.combine(self.end, time(23, 59, 59), ZoneInfo(self.timezone))

    def intervals(self) -> list[tuple[datetime, datetime]]:
        """Every data interval from start to end, in local time (DST-aware, like Airflow's)."""
        out, day = [], self.start
        step = 1 if self.cadence == "daily" else 7
        tz = ZoneInfo(self.timezone)
        while day <= self.end:
            nxt = day + timedelta(days=step)
            out.append((datetime.combine(day, time(), tz), datetime.combine(nxt, time(), tz)))
            day = nxt
        return out


@dataclass(frozen=True)
class Wording:
    """How the demo and the reports speak of the records."""

    record: str = "record"
    records: str = "records"
    positive: str = "positive"
    """What a positive prediction means, e.g. `late`."""


@dataclass(frozen=True)
class Demo:
    """What `make demo` replays: up to `end`, with `faults` planted (interval index → fault name,
    a generic one of `include/local/faults.py` or one of the use case's own `faults`)."""

    end: date
    faults: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UseCase:
    """A data source plus a supervised model task over it."""

    name: str
    model_name: str
    contract: Contract
    calendar: Calendar
    load_interval: Callable[[datetime, datetime], pd.DataFrame]
    """Replay source: the rows of [start, end), already in the contract's shape."""
    build_features: Callable[[pd.DataFrame], pd.DataFrame]
    build_target: Callable[[pd.DataFrame], pd.Series]
    """1/0 label; rows whose label is not known yet (or never) are NaN and are left out."""
    features: tuple[str, ...]
    """Model input columns in order: the columns of `build_features`, the items of `encode_records`."""
    categorical: tuple[str, ...] = ()
    """Feature columns holding category codes (XGBoost feature type `c`)."""
    slices: tuple[str, ...] = ()
    """Contract columns whose values the gate and the reports break metrics down by."""
    serving_inputs: tuple[str, ...] = ()
    """Contract columns a prediction request carries (the service's request schema is generated
    from their contract types and bounds); must include the key and the event time."""
    encode_records: Callable[[Sequence[Mapping]], list[list[float]]] | None = None
    """The features of `build_features` for request records, without pandas (the serving hot path);
    `check_usecase` checks both give the same numbers."""
    drift_exempt: tuple[str, ...] = ()
    """Features expected to move with time (a calendar month): reported, but never counted as drift."""
    wording: Wording = Wording()
    faults: Mapping[str, Callable[[pd.DataFrame], pd.DataFrame]] = field(default_factory=dict)
    """Broken deliveries particular to this data (a unit change, a renamed column), for the demo
    and the gate's tests; each takes the interval's correct rows and returns what arrives."""
    demo: Demo | None = None
    description: str = ""

    def __post_init__(self):
        names = set(self.contract.names)

        def fail(field_name: str, problem: str):
            raise UseCaseError(f"use case {self.name!r}: {field_name} {problem}")

        def subset(field_name: str, values, of: set, what: str):
            unknown = [v for v in values if v not in of]
            if unknown:
                fail(field_name, f"names {unknown}, which are not {what}")

        if not self.features:
            fail("features", "is empty: name the model's input columns")
        if len(set(self.features)) != len(self.features):
            fail("features", "has duplicates")
        subset("contract.key", self.contract.key, names, "contract columns")
        if self.contract.event_time not in names or self.contract.column(self.contract.event_time).kind != "datetime":
            fail("contract.event_time", f"{self.contract.event_time!r} must be a datetime column of the contract")
        subset("categorical", self.categorical, set(self.features), "among the features")
        subset("drift_exempt", self.drift_exempt, set(self.features), "among the features")
        subset("slices", self.slices, names, "contract columns")
        subset("serving_inputs", self.serving_inputs, names, "contract columns")
        if self.serving_inputs:
            missing = [c for c in (*self.contract.key, self.contract.event_time) if c not in self.serving_inputs]
            if missing:
                fail("serving_inputs", f"lacks {missing}: a request must carry the record key and the event time")
            if self.encode_records is None:
                fail("encode_records", "is missing: a use case with serving_inputs must encode request records")


def sample_frame(usecase: UseCase, rows: int = 4) -> pd.DataFrame:
    """A few rows that keep every promise of the contract (types, bounds, allowed values; nulls in
    the nullable columns of the last row), to check a use case's functions without its data."""
    import pandas as pd

    start = usecase.calendar.start_datetime.astimezone(UTC)
    data: dict[str, list] = {}
    for col in usecase.contract.columns:
        values: list = []
        for i in range(rows):
            share = i / max(rows - 1, 1)
            lo = col.min if col.min is not None else 0.0
            hi = col.max if col.max is not None else lo + 100.0
            if col.nullable and i == rows - 1:
                values.append(None)
            elif col.kind == "datetime":
                values.append(pd.Timestamp(start + timedelta(hours=i)))
            elif col.allowed:
                values.append(col.allowed[i % len(col.allowed)])
            elif col.kind == "str":
                values.append(f"x{i}")
            elif col.kind == "int":
                values.append(int(round(lo + (hi - lo) * share)))
            else:
                values.append(float(lo + (hi - lo) * share))
        data[col.name] = values
    df = pd.DataFrame(data)
    for col in usecase.contract.columns:
        if col.kind == "float":
            df[col.name] = df[col.name].astype("float64")
        elif col.kind == "datetime":
            df[col.name] = pd.to_datetime(df[col.name], utc=True)
    return df


def check_usecase(usecase: UseCase) -> UseCase:
    """What the use case's functions return agrees with what it declares: `build_features` gives
    exactly `features` as numbers, `encode_records` gives the same numbers for the same records,
    `build_target` gives 1/0/NaN per row. Raises `UseCaseError` naming the field."""
    import numpy as np

    def fail(field_name: str, problem: str):
        raise UseCaseError(f"use case {usecase.name!r}: {field_name} {problem}")

    df = sample_frame(usecase)
    try:
        X = usecase.build_features(df)
    except Exception as exc:
        fail("build_features", f"fails on rows that keep the contract: {type(exc).__name__}: {exc}")
    if list(X.columns) != list(usecase.features):
        fail("build_features", f"returns columns {list(X.columns)}, but features declares {list(usecase.features)}")
    if len(X) != len(df):
        fail("build_features", f"returns {len(X)} rows for {len(df)}: one row of features per record")
    non_numeric = [c for c in X.columns if not np.issubdtype(X[c].dtype, np.number)]
    if non_numeric:
        fail("build_features", f"returns non-numeric columns {non_numeric} (categoricals go in as codes)")
    y = usecase.build_target(df)
    values = set(np.unique(np.asarray(y, dtype="float64")[~np.isnan(np.asarray(y, dtype="float64"))]))
    if len(y) != len(df) or not values <= {0.0, 1.0}:
        fail("build_target", f"must give 1, 0 or NaN per row; gave {len(y)} values {sorted(values)} for {len(df)} rows")
    if usecase.encode_records is not None:
        records = [
            {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()}
            for r in df[list(usecase.serving_inputs)].astype("object").to_dict("records")
        ]
        encoded = np.asarray(usecase.encode_records(records), dtype="float64")
        built = X.to_numpy(dtype="float64")
        if encoded.shape != built.shape:
            fail("encode_records", f"returns shape {encoded.shape} where build_features gives {built.shape}")
        agrees = np.isclose(encoded, built, rtol=0, atol=1e-9, equal_nan=True).all(axis=0)
        if not agrees.all():
            bad = [usecase.features[j] for j in np.flatnonzero(~agrees)]
            fail("encode_records", f"disagrees with build_features on {bad}: serving would score other numbers than training")
    return usecase


def load_usecase(name: str) -> UseCase:
    """The `USECASE` of module `include/usecases/<name>.py`, as declared (no settings applied)."""
    try:
        module = importlib.import_module(f"include.usecases.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"include.usecases.{name}":
            raise
        raise ValueError(f"LOOP_USECASE={name!r}: no module include/usecases/{name}.py") from exc
    usecase = getattr(module, "USECASE", None)
    if not isinstance(usecase, UseCase):
        raise ValueError(f"include/usecases/{name}.py defines no USECASE = UseCase(...)")
    return usecase


def registered_model_name(settings: Settings, usecase: UseCase | None = None) -> str:
    """The registered model the loop trains, serves and monitors: LOOP_MODEL_NAME where set, else
    the use case's own (`usecase`, or the one LOOP_USECASE names, loaded only when needed)."""
    return settings.model_name or (usecase or load_usecase(settings.usecase)).model_name


def get_calendar(name: str | None = None) -> Calendar:
    """The calendar the loop runs on: the use case's, with LOOP_START_DATE, LOOP_END_DATE and
    LOOP_TIMEZONE applied where set. Cheap (DAG files call it while parsing)."""
    from include.settings import get_settings

    settings = get_settings()
    return override_calendar(
        load_usecase(name or settings.usecase).calendar,
        start=settings.start_date,
        end=settings.end_date,
        timezone=settings.timezone,
        names=("LOOP_START_DATE", "LOOP_END_DATE"),
    )


def override_calendar(
    calendar: Calendar,
    *,
    start: date | None = None,
    end: date | None = None,
    timezone: str | None = None,
    names: tuple[str, str] = ("the start", "the end"),
) -> Calendar:
    """`calendar` with the start, end and timezone that are given (None: its own). A calendar that
    would end before it starts raises ValueError, naming its dates as the caller's user sets them
    (`names`: the start's and the end's, e.g. their variables or options)."""
    overrides = {"start": start, "end": end, "timezone": timezone}
    calendar = replace(calendar, **{k: v for k, v in overrides.items() if v is not None})
    if calendar.end < calendar.start:
        raise ValueError(f"{names[1]} {calendar.end} is before {names[0]} {calendar.start} (set, or the use case's)")
    return calendar


@cache
def _checked(name: str) -> UseCase:
    return check_usecase(load_usecase(name))


def get_usecase(name: str | None = None) -> UseCase:
    """The use case named by LOOP_USECASE (or `name`), checked once per process, on the calendar
    of `get_calendar`."""
    from include.settings import get_settings

    name = name or get_settings().usecase
    return replace(_checked(name), calendar=get_calendar(name))
