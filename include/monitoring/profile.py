"""The reference profile: what the monitor needs to know of a model's training data, logged with
the model (an MLflow artifact of its training run).

Per numeric feature the reference's quantile bin edges and counts, per categorical feature the
category counts, the score distribution (bins plus a sample for the KS test), the base rate.
Missing values have a bin of their own everywhere: a feature that starts arriving empty is drift
too. The `train` DAG profiles every challenger right after training (`log_reference_profile`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from include.data.partitions import read_validated
from include.model.dataset import LINEAGE_ARTIFACT, labelled
from include.model.registry import connect, load_judged_model
from include.usecases import UseCase

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PROFILE_ARTIFACT = "reference/profile.json"
BINS = 10
SCORE_SAMPLE = 2000


def _edges(values: np.ndarray, bins: int) -> list[float]:
    """Interior cut points at the reference's quantiles (duplicates dropped: a feature with few
    distinct values gets fewer bins)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    return np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])).tolist()


def numeric_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts per bin (len(edges) + 1 bins, right-closed cut points) plus one for missing."""
    values = np.asarray(values, dtype="float64")
    missing = ~np.isfinite(values)
    idx = np.searchsorted(np.asarray(edges), values[~missing], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype("float64")
    return np.append(counts, missing.sum())


def categorical_counts(values: np.ndarray, categories: list[float]) -> np.ndarray:
    """Counts per reference category, then one bin for any other value, one for missing."""
    values = np.asarray(values, dtype="float64")
    missing = np.isnan(values)
    cats = np.asarray(categories, dtype="float64")
    pos = np.searchsorted(cats, values[~missing])
    known = (pos < len(cats)) & (cats[np.minimum(pos, len(cats) - 1)] == values[~missing]) if len(cats) else np.zeros(0, bool)
    counts = np.bincount(pos[known], minlength=len(cats)).astype("float64")
    return np.concatenate([counts, [(~known).sum(), missing.sum()]])


def build_profile(
    features: pd.DataFrame, scores: np.ndarray, labels: np.ndarray, categorical: tuple[str, ...], bins: int = BINS, seed: int = 0
) -> dict:
    """The reference profile of a model's training data (features as the model saw them, the
    model's scores on them, the labels)."""
    profile: dict = {"n": len(features), "base_rate": float(np.nanmean(labels)), "bins": bins, "features": {}}
    for name in features.columns:
        values = features[name].to_numpy(dtype="float64")
        if name in categorical:
            cats = np.unique(values[~np.isnan(values)]).tolist()
            profile["features"][name] = {
                "kind": "categorical",
                "categories": cats,
                "counts": categorical_counts(values, cats).tolist(),
            }
        else:
            edges = _edges(values, bins)
            profile["features"][name] = {"kind": "numeric", "edges": edges, "counts": numeric_counts(values, edges).tolist()}
    scores = np.asarray(scores, dtype="float64")
    edges = _edges(scores, bins)
    rng = np.random.default_rng(seed)
    sample = rng.choice(scores, size=min(SCORE_SAMPLE, scores.size), replace=False)
    profile["score"] = {
        "edges": edges,
        "counts": numeric_counts(scores, edges).tolist(),
        "sample": np.round(np.sort(sample), 6).tolist(),
    }
    return profile


def load_profile(tracking_uri: str, model_name: str, version: str) -> dict:
    """The reference profile of a registered model version (logged with its training run)."""
    import mlflow

    run_id = connect(tracking_uri).get_model_version(model_name, version).run_id
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{PROFILE_ARTIFACT}")


def log_reference_profile(tracking_uri: str, usecase: UseCase, model_name: str, version: str, storage=None) -> str:
    """Profile the training rows of `version` (read back from its run's lineage, hash-checked) with
    the version's own scores, and log the profile to its run. Idempotent: a run that has its
    profile keeps it. Returns the profile's URI."""
    import mlflow

    client = connect(tracking_uri)
    run_id = client.get_model_version(model_name, version).run_id
    uri = f"runs:/{run_id}/{PROFILE_ARTIFACT}"
    if any(a.path == PROFILE_ARTIFACT for a in client.list_artifacts(run_id, PROFILE_ARTIFACT.rsplit("/", 1)[0])):
        log.info("version %s already has its reference profile: %s", version, uri)
        return uri
    train = mlflow.artifacts.load_dict(f"runs:/{run_id}/{LINEAGE_ARTIFACT}")["train"]
    X, y, _ = labelled(usecase, read_validated(train, storage))
    scores = load_judged_model(client, model_name, version).predict_proba(X)[:, 1]
    client.log_dict(run_id, build_profile(X, scores, y.to_numpy(), usecase.categorical), PROFILE_ARTIFACT)
    log.info("reference profile of version %s: %d training rows, %d features → %s", version, len(X), X.shape[1], uri)
    return uri
