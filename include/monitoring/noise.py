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

from include.monitoring.drift import EPS, psi

if TYPE_CHECKING:
    import pandas as pd
    import xgboost


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
