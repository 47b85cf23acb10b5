"""Classification metrics of a model's scores, overall and per slice: what training logs, the
champion gate compares and the monitor measures on live traffic."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

HIGHER_IS_BETTER = {"roc_auc", "pr_auc", "precision", "recall", "f1"}


def compute_metrics(y_true, y_score, threshold: float) -> dict[str, float]:
    """Classification metrics of scores `y_score` against 0/1 labels; NaN where undefined."""
    import numpy as np
    from sklearn import metrics

    y_true = np.asarray(y_true, dtype=float)
    y_score = np.asarray(y_score, dtype=float)
    out = {"n": float(len(y_true)), "positive_rate": float(y_true.mean()) if len(y_true) else math.nan}
    out |= {m: metric_value(m, y_true, y_score, threshold) for m in ("roc_auc", "pr_auc")}
    out["log_loss"] = float(metrics.log_loss(y_true, y_score, labels=[0, 1])) if len(y_true) else math.nan
    out |= {m: metric_value(m, y_true, y_score, threshold) for m in ("precision", "recall", "f1")}
    return out


def metric_value(metric: str, y_true, y_score, threshold: float) -> float:
    """One higher-is-better metric (`HIGHER_IS_BETTER`) of scores against 0/1 labels (what
    `compute_metrics` reports for it); NaN where undefined."""
    import numpy as np
    from sklearn import metrics

    y_true, y_score = np.asarray(y_true, dtype=float), np.asarray(y_score, dtype=float)
    if metric in ("roc_auc", "pr_auc"):
        if len(np.unique(y_true)) != 2:
            return math.nan
        score = metrics.roc_auc_score if metric == "roc_auc" else metrics.average_precision_score
        return float(score(y_true, y_score))
    by_name = {"precision": metrics.precision_score, "recall": metrics.recall_score, "f1": metrics.f1_score}
    return float(by_name[metric](y_true, (y_score >= threshold).astype(int), zero_division=0))


def slice_masks(slices: pd.DataFrame) -> dict[str, np.ndarray]:
    """The rows of each value of each slice column (missing values left out), keyed `column=value`."""
    out = {}
    for column in slices.columns:
        values = slices[column].astype("object").to_numpy()
        for value in sorted({v for v in values if v is not None and v == v}, key=str):
            out[f"{column}={value}"] = values == value
    return out


def slice_metrics(slices: pd.DataFrame, y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """Metrics per value of each slice column, keyed `column=value`."""
    import numpy as np

    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    return {key: compute_metrics(y_true[mask], y_score[mask], threshold) for key, mask in slice_masks(slices).items()}
