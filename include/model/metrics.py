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
    y_pred = (y_score >= threshold).astype(int)
    out = {"n": float(len(y_true)), "positive_rate": float(y_true.mean()) if len(y_true) else math.nan}
    both_classes = len(np.unique(y_true)) == 2
    out["roc_auc"] = float(metrics.roc_auc_score(y_true, y_score)) if both_classes else math.nan
    out["pr_auc"] = float(metrics.average_precision_score(y_true, y_score)) if both_classes else math.nan
    out["log_loss"] = float(metrics.log_loss(y_true, y_score, labels=[0, 1])) if len(y_true) else math.nan
    out["precision"] = float(metrics.precision_score(y_true, y_pred, zero_division=0))
    out["recall"] = float(metrics.recall_score(y_true, y_pred, zero_division=0))
    out["f1"] = float(metrics.f1_score(y_true, y_pred, zero_division=0))
    return out


def metric_value(metric: str, y_true, y_score, threshold: float) -> float:
    """One higher-is-better metric (`HIGHER_IS_BETTER`) of scores against 0/1 labels, as
    `compute_metrics` computes it; NaN where undefined."""
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


def slice_metrics(slices: pd.DataFrame, y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """Metrics per value of each slice column, keyed `column=value`."""
    import numpy as np

    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    out = {}
    for column in slices.columns:
        values = slices[column].astype("object").to_numpy()
        for value in sorted({v for v in values if v is not None and v == v}, key=str):
            mask = values == value
            out[f"{column}={value}"] = compute_metrics(y_true[mask], y_score[mask], threshold)
    return out

