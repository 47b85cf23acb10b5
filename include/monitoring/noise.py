"""Drift that matters (issue 12, first part): how much drift a window shows by chance alone, and how
much of the model a drifted feature carries. Pure functions of counts, scores and a booster; the
monitor's policy does not use them yet.

* `psi_noise_threshold`: the PSI a window of `n` rows drawn from the reference itself reaches at a
  given quantile (the reference's bins resampled as a multinomial of size `n`). A fixed 0.25 fires
  on small windows by chance and misses large ones; this threshold follows the window's size, so a
  window drawn from the reference exceeds it only at the chosen rate.
* `contribution_shares`: each feature's share of the model's own attributions on reference rows
  (mean |SHAP| from XGBoost's `pred_contribs`), summing to 1.
* `weighted_drift`: the share of the model's attributions carried by features drifted beyond noise.
* `auc_standard_error`: the sampling error of a ROC AUC measured on `positives` and `negatives`
  (Hanley & McNeil, 1982), so decay can be judged with a confidence interval on small windows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import xgboost

EPS = 1e-4
"""Floor of a bin's share in PSI, so an empty bin gives a large but finite term."""


def psi(reference: np.ndarray, current: np.ndarray, eps: float = EPS) -> float:
    """Population stability index of two count vectors over the same bins."""
    p = np.clip(np.asarray(reference, dtype="float64") / max(np.sum(reference), 1), eps, None)
    q = np.clip(np.asarray(current, dtype="float64") / max(np.sum(current), 1), eps, None)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_noise_threshold(reference: np.ndarray, n: int, quantile: float = 0.99, draws: int = 400, seed: int = 0) -> float:
    """The `quantile` of PSI between the reference counts and `draws` samples of `n` rows drawn from
    the reference's own bin shares."""
    if n < 1:
        raise ValueError(f"a window needs at least one row, got n={n}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    counts = np.asarray(reference, dtype="float64")
    if counts.sum() <= 0:
        raise ValueError("the reference has no rows in its bins")
    rng = np.random.default_rng(seed)
    samples = rng.multinomial(n, counts / counts.sum(), size=draws)
    return float(np.quantile([psi(counts, s, EPS) for s in samples], quantile))


def block_noise_thresholds(
    reference: dict[str, np.ndarray],
    daily: list[dict[str, np.ndarray]],
    n: int,
    days: int,
    quantile: float = 0.99,
    draws: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Per feature, the `quantile` of PSI between the reference counts and windows drawn from the
    reference itself the way real windows arrive: `days` consecutive reference days (`daily`, in
    order, each {feature: counts}), then `n` rows from their pooled shares. Rows of a day share
    their weather and schedule, so a week varies far more than `n` independent rows would; whole
    days keep that (a moving-block bootstrap), the row draw keeps a small window's own noise. Blocks
    span at most half the reference's days, so a long window is still judged against windows that
    differ from the reference."""
    if n < 1:
        raise ValueError(f"a window needs at least one row, got n={n}")
    if not daily:
        raise ValueError("the reference has no days to resample")
    # A window as long as the reference would be the reference itself, with no noise left to see:
    # blocks span at most half the reference's days.
    days = max(1, min(days, len(daily) // 2))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(daily) - days + 1, size=draws)
    out = {}
    for name, counts in reference.items():
        per_day = np.asarray([d[name] for d in daily], dtype="float64")
        cumulative = np.vstack([np.zeros(per_day.shape[1]), np.cumsum(per_day, axis=0)])
        values = []
        for start in starts:
            block = cumulative[start + days] - cumulative[start]
            if block.sum() <= 0:
                continue
            values.append(psi(counts, rng.multinomial(n, block / block.sum()), EPS))
        out[name] = float(np.quantile(values, quantile)) if values else psi_noise_threshold(counts, n, quantile, draws, seed)
    return out


def contribution_shares(booster: xgboost.Booster, features: pd.DataFrame) -> dict[str, float]:
    """Each feature's share of the model's mean absolute contribution on `features` (the bias
    column left out); shares sum to 1."""
    import xgboost

    contribs = booster.predict(xgboost.DMatrix(features, enable_categorical=True), pred_contribs=True)
    mean_abs = np.abs(contribs[:, :-1].astype("float64")).mean(axis=0)
    total = mean_abs.sum()
    if total <= 0:
        return dict.fromkeys(features.columns, 1 / len(features.columns))
    return {name: float(v / total) for name, v in zip(features.columns, mean_abs, strict=True)}


def weighted_drift(psi_by_feature: dict[str, float], thresholds: dict[str, float], shares: dict[str, float]) -> dict:
    """The share of the model's attributions on features whose PSI exceeds their noise threshold,
    and the attribution-weighted PSI in units of each feature's threshold."""
    unknown = set(psi_by_feature) - set(shares)
    if unknown:
        raise ValueError(f"no contribution share for {sorted(unknown)}")
    drifted = sorted(f for f, v in psi_by_feature.items() if v > thresholds[f])
    return {
        "drifted": drifted,
        "drifted_share": float(sum(shares[f] for f in drifted)),
        "weighted_excess": float(sum(shares[f] * psi_by_feature[f] / thresholds[f] for f in psi_by_feature)),
    }


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's standard error of a ROC AUC from `positives` and `negatives` cases."""
    if positives < 1 or negatives < 1:
        raise ValueError(f"an AUC needs both classes, got {positives} positives and {negatives} negatives")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (positives * negatives)
    return float(np.sqrt(max(var, 0.0)))


def calibration_map(scores: np.ndarray, labels: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """An isotonic map from the model's score to the observed rate of positives, fitted on held-out
    rows (scikit-learn's IsotonicRegression): {"scores": [...], "rates": [...]}, increasing, read
    with linear interpolation and clipped at the ends. At most `max_points` knots are kept."""
    from sklearn.isotonic import IsotonicRegression

    scores, labels = np.asarray(scores, dtype="float64"), np.asarray(labels, dtype="float64")
    if scores.size == 0 or scores.size != labels.size:
        raise ValueError(f"a calibration needs scores with their labels, got {scores.size} scores and {labels.size} labels")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    xs, ys = iso.X_thresholds_, iso.y_thresholds_
    if xs.size > max_points:
        keep = np.unique(np.linspace(0, xs.size - 1, max_points).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return {"scores": np.round(xs, 6).tolist(), "rates": np.round(ys, 6).tolist()}


def calibrated(scores: np.ndarray, calibration: dict) -> np.ndarray:
    """The probability of a positive for each score, by the calibration map."""
    return np.interp(np.asarray(scores, dtype="float64"), calibration["scores"], calibration["rates"])


def estimated_performance(scores: np.ndarray, calibration: dict) -> dict[str, float]:
    """Confidence-based performance estimation (NannyML's CBPE) without labels: taking each row's
    calibrated probability as the chance it is positive, the expected ROC curve (the expected true
    and false positives above each score) gives the expected ROC AUC; the expected log loss of the
    raw scores comes the same way. Accurate while the model stays calibrated, i.e. under covariate
    shift; a change of the relation between inputs and label shows only once labels land."""
    scores = np.asarray(scores, dtype="float64")
    if scores.size == 0:
        return {}
    p = calibrated(scores, calibration)
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], p[order]
    # one step of the curve per distinct score (tied scores move TPR and FPR together)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp, fp = np.cumsum(p)[last], np.cumsum(1 - p)[last]
    if tp[-1] <= 0 or fp[-1] <= 0:
        return {}
    tpr, fpr = np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]
    clipped = np.clip(scores[order], 1e-7, 1 - 1e-7)
    loss = -np.mean(p * np.log(clipped) + (1 - p) * np.log(1 - clipped))
    return {"roc_auc": float(np.trapezoid(tpr, fpr)), "log_loss": float(loss), "positive_rate": float(p.mean())}
