"""Drift statistics on real 2013 data: the reference profile, PSI/JS/KS, streaming accumulation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from include.monitoring.drift import DriftAccumulator, psi
from include.monitoring.profile import build_profile, categorical_counts, numeric_counts


def month(flights, m: int):
    start = datetime(2013, m, 1, tzinfo=UTC)
    end = datetime(2013 + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
    df = flights.load_interval(start, end)
    return flights.build_features(df), flights.build_target(df).to_numpy()


@pytest.fixture(scope="module")
def february(flights):
    return month(flights, 2)


@pytest.fixture(scope="module")
def profile(flights, february):
    X, y = february
    scores = np.clip(X["dep_hour"].to_numpy() / 24, 0, 1)  # any deterministic score will do here
    return build_profile(X, scores, y, flights.categorical)


def test_counts_put_every_value_in_exactly_one_bin():
    values = np.array([0.5, 1.0, 1.5, 2.0, np.nan, 9.0])
    counts = numeric_counts(values, [1.0, 2.0])
    assert counts.tolist() == [2, 2, 1, 1]  # (-inf, 1], (1, 2], (2, inf), missing
    cats = categorical_counts(np.array([0.0, 1.0, 1.0, 7.0, np.nan]), [0.0, 1.0, 2.0])
    assert cats.tolist() == [1, 2, 0, 1, 1]  # 0, 1, 2, other, missing


def test_psi_is_zero_for_identical_and_large_for_shifted_distributions():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0, abs=1e-12)
    assert psi([50, 50, 0], [0, 50, 50]) > 1


def test_a_window_from_the_reference_distribution_shows_no_drift(flights, february, profile):
    X, y = february
    halves = np.arange(len(X)) % 2 == 0  # interleaved half of the same month
    acc = DriftAccumulator(profile)
    acc.update(X[halves], labels=y[halves])
    report = acc.report()
    worst = max(f["psi"] for f in report["features"].values())
    assert worst < 0.02, report["features"]
    assert report["labels"]["base_rate"] == pytest.approx(profile["base_rate"], abs=0.02)


def test_summer_drifts_away_from_february_on_weather_not_on_schedule(flights, profile):
    X, y = month(flights, 7)
    acc = DriftAccumulator(profile)
    acc.update(X, labels=y)
    f = acc.report()["features"]
    assert f["temp"]["psi"] > 1 and f["dewp"]["psi"] > 1  # 34°F → 80°F
    assert f["dep_hour"]["psi"] < 0.1 and f["carrier"]["psi"] < 0.1  # the timetable barely moves
    assert 0 <= f["carrier"]["js_distance"] < 0.2


def test_streaming_over_partitions_equals_one_pass(flights, profile):
    X, y = month(flights, 7)
    scores = np.linspace(0, 1, len(X))
    whole = DriftAccumulator(profile)
    whole.update(X, scores, y)
    parts = DriftAccumulator(profile)
    for chunk in np.array_split(np.arange(len(X)), 7):
        parts.update(X.iloc[chunk], scores[chunk], y[chunk])
    a, b = whole.report(), parts.report()
    assert a["n"] == b["n"] == len(X)
    for name in a["features"]:
        assert a["features"][name]["psi"] == pytest.approx(b["features"][name]["psi"], rel=1e-12)
    assert a["prediction"]["psi"] == pytest.approx(b["prediction"]["psi"], rel=1e-12)
    assert a["labels"] == b["labels"]


def test_unknown_categories_and_missing_values_are_counted_not_dropped(flights, february, profile):
    X, _ = february
    broken = X.head(1000).copy()
    broken["carrier"] = 99.0  # a code the reference never saw
    broken["temp"] = np.nan
    acc = DriftAccumulator(profile)
    acc.update(broken)
    f = acc.report()["features"]
    assert f["carrier"]["unknown_share"] == 1.0 and f["carrier"]["psi"] > 1
    assert f["temp"]["missing_share"] == 1.0 and f["temp"]["psi"] > 1


def test_the_monitoring_window_comes_from_the_form_or_from_the_triggering_partitions():
    from include.monitoring.windows import monitoring_window
    from include.usecases import get_calendar

    s = get_calendar().timezone
    a, b = monitoring_window(s, "2013-07-01", "2013-07-08", [])
    assert (a.isoformat(), b.isoformat()) == ("2013-07-01T00:00:00-04:00", "2013-07-08T00:00:00-04:00")
    events = [
        {"interval_start": "2013-07-08T00:00:00-04:00", "interval_end": "2013-07-15T00:00:00-04:00"},
        {"interval_start": "2013-07-01T00:00:00-04:00", "interval_end": "2013-07-08T00:00:00-04:00"},
    ]
    a, b = monitoring_window(s, None, None, events)
    assert (a.day, b.day) == (1, 15)
    with pytest.raises(ValueError, match="both"):
        monitoring_window(s, "2013-07-01", None, [])
    with pytest.raises(ValueError, match="no window"):
        monitoring_window(s, None, None, [{"partition": "x"}])
    with pytest.raises(ValueError, match="not after"):
        monitoring_window(s, "2013-07-08", "2013-07-01", [])


def test_the_score_sample_represents_every_partition_by_its_rows(flights, february, profile):
    X, _ = february
    part = X.head(5000)
    acc = DriftAccumulator(profile, score_reservoir=2000)
    for i in range(10):  # five partitions score 0, then five score 1
        acc.update(part, np.full(len(part), float(i >= 5)))
    sample = np.concatenate([s for s, _ in acc._scores])
    assert sample.size == 2000 and abs(sample.mean() - 0.5) < 0.05


def test_the_drift_plot_shows_psi_bars_auc_over_time_and_the_worst_histograms(flights, profile):
    import matplotlib.pyplot as plt

    from include.monitoring.plots import drift_figure

    X, y = month(flights, 7)
    acc = DriftAccumulator(profile)
    acc.update(X, labels=y)
    report = acc.report() | {"window": ("2013-07-01T00:00:00", "2013-08-01T00:00:00")}
    history = [(datetime(2013, 6, d, tzinfo=UTC), auc, "3") for d, auc in ((10, 0.71), (17, 0.69), (24, 0.64))]
    fig = drift_figure(profile, report, flights, auc_history=history, reference_auc=0.72)
    try:
        axes = {ax.get_title().split(" ")[0]: ax for ax in fig.axes if ax.get_title()}
        assert axes["Drift"].get_title().startswith("Drift of 2013-07-01")
        assert len(axes["Drift"].patches) == len(report["features"])  # one PSI bar per feature
        assert len(axes["What"].patches) == len(report["features"])  # next to it, the feature's share of the model
        [line, ref] = axes["ROC"].get_lines()
        assert list(line.get_ydata()) == [0.71, 0.69, 0.64] and list(ref.get_ydata()) == [0.72, 0.72]
        counted = {k: v for k, v in report["features"].items() if k not in flights.drift_exempt}
        # histograms for the drift that weighs most: PSI over its noise threshold, times the share
        worst = max(counted, key=lambda k: counted[k]["psi"] / counted[k]["threshold"] * max(counted[k]["share"], 1e-3))
        assert f"{worst}:" in axes and "month:" not in axes  # exempt features get no histogram
    finally:
        plt.close(fig)


def test_a_retrain_request_names_one_train_run_per_decision():
    """The monitor's TriggerDagRunOperator uses this id: a rerun of the same decision (same window,
    same model version) finds the run it started; another window or version starts its own."""
    import re

    from include.monitoring.monitor import retrain_run_id

    start, end = "2013-12-02T00:00:00-05:00", "2013-12-05T00:00:00-05:00"
    run_id = retrain_run_id(start, end, "3")
    assert run_id == retrain_run_id(start, end, "3") == "monitor__v3__2013-12-02T00:00:00-05:00__2013-12-05T00:00:00-05:00"
    others = {
        retrain_run_id(start, end, "4"),
        retrain_run_id(start, "2013-12-06T00:00:00-05:00", "3"),
        retrain_run_id(start, end, None),
    }
    assert len(others | {run_id}) == 4 and "monitor__bootstrap__" in retrain_run_id(start, end, None)
    assert all(re.fullmatch(r"[A-Za-z0-9_.~:+-]+", r) for r in others | {run_id})  # Airflow's allowed_run_id_pattern


def test_the_served_window_ends_with_the_day_of_the_newest_event_in_the_use_cases_timezone():
    from zoneinfo import ZoneInfo

    from include.monitoring.windows import served_window

    ny = ZoneInfo("America/New_York")
    # 02:30 UTC on 10 July is 22:30 on 9 July in New York: the window ends at midnight after the 9th
    start, end = served_window("America/New_York", datetime(2013, 7, 10, 2, 30, tzinfo=UTC), 7)
    assert (start, end) == (datetime(2013, 7, 3, tzinfo=ny), datetime(2013, 7, 10, tzinfo=ny))
    # across the autumn clock change the window is still whole local days (one of them 25 h long)
    start, end = served_window("America/New_York", datetime(2013, 11, 5, 12, tzinfo=UTC), 3)
    assert (start, end) == (datetime(2013, 11, 3, tzinfo=ny), datetime(2013, 11, 6, tzinfo=ny))
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(days=3, hours=1)


def test_a_value_off_in_its_last_digits_stays_in_its_bin():
    """Quantile cut points of a discrete feature fall on values it holds; wind speeds that come back
    from a JSON round trip a few ulps off must not cross them (they did: PSI 0.07 on identical data)."""
    from include.monitoring.profile import _edges

    rng = np.random.default_rng(7)
    values = rng.choice(np.array([0.0, 3.45234, 4.60312, 5.7539, 6.90468, 8.05546, 9.20624, 10.357, 11.5078]), 5000)
    edges = _edges(values, 10)
    assert not np.isin(edges, values).any()
    nudged = values * (1 + rng.choice([-1, 1], values.size) * 4e-16)
    assert psi(numeric_counts(values, edges), numeric_counts(nudged, edges)) == 0
