"""The backtest's timeline and schedules (`include/backtest/`): pure functions, no data."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from include.backtest.policies import Policy
from include.backtest.replay import fit_digest
from include.backtest.report import json_ready
from include.backtest.summary import summarize
from include.backtest.timeline import (
    NoWeekToServe,
    first_model_week,
    fixed_schedule,
    matching_interval,
    partition_records,
    replay_weeks,
)
from include.model.dataset import select_partitions
from include.model.params import TrainParams
from include.monitoring.policy import PolicyConfig
from include.usecases import Calendar

YEAR_2013 = Calendar(start=date(2013, 1, 1), end=date(2013, 12, 31), timezone="America/New_York", cadence="weekly")


def test_a_weekly_calendar_replays_one_partition_a_week():
    weeks = replay_weeks(YEAR_2013)
    assert len(weeks) == 53 and [w.number for w in weeks] == list(range(1, 54))
    assert all(len(w.partitions) == 1 for w in weeks)
    assert weeks[0].start.date() == date(2013, 1, 1) and weeks[-1].start.date() == date(2013, 12, 31)
    assert all(a.end == b.start for a, b in zip(weeks, weeks[1:], strict=False))
    assert len(replay_weeks(YEAR_2013, 13)) == 13


def test_a_daily_calendar_replays_seven_partitions_a_week():
    calendar = Calendar(start=date(2024, 1, 1), end=date(2024, 1, 17), timezone="Europe/Berlin", cadence="daily")
    weeks = replay_weeks(calendar)
    assert [len(w.partitions) for w in weeks] == [7, 7, 3]
    assert weeks[1].start.date() == date(2024, 1, 8) and weeks[1].end.date() == date(2024, 1, 15)


@pytest.mark.parametrize("week", [8, 13, 47, 52])  # 47, 52: windows across the fall DST change
def test_the_model_of_week_t_trains_on_the_seven_weeks_before_and_evaluates_on_week_t(week):
    weeks = replay_weeks(YEAR_2013)
    train, ev = select_partitions(partition_records(weeks[:week]), window_weeks=8, eval_partitions=1, min_partitions=3)
    starts = {w.start.astimezone(UTC).isoformat(): w.number for w in weeks}
    assert [starts[r["interval_start"]] for r in train] == list(range(week - 7, week))
    assert [starts[r["interval_start"]] for r in ev] == [week]


def test_the_first_model_is_trained_once_a_full_window_exists():
    assert first_model_week(replay_weeks(YEAR_2013), 8) == 8
    with pytest.raises(NoWeekToServe, match="--window-weeks"):
        first_model_week(replay_weeks(YEAR_2013, 8), 8)


def test_a_fixed_schedule_retrains_when_its_model_turns_k_weeks_old_and_never_after_the_last_week():
    assert fixed_schedule(8, 53, 1) == list(range(9, 53))  # weekly: a new model for every served week but the first
    assert fixed_schedule(8, 53, 4) == [12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52]
    assert fixed_schedule(8, 53, 45) == [] and fixed_schedule(8, 53, None) == []
    assert fixed_schedule(8, 20, 4) == [12, 16]  # after week 20 nothing is left to serve


@pytest.mark.parametrize("retrains,k", [(0, 45), (1, 23), (5, 8), (11, 4), (44, 1), (10, 4), (20, 2)])
def test_the_matched_schedule_retrains_as_often_as_a_schedule_can(retrains, k):
    # 45 served weeks after the first model of week 8; 10 and 20 retrains no schedule gives exactly
    assert matching_interval(retrains, 8, 53) == k
    best = min(abs(len(fixed_schedule(8, 53, j)) - retrains) for j in range(1, 46))
    assert abs(len(fixed_schedule(8, 53, k)) - retrains) == best


def test_matching_prefers_the_shorter_interval_on_a_tie_and_needs_served_weeks():
    # 10 served weeks (first 8, last 18): k=4 retrains twice (12, 16), k=5 once (13), k=6 once (14)
    assert matching_interval(1, 8, 18) == 5
    with pytest.raises(ValueError, match="no served weeks"):
        matching_interval(1, 8, 8)


def _week(number, auc, estimate, retrained=False, cause=""):
    return (
        {"week": number, "roc_auc": auc, "log_loss": None if auc is None else 1 - auc, "cbpe_roc_auc": estimate},
        retrained,
        cause,
    )


def test_summary_means_skip_weeks_without_a_score_and_count_alerts_and_cbpe_hits():
    rows = []
    for (record, retrained, cause), action in zip(
        [
            _week(9, 0.70, 0.72),
            _week(10, None, 0.7),
            _week(11, 0.60, 0.70, True, "decay:roc_auc"),
            _week(12, 0.66, 0.69, False, "drift"),
            _week(13, 0.64, 0.68, True, "age"),
        ],
        ["none", "none", "retrain", "suppressed", "retrain"],
        strict=True,
    ):
        rows.append(record | {"retrained": retrained, "cause": cause, "action": action})
    out = summarize(Policy("default", config=PolicyConfig()), rows)
    assert out["roc_auc"]["mean"] == pytest.approx((0.70 + 0.60 + 0.66 + 0.64) / 4)
    assert out["roc_auc"]["weeks"] == [0.70, None, 0.60, 0.66, 0.64]
    assert out["retrains"] == {"count": 2, "weeks": [11, 13]} and out["models"] == 3
    # a retrain for the model's age alone is counted as a cause, not as an alert
    assert out["alerts"] == {"count": 2, "weeks": [11, 12], "causes": {"decay:roc_auc": 1, "drift": 1, "age": 1}}
    assert out["cbpe"]["labelled_weeks"] == 4 and out["cbpe"]["hit_rate"] == pytest.approx(2 / 4)
    assert summarize(Policy("never"), [r | {"retrained": False} for r in rows])["alerts"] is None


def test_results_are_json_ready():
    value = {"a": (1, float("nan")), "b": datetime(2013, 1, 1, tzinfo=UTC), 3: date(2013, 1, 2)}
    assert json_ready(value) == {"a": [1, None], "b": "2013-01-01T00:00:00+00:00", "3": "2013-01-02"}


def test_the_fit_cache_key_changes_with_every_input_of_the_fit_and_only_with_them():
    import pandas as pd

    X = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 0.0]})
    y = pd.Series([0, 1, 0])
    key = fit_digest(X, y, TrainParams(), ("b",))
    assert fit_digest(X.copy(), y.copy(), TrainParams(window_weeks=4, reason="x"), ("b",)) == key  # not a fit option
    assert fit_digest(X, pd.Series([0, 1, 1]), TrainParams(), ("b",)) != key
    assert fit_digest(X.assign(a=[1.0, 2.0, 3.5]), y, TrainParams(), ("b",)) != key
    assert fit_digest(X, y, TrainParams(max_depth=3), ("b",)) != key
    assert fit_digest(X, y, TrainParams(), ()) != key
