"""The dataset of a training run: which validated partitions it uses (a time split), and the
labelled rows of a frame (features, labels, slice columns), as training, the champion gate and the
reference profile all read them."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from include.outcomes import Skip
from include.usecases import UseCase

if TYPE_CHECKING:
    import pandas as pd

LINEAGE_ARTIFACT = "lineage/partitions.json"
"""The partitions of a training run (train and eval), with their hashes, as an MLflow artifact."""


class NotEnoughData(Skip):
    """Fewer validated partitions than training needs; the run is skipped, not failed."""


def select_partitions(
    records: list[dict], window_weeks: int, eval_partitions: int, min_partitions: int, as_of: date | str | None = None
) -> tuple[list[dict], list[dict]]:
    """Split validated partitions into (train, eval) by time.

    The window ends with the newest partition starting on or before `as_of` (default: newest of
    all) and reaches back `window_weeks` from that partition's end; a partition is in it when its
    midpoint is (partitions are cut in local time, so across a DST change their UTC bounds move by
    an hour against a window counted back in UTC, which must not drop or add a partition).
    """
    recs = sorted(records, key=lambda r: r["interval_start"])
    if as_of:
        cutoff = date.fromisoformat(str(as_of))
        recs = [r for r in recs if datetime.fromisoformat(r["interval_start"]).date() <= cutoff]
    if recs:
        window_start = datetime.fromisoformat(recs[-1]["interval_end"]) - timedelta(weeks=window_weeks)
        recs = [r for r in recs if _midpoint(r) >= window_start]
    needed = max(min_partitions, eval_partitions + 1)
    if len(recs) < needed:
        raise NotEnoughData(
            f"{len(recs)} validated partition(s) in a {window_weeks}-week window"
            f"{f' up to {as_of}' if as_of else ''}; training needs at least {needed}"
        )
    return recs[:-eval_partitions], recs[-eval_partitions:]


def _midpoint(record: dict) -> datetime:
    start, end = (datetime.fromisoformat(record[k]) for k in ("interval_start", "interval_end"))
    return start + (end - start) / 2


def labelled(usecase: UseCase, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Features, labels and slice columns of the rows whose label is known."""
    y = usecase.build_target(df)
    known = y.notna()
    df = df.loc[known].reset_index(drop=True)
    return usecase.build_features(df), y[known].astype(int).reset_index(drop=True), df[list(usecase.slices)]


def lineage(records: list[dict]) -> list[dict]:
    """What a training run records of each partition it read."""
    keys = (
        "partition",
        "interval_start",
        "interval_end",
        "validated_key",
        "validated_uri",
        "validated_sha256",
        "landing_uri",
        "landing_sha256",
        "gx_result_uri",
        "rows_validated",
        "rows_quarantined",
    )
    return [{k: r.get(k) for k in keys} for r in records]
