"""Realistic faults of a landing partition, for the demo and the tests of the data gate.

Each fault takes the partition's correct rows and returns what a broken upstream would deliver.
`plant_fault` writes that to the landing zone (create-only, like any delivery), so the gate meets
it exactly as it would meet a real one.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pandas as pd

from include.data.partitions import Partition
from include.data.storage import Storage, get_storage, write_parquet
from include.usecases import UseCase


def truncated(df: pd.DataFrame) -> pd.DataFrame:
    """The upload was cut off: only the first 40% of the interval's rows arrived."""
    return df.head(int(len(df) * 0.4))


def distance_in_km(df: pd.DataFrame) -> pd.DataFrame:
    """A unit change upstream: distance delivered in kilometres instead of miles."""
    return df.assign(distance=(df["distance"] * 1.609344).round())


def renamed_column(df: pd.DataFrame) -> pd.DataFrame:
    """Schema drift: a column renamed by the producer."""
    return df.rename(columns={"arr_delay": "arrival_delay"})


def numbers_as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Wrong type: a numeric column exported as text."""
    return df.assign(dep_delay=df["dep_delay"].astype("str"))


def empty(df: pd.DataFrame) -> pd.DataFrame:
    """An empty file with the right header."""
    return df.head(0)


def stale_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Freshness: the interval's newest day is missing (rows stop 2 days before its end)."""
    cutoff = df["time_hour"].max() - pd.Timedelta(days=2)
    return df[df["time_hour"] <= cutoff]


def some_bad_rows(df: pd.DataFrame, n: int = 7) -> pd.DataFrame:
    """A handful of impossible rows (negative distance, unknown carrier) in an otherwise good batch."""
    out = df.copy()
    idx = out.index[:: max(1, len(out) // n)][:n]
    out.loc[idx[: n // 2 + 1], "distance"] = -1.0
    out["carrier"] = out["carrier"].astype("object")
    out.loc[idx[n // 2 + 1 :], "carrier"] = "ZZ"
    out["carrier"] = out["carrier"].astype("str")
    return out


FAULTS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    f.__name__: f for f in (truncated, distance_in_km, renamed_column, numbers_as_text, empty, stale_rows, some_bad_rows)
}


def plant_fault(usecase: UseCase, partition: Partition, fault: str, storage: Storage | None = None) -> str:
    """Land the interval's rows with `fault` applied (create-only). Returns the landing URI.

    Two faults work on bytes rather than rows: `corrupt_file` (a Parquet file cut in half) and
    `duplicate_of:<partition id>` (another partition's file delivered again).
    """
    storage = storage or get_storage()
    if fault == "corrupt_file":
        buf = io.BytesIO()
        usecase.load_interval(partition.start, partition.end).to_parquet(buf, index=False)
        return storage.write_bytes(partition.landing_key, buf.getvalue()[: len(buf.getvalue()) // 2], create_only=True)
    if fault.startswith("duplicate_of:"):
        source = partition.landing_key.replace(partition.id, fault.split(":", 1)[1])
        return storage.write_bytes(partition.landing_key, storage.read_bytes(source), create_only=True)
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}, corrupt_file, duplicate_of:<id>")
    df = FAULTS[fault](usecase.load_interval(partition.start, partition.end))
    return write_parquet(storage, partition.landing_key, df, create_only=True)
