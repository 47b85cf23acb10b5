"""The data gate's history checks (include/data/history.py): profiles, which partitions count as
history, the bounds they set, and how a failure reads. The GX side runs in
tests/integration/test_data_gate.py."""

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from include.data.history import (
    History,
    category_bounds,
    describe,
    kl_divergence,
    load_history,
    missing_bounds,
    profile,
    quantile_bounds,
    seen_values,
    select_history,
)
from include.data.partitions import Partition
from include.usecases import Column, Contract

NY = ZoneInfo("America/New_York")
CONTRACT = Contract(
    columns=(
        Column("t", "datetime"),
        Column("speed", "float", nullable=True),
        Column("count", "int"),
        Column("kind", "str", allowed=("a", "b", "c")),
        Column("name", "str", nullable=True),
        Column("month", "int", history_check=False),
    ),
    key=("t",),
    event_time="t",
    rows_per_day=(1, 100),
)


def week(i: int) -> Partition:
    start = datetime(2013, 3, 5, tzinfo=NY) + timedelta(weeks=i)  # crosses the DST switch of 10 March
    return Partition("x", start, start + timedelta(weeks=1))


def record(i: int, **extra) -> dict:
    p = week(i)
    return {"partition": p.id, "interval_start": p.start.isoformat(), **extra}


def frame(rng, n=400, scale=1.0) -> pd.DataFrame:
    speed = np.round(rng.choice(np.arange(0, 40, 1.15078), n), 5) * scale
    speed[: n // 20] = np.nan
    return pd.DataFrame(
        {
            "t": pd.Timestamp("2013-03-05", tz="UTC"),
            "speed": speed,
            "count": rng.integers(1, 5, n),
            "kind": pd.Series(rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]), dtype="str"),
            "name": pd.Series([f"n{i % 37}" for i in range(n)], dtype="str"),
            "month": 3,
        }
    )


def test_a_profile_is_small_plain_json_and_skips_what_history_does_not_check():
    prof = profile(frame(np.random.default_rng(1)), CONTRACT)
    assert json.loads(json.dumps(prof)) == prof, "a validation record must read back equal"
    assert set(prof["columns"]) == {"speed", "count", "kind", "name"}  # no datetime, no opted-out column
    speed = prof["columns"]["speed"]
    assert speed["missing"] == 20 and len(speed["quantiles"]) == 5 and "0.0" not in speed["grid"]
    assert sum(speed["grid"].values()) == speed["nonzero"] and {float(v) for v in speed["grid"]} <= set(
        frame(np.random.default_rng(1))["speed"]
    )
    assert set(prof["columns"]["kind"]["counts"]) == {"a", "b", "c"}
    assert prof["columns"]["name"] == {"missing": 0, "distinct": 37}


def test_a_continuous_column_keeps_no_value_grid():
    df = frame(np.random.default_rng(2), n=1000).assign(speed=np.random.default_rng(3).normal(10, 3, 1000))
    assert profile(df, CONTRACT)["columns"]["speed"]["grid"] is None
    small = profile(df.head(400), CONTRACT)["columns"]["speed"]
    assert len(small["grid"]) == 60 and seen_values([small]) is None, (
        "the 60 most frequent of 400 values seen once each are no grid"
    )


def test_history_is_the_latest_partitions_before_the_batch_whatever_arrived_later():
    records = [record(i) for i in (5, 0, 3, 1, 2, 4)]
    chosen = select_history(records, week(4), 3)
    assert [r["partition"] for r in chosen] == [week(i).id for i in (1, 2, 3)]  # oldest first, not itself, not later
    assert select_history(records, week(0), 8) == []


def test_with_too_few_partitions_the_history_checks_are_absent_and_say_why(storage_root):
    records = [record(i, profile=profile(frame(np.random.default_rng(i)), CONTRACT)) for i in range(2)]
    history, note = load_history(records, week(2), CONTRACT, n=8, min_partitions=3, storage=None)
    assert history is None and "2 validated partition(s) before" in note and "LOOP_GATE_HISTORY_MIN_PARTITIONS" in note
    history, note = load_history(records, week(2), CONTRACT, n=0, min_partitions=1, storage=None)
    assert history is None and "LOOP_GATE_HISTORY_PARTITIONS=0" in note
    history, note = load_history(records, week(2), CONTRACT, n=8, min_partitions=2, storage=None)
    assert history.partitions == (week(0).id, week(1).id) and note == f"history checks against {history.words}"


def test_missing_share_lets_a_storm_week_pass_and_catches_a_column_going_empty():
    lo, hi = missing_bounds([0.006, 0.015, 0.025, 0.040])  # the weeks before the February blizzard
    assert lo == 0 and hi >= 0.163  # its 16 % cancelled flights pass
    assert missing_bounds([0.0, 0.01, 0.05])[1] < 0.95  # 95 % empty does not
    assert missing_bounds([0.55, 0.97, 0.80])[1] == 1.0  # a sparse column may be empty at times


def test_quantile_bounds_follow_the_season_but_not_a_unit_change():
    # weekly (q05, q25, median, q75, q95) of a temperature in °F through a warming spring
    history = [[30, 36, 41, 46, 52], [33, 39, 44, 49, 55], [35, 42, 47, 52, 58], [38, 44, 50, 55, 61]]
    bounds = quantile_bounds(history)
    warmer = [44, 49, 54, 60, 66]
    in_celsius = [(v - 32) * 5 / 9 for v in [38, 44, 50, 55, 61]]
    for (lo, hi), q in zip(bounds, (1, 2, 3), strict=True):
        assert lo <= warmer[q] <= hi
        assert not lo <= in_celsius[q] <= hi
    # a column at one value (engines: always 2) is held to 10 % of it, not to nothing
    assert quantile_bounds([[2, 2, 2, 2, 2]] * 4) == [pytest.approx((1.8, 2.2))] * 3


def test_only_a_measurement_grid_gets_the_values_seen_check():
    grid = {"grid": {"1.15": 300, "2.3": 200, "3.45": 100}, "nonzero": 600}
    assert seen_values([grid, {"grid": {"2.3": 50, "4.6": 10}, "nonzero": 60}]) == [1.15, 2.3, 3.45, 4.6]
    assert seen_values([grid, {"grid": None, "nonzero": 600}]) is None, "a partition with too many distinct values"
    spread = {"grid": {repr(float(i)): 1 for i in range(60)}, "nonzero": 200}
    assert seen_values([spread]) is None, "the 60 most frequent of 200 values seen once each make 30 %"
    peaked = {"grid": {repr(float(i)): 100 if i < 50 else 1 for i in range(60)}, "nonzero": 5150}
    assert seen_values([peaked]) == [float(i) for i in range(60)]


def test_category_shares_allow_what_the_history_itself_varies_and_at_least_the_floor():
    counts = [{"a": 50, "b": 30, "c": 20}, {"a": 52, "b": 29, "c": 19}, {"a": 48, "b": 31, "c": 21}]
    shares, threshold = category_bounds(counts)
    assert shares == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2}) and threshold == 0.05
    assert kl_divergence({"a": 49, "b": 31, "c": 20}, shares) < threshold
    assert kl_divergence({"a": 60, "b": 40}, shares) > threshold, "a category that vanished"
    assert kl_divergence({"a": 50, "b": 30, "c": 20, "d": 30}, shares) > threshold, "a new category with a large share"


def test_a_history_failure_reads_as_a_sentence_with_the_column_the_observation_and_the_bounds():
    history = History(("dt=2013-01-01T0500Z", "dt=2013-01-08T0500Z", "dt=2013-01-15T0500Z", "dt=2013-01-22T0500Z"), ())
    meta = {"column": "temp", "check": "quantiles", "against": history.words}
    kwargs = {"quantile_ranges": {"quantiles": [0.25, 0.5, 0.75], "value_ranges": [[20.1, 44.0], [28.4, 51.0], [30.0, 60.0]]}}
    text = describe(meta, kwargs, {"observed_value": {"quantiles": [0.25, 0.5, 0.75], "values": [25.0, 2.1, 40.0]}})
    assert text == (
        "median of temp 2.10 outside 28.4–51.0 vs the last 4 validated partitions (dt=2013-01-01T0500Z … dt=2013-01-22T0500Z)"
    )
    missing = describe(
        {"column": "dewp", "check": "missing share", "against": history.words, "bounds": [0.0, 0.21]},
        {},
        {"observed_value": 0.05},
    )
    assert missing.startswith("missing share of dewp 95.0% outside 0.0%–21.0% vs the last 4 validated partitions")
