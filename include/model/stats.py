"""Paired comparisons of two models scored on the same rows: what the champion gate decides on.

* ROC AUC: DeLong's test for two correlated ROC curves (DeLong, DeLong & Clarke-Pearson, 1988), in
  the fast midrank form of Sun & Xu (2014). The difference's standard error comes from the same
  rows both models scored, so what they share (a hard week, a quiet carrier) cancels out.
* Any other metric: a paired bootstrap (`scipy.stats.bootstrap`, rows resampled together).

`compare` returns the two estimates, their difference and its two-sided interval at a confidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Comparison:
    """Challenger against champion on the same `n` rows: `delta` = challenger − champion, with its
    two-sided interval [`low`, `high`] at `confidence` (NaN where the metric is undefined)."""

    metric: str
    n: int
    challenger: float
    champion: float
    delta: float
    low: float
    high: float
    confidence: float
    method: str

    @property
    def defined(self) -> bool:
        return not any(math.isnan(v) for v in (self.delta, self.low, self.high))

    def as_dict(self) -> dict:
        return asdict(self)


def delong(y_true, a, b) -> tuple[float, float, float]:
    """ROC AUC of scores `a` and of scores `b` on the same 0/1 labels, and the standard error of
    their difference (DeLong). NaN everywhere when the labels hold one class only."""
    import numpy as np
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return math.nan, math.nan, math.nan
    scores = np.vstack([np.asarray(a, dtype=float), np.asarray(b, dtype=float)])
    pos, neg = scores[:, y], scores[:, ~y]
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    tz = rankdata(np.hstack([pos, neg]), axis=1)
    auc = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (tz[:, :m] - tx) / n  # per positive: the share of negatives it outranks
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: the share of positives that outrank it
    s01 = np.cov(v01) if m > 1 else np.zeros((2, 2))
    s10 = np.cov(v10) if n > 1 else np.zeros((2, 2))
    cov = s01 / m + s10 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return float(auc[0]), float(auc[1]), math.sqrt(max(float(var), 0.0))


def hanley_mcneil_se(auc: float, positives: int, negatives: int) -> float:
    """The standard error of one ROC AUC from its value and class counts alone (Hanley & McNeil,
    1982): how precisely rows this few can measure an AUC, whatever the model does."""
    if positives < 1 or negatives < 1 or auc != auc:
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    return math.sqrt(max(var, 0.0))


def z_value(confidence: float) -> float:
    """The standard normal quantile of a two-sided interval at `confidence`."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def compare(
    y_true, challenger, champion, metric: str = "roc_auc", confidence: float = 0.95, threshold: float = 0.5, seed: int = 0
) -> Comparison:
    """Challenger and champion scores on the same rows, compared on `metric`: DeLong for ROC AUC,
    a paired bootstrap (percentile interval) for the other metrics of `HIGHER_IS_BETTER`."""
    import numpy as np

    y = np.asarray(y_true, dtype=float)
    a, b = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    if not len(y) == len(a) == len(b):
        raise ValueError(f"labels and both models' scores must cover the same rows: {len(y)}, {len(a)} and {len(b)}")
    if metric == "roc_auc":
        auc_a, auc_b, se = delong(y, a, b)
        half = z_value(confidence) * se
        delta = auc_a - auc_b
        return Comparison(metric, len(y), auc_a, auc_b, delta, delta - half, delta + half, confidence, "DeLong")
    return _bootstrap(y, a, b, metric, confidence, threshold, seed)


def _bootstrap(y, a, b, metric: str, confidence: float, threshold: float, seed: int) -> Comparison:
    import numpy as np
    from scipy.stats import bootstrap

    from include.model.metrics import metric_value

    def value(labels, scores) -> float:
        return metric_value(metric, labels, scores, threshold)

    va, vb = value(y, a), value(y, b)
    if math.isnan(va) or math.isnan(vb):
        return Comparison(metric, len(y), va, vb, math.nan, math.nan, math.nan, confidence, "paired bootstrap")

    def diff(labels, sa, sb):
        d = value(labels, sa) - value(labels, sb)
        return d if d == d else 0.0  # a resample with one class only counts as no difference

    res = bootstrap(
        (y, a, b),
        diff,
        paired=True,
        vectorized=False,
        n_resamples=1000,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return Comparison(metric, len(y), va, vb, va - vb, float(low), float(high), confidence, "paired bootstrap")
