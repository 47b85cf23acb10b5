"""Realistic faults of a landing partition, for the demo and the tests of the data gate.

Each fault takes the partition's correct rows and returns what a broken upstream would deliver.
The generic ones here work on any use case (they know only the contract); faults particular to
some data (a unit change, a renamed column) are the use case's own (`UseCase.faults`).
`plant_fault` writes the result to the landing zone (create-only, like any delivery), so the gate
meets it exactly as it would meet a real one.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pandas as pd

from include.data.partitions import Partition
from include.data.storage import Storage, get_storage, write_parquet
from include.usecases import UseCase


def truncated(df: pd.DataFrame, usecase: UseCase) -> pd.DataFrame:
    """The upload was cut off: only the first 40% of the interval's rows arrived."""
    return df.head(int(len(df) * 0.4))


def empty(df: pd.DataFrame, usecase: UseCase) -> pd.DataFrame:
    """An empty file with the right header."""
    return df.head(0)


def stale_rows(df: pd.DataFrame, usecase: UseCase) -> pd.DataFrame:
    """Freshness: the newest rows are missing (they stop twice the contract's freshness before the end)."""
    t = df[usecase.contract.event_time]
    return df[t <= t.max() - pd.Timedelta(hours=2 * usecase.contract.freshness_hours)]


GENERIC: dict[str, Callable[[pd.DataFrame, UseCase], pd.DataFrame]] = {f.__name__: f for f in (truncated, empty, stale_rows)}


def known_faults(usecase: UseCase) -> list[str]:
    return sorted({*GENERIC, *usecase.faults, "corrupt_file", "duplicate_of:<partition id>"})


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
    rows = usecase.load_interval(partition.start, partition.end)
    if fault in GENERIC:
        df = GENERIC[fault](rows, usecase)
    elif fault in usecase.faults:
        df = usecase.faults[fault](rows)
    else:
        raise ValueError(f"unknown fault {fault!r} for use case {usecase.name!r}; known: {', '.join(known_faults(usecase))}")
    return write_parquet(storage, partition.landing_key, df, create_only=True)
