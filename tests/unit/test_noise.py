"""Drift thresholds from the reference's own sampling noise, attribution shares and the AUC's
sampling error (include/monitoring/noise.py), on real 2013 flights where a model is involved."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from include.monitoring.drift import psi
from include.monitoring.noise import (
    auc_standard_error,
    block_noise_thresholds,
    calibration_map,
    contribution_shares,
    estimated_performance,
    psi_noise_threshold,
    weighted_drift,
)

REFERENCE = np.array([120, 340, 800, 1500, 2100, 1900, 1200, 600, 250, 90, 40], dtype=float)  # 10 bins + missing


def draw(n: int, shares: np.ndarray, rng) -> np.ndarray:
    return rng.multinomial(n, shares / shares.sum())


@pytest.mark.parametrize("n", [200, 800, 5000])
def test_windows_drawn_from_the_reference_rarely_cross_the_threshold_at_their_size(n):
    threshold = psi_noise_threshold(REFERENCE, n, quantile=0.99, seed=1)
    rng = np.random.default_rng(2)  # windows independent of the threshold's own draws
    crossed = np.mean([psi(REFERENCE, draw(n, REFERENCE, rng)) > threshold for _ in range(1000)])
    assert crossed <= 0.03, f"{crossed:.1%} of reference windows of {n} rows crossed {threshold:.4f}"
    print(f"\nn={n}: threshold {threshold:.4f}, reference windows over it: {crossed:.1%}")


def test_the_threshold_falls_as_windows_grow_and_a_fixed_025_misjudges_both_ends():
    small, large = psi_noise_threshold(REFERENCE, 50), psi_noise_threshold(REFERENCE, 20_000)
    assert small > 0.25 > large, (small, large)  # 0.25 fires on noise at 50 rows, and is far too lax at 20,000
    assert psi_noise_threshold(REFERENCE, 500) > psi_noise_threshold(REFERENCE, 5000)


def test_a_real_shift_crosses_the_threshold_at_a_window_size_where_025_misses_it():
    shifted = np.roll(REFERENCE[:-1], 1)  # every value one bin higher, as a unit change would do
    shifted = np.append(shifted, REFERENCE[-1])
    rng = np.random.default_rng(3)
    window = draw(20_000, 0.8 * REFERENCE / REFERENCE.sum() + 0.2 * shifted / shifted.sum(), rng)
    value = psi(REFERENCE, window)
    assert psi_noise_threshold(REFERENCE, 20_000) < value < 0.25, value


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match="n=0"):
        psi_noise_threshold(REFERENCE, 0)
    with pytest.raises(ValueError, match="quantile"):
        psi_noise_threshold(REFERENCE, 10, quantile=1)
    with pytest.raises(ValueError, match="no rows"):
        psi_noise_threshold(np.zeros(4), 10)
    with pytest.raises(ValueError, match="both classes"):
        auc_standard_error(0.7, 0, 10)
    with pytest.raises(ValueError, match=r"\['wind'\]"):
        weighted_drift({"wind": 0.3}, {"wind": 0.1}, {"temp": 1.0})


def test_shares_follow_what_the_model_uses(flights):
    import xgboost

    df = flights.load_interval(datetime(2013, 2, 4, tzinfo=UTC), datetime(2013, 2, 18, tzinfo=UTC))
    X, y = flights.build_features(df), flights.build_target(df)
    known = y.notna().to_numpy()
    model = xgboost.train({"max_depth": 3, "eta": 0.3}, xgboost.DMatrix(X[known], y[known], enable_categorical=True), 30)
    shares = contribution_shares(model, X[known])
    assert set(shares) == set(X.columns)
    assert abs(sum(shares.values()) - 1) < 1e-9 and all(v >= 0 for v in shares.values())
    top = max(shares, key=shares.get)
    assert shares[top] > 1 / len(shares), shares

    thresholds = dict.fromkeys(shares, 0.05)
    quiet = weighted_drift(dict.fromkeys(shares, 0.01), thresholds, shares)
    assert quiet["drifted"] == [] and quiet["drifted_share"] == 0
    least = min(shares, key=shares.get)
    minor = weighted_drift({**dict.fromkeys(shares, 0.01), least: 0.5}, thresholds, shares)
    major = weighted_drift({**dict.fromkeys(shares, 0.01), top: 0.5}, thresholds, shares)
    assert minor["drifted"] == [least] and major["drifted"] == [top]
    assert major["drifted_share"] > minor["drifted_share"], "the same PSI matters more on a feature the model leans on"


def test_the_auc_standard_error_matches_a_bootstrap_and_shrinks_with_the_window():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    pos, neg = 300, 900
    y = np.r_[np.ones(pos), np.zeros(neg)]
    s = np.r_[rng.normal(0.8, 1, pos), rng.normal(0, 1, neg)]
    auc = roc_auc_score(y, s)
    boot = []
    for _ in range(400):
        i = np.r_[rng.integers(0, pos, pos), pos + rng.integers(0, neg, neg)]
        boot.append(roc_auc_score(y[i], s[i]))
    se = auc_standard_error(auc, pos, neg)
    assert abs(se - np.std(boot)) / np.std(boot) < 0.25, (se, np.std(boot))
    assert auc_standard_error(auc, 100, 300) > se > auc_standard_error(auc, 3000, 9000)


def test_the_estimate_without_labels_tracks_the_realised_auc_under_covariate_shift():
    """CBPE: scores calibrated on held-out rows; windows whose inputs shift (easier and harder mixes
    of cases) change the realised ROC AUC, and the estimate from the scores alone follows it."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)

    def rows(n, centre, spread):
        x = rng.normal(centre, spread, n)
        p = 1 / (1 + np.exp(-(1.2 * x - 1.5)))
        score = np.clip(p + rng.normal(0, 0.02, n), 0.001, 0.999)  # a good but not perfect model
        return score, (rng.random(n) < p).astype(float)

    s, y = rows(20_000, 0.0, 1.0)
    calibration = calibration_map(s, y)
    for centre, spread in ((0.0, 1.0), (1.0, 1.0), (0.0, 0.5), (-0.5, 2.0)):
        ws, wy = rows(6_000, centre, spread)
        estimate, realised = estimated_performance(ws, calibration)["roc_auc"], roc_auc_score(wy, ws)
        assert abs(estimate - realised) < 0.02, (centre, spread, estimate, realised)
    narrow, wide = rows(6_000, 0.0, 0.5)[0], rows(6_000, 0.0, 2.0)[0]
    assert estimated_performance(narrow, calibration)["roc_auc"] < estimated_performance(wide, calibration)["roc_auc"] - 0.1


def test_the_calibration_map_is_monotone_bounded_and_refuses_mismatched_input():
    rng = np.random.default_rng(6)
    s = rng.random(5_000)
    cal = calibration_map(s, (rng.random(5_000) < s**2).astype(float), max_points=50)
    assert len(cal["scores"]) <= 50 and np.all(np.diff(cal["rates"]) >= 0) and 0 <= min(cal["rates"]) <= max(cal["rates"]) <= 1
    with pytest.raises(ValueError, match="3 scores and 2 labels"):
        calibration_map(np.ones(3), np.ones(2))
    assert estimated_performance(np.array([]), cal) == {}


def test_whole_reference_days_set_a_threshold_a_reference_week_stays_under(flights):
    """Flights of a day share their weather: seven real February weeks of `temp`, binned like the
    profile does. Windows of 7 consecutive reference days cross the rows-only threshold almost
    always (independent rows vary far less than whole days) and the day-block threshold rarely."""
    from include.monitoring.profile import _edges, numeric_counts

    start = datetime(2013, 1, 7, tzinfo=UTC)
    df = flights.load_interval(start, datetime(2013, 2, 25, tzinfo=UTC))
    temp = df["temp"].to_numpy(dtype="float64")
    edges = _edges(temp, 10)
    days = df["time_hour"].dt.strftime("%Y-%m-%d").to_numpy()
    daily = [{"temp": numeric_counts(temp[days == d], edges)} for d in np.unique(days)]
    reference = {"temp": numeric_counts(temp, edges)}
    week = int(np.mean([sum(d["temp"].sum() for d in daily[i : i + 7]) for i in range(len(daily) - 6)]))
    blocks = block_noise_thresholds(reference, daily, week, 7, seed=1)["temp"]
    rows_only = psi_noise_threshold(reference["temp"], week, seed=1)
    weeks = [psi(reference["temp"], np.sum([d["temp"] for d in daily[i : i + 7]], axis=0)) for i in range(len(daily) - 6)]
    assert blocks > 10 * rows_only, (blocks, rows_only)
    assert np.mean(np.array(weeks) > rows_only) > 0.9
    assert np.mean(np.array(weeks) > blocks) <= 0.05, (blocks, sorted(weeks)[-5:])
    with pytest.raises(ValueError, match="no days"):
        block_noise_thresholds(reference, [], 10, 7)


def test_the_reference_profile_comes_from_held_out_rows_with_attributions_and_calibration(flights):
    from include.model.engines import fit
    from include.model.params import TrainParams
    from include.monitoring.profile import reference_profile

    train = flights.load_interval(datetime(2013, 2, 4, tzinfo=UTC), datetime(2013, 2, 18, tzinfo=UTC))
    held_out = flights.load_interval(datetime(2013, 2, 18, tzinfo=UTC), datetime(2013, 2, 25, tzinfo=UTC))
    X, y = flights.build_features(train), flights.build_target(train)
    known = y.notna().to_numpy()
    model = fit(X[known], y[known].astype(int), TrainParams(n_estimators=30), flights.categorical)
    profile = reference_profile(model, flights, train, held_out)
    held_out_labelled = int(flights.build_target(held_out).notna().sum())
    assert profile["n"] == len(train) and profile["eval_rows"] == held_out_labelled  # features: all training rows
    assert sum(profile["score"]["counts"]) == held_out_labelled  # scores: the held-out rows only
    new_york_days = set(train["time_hour"].dt.tz_convert("America/New_York").dt.date.astype(str))
    assert set(profile["daily_counts"]) == new_york_days and len(new_york_days) == 15  # a UTC fortnight spans 15 NY days
    assert sum(profile["daily_counts"][d]["temp"][0] for d in profile["daily_counts"]) == profile["features"]["temp"]["counts"][0]
    assert abs(sum(profile["shares"].values()) - 1) < 1e-9 and max(profile["shares"], key=profile["shares"].get) != "month"
    assert np.all(np.diff(profile["calibration"]["rates"]) >= 0)
