"""Use cases: what data the loop ingests and what model it trains.

The machinery (storage, validation, training, gate) only talks to a `UseCase`. To run the loop on
your own data, add a module here that defines `USECASE = UseCase(...)` and set LOOP_USECASE to
its name; nothing else changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd

Kind = Literal["int", "float", "str", "datetime"]

# The type name GX's expect_column_values_to_be_of_type observes for each kind under pandas 3
# (string columns are `str`; tz-aware timestamps are checked per value as `Timestamp`).
GX_TYPES: dict[Kind, str] = {"int": "int64", "float": "float64", "str": "str", "datetime": "Timestamp"}


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


@dataclass(frozen=True)
class UseCase:
    """A data source plus a supervised model task over it."""

    name: str
    model_name: str
    contract: Contract
    load_interval: Callable[[datetime, datetime], pd.DataFrame]
    """Replay source: the rows of [start, end), already in the contract's shape."""
    build_features: Callable[[pd.DataFrame], pd.DataFrame]
    build_target: Callable[[pd.DataFrame], pd.Series]
    """1/0 label; rows whose label is not known yet (or never) are NaN and are left out."""
    categorical: tuple[str, ...] = ()
    """Feature columns holding category codes (XGBoost feature type `c`)."""
    slices: tuple[str, ...] = ()
    """Columns whose values the gate and the reports break metrics down by."""
    serving_inputs: tuple[str, ...] = ()
    """Contract columns a prediction request carries (the service's request schema is generated
    from their contract types and bounds); must include the key and the event time."""
    encode_records: Callable[[Sequence[Mapping]], list[list[float]]] | None = None
    """The features of `build_features` for request records, without pandas (the serving hot path);
    a unit test checks both give the same numbers."""
    drift_exempt: tuple[str, ...] = ()
    """Features expected to move with time (a calendar month): reported, but never counted as drift."""
    features: tuple[str, ...] = ()
    """Model input columns in order: the columns of `build_features`, the items of `encode_records`."""
    description: str = ""


def get_usecase(name: str | None = None) -> UseCase:
    """The use case named by LOOP_USECASE (or `name`)."""
    from include.settings import get_settings

    name = name or get_settings().usecase
    try:
        module = importlib.import_module(f"include.usecases.{name}")
    except ModuleNotFoundError as exc:
        raise ValueError(f"LOOP_USECASE={name!r}: no module include/usecases/{name}.py") from exc
    usecase = getattr(module, "USECASE", None)
    if not isinstance(usecase, UseCase):
        raise ValueError(f"include/usecases/{name}.py defines no USECASE = UseCase(...)")
    return usecase
