"""The reference profile: what the monitor needs to know of a model and its data, logged with the
model (an MLflow artifact of its training run).

From the training rows: per numeric feature the quantile bin edges and counts, per categorical
feature the category counts, and the same counts per event day (drift thresholds resample whole
days). From the held-out evaluation rows, which the model never fit: the score distribution (bins
plus a sample for the KS test), the calibration of scores to observed rates (the performance
estimate without labels reads it), the base rate, and each feature's share of the model's
attributions. Live scores are out-of-sample, so their reference must be too. Missing values have a
bin of their own everywhere: a feature that starts arriving empty is drift too. The `train` DAG
profiles every challenger right after training (`log_reference_profile`).
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
SHAP_ROWS = 1000
"""Held-out rows the attribution shares are computed on."""


def _edges(values: np.ndarray, bins: int) -> list[float]:
    """Interior cut points at the reference's quantiles (duplicates dropped: a feature with few
    distinct values gets fewer bins)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    # A cut point on a value the data holds (quantiles of discrete or rounded values land on them)
    # moves halfway to the next value: the same value a bit off in its last digits (a JSON round
    # trip, another library's float parsing) must not change bins.
    distinct = np.unique(finite)
    above = distinct[np.minimum(np.searchsorted(distinct, edges, side="right"), distinct.size - 1)]
    on_value = np.isin(edges, distinct) & (above > edges)
    edges = np.unique(np.where(on_value, (edges + above) / 2, edges))
    return edges[edges < distinct[-1]].tolist()  # a cut on the maximum would leave a top bin of noise


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


def reference_profile(model, usecase: UseCase, train_df: pd.DataFrame, eval_df: pd.DataFrame, seed: int = 0) -> dict:
    """The reference profile of a fitted model from its own data (validated frames, the contract's
    shape): feature bins and counts from the training rows (all of them: serving sees cancelled
    records too), with counts per event day so drift thresholds can resample whole days; the score
    distribution, calibration and base rate from the held-out evaluation rows (out-of-sample scores,
    as live scores are); each feature's share of the model's attributions on those rows."""
    from include.monitoring.noise import calibration_map, contribution_shares

    X_train = usecase.build_features(train_df)
    X_eval, y_eval, _ = labelled(usecase, eval_df)
    scores = model.predict_proba(X_eval)[:, 1]
    profile = build_profile(X_train, scores, y_eval.to_numpy(), usecase.categorical, seed=seed)
    days = event_days(usecase, train_df)
    profile["daily_counts"] = daily_counts(X_train, days, profile)
    # Mean |SHAP| settles on a thousand rows; TreeSHAP on every held-out row costs tens of seconds.
    sample = X_eval.sample(n=min(len(X_eval), SHAP_ROWS), random_state=seed) if len(X_eval) else X_eval
    profile["shares"] = contribution_shares(model.get_booster(), sample)
    profile["calibration"] = calibration_map(scores, y_eval.to_numpy())
    profile["eval_rows"] = len(X_eval)
    return profile


def event_days(usecase: UseCase, df: pd.DataFrame) -> np.ndarray:
    """Each row's event day in the use case's timezone, as ISO strings."""
    when = df[usecase.contract.event_time].dt.tz_convert(usecase.calendar.timezone)
    return when.dt.strftime("%Y-%m-%d").to_numpy()


def daily_counts(features: pd.DataFrame, days: np.ndarray, profile: dict) -> dict[str, dict[str, list[float]]]:
    """Per day, each feature's counts in the profile's bins: {day: {feature: counts}}."""
    out: dict[str, dict[str, list[float]]] = {}
    for day in np.unique(days):
        rows = features.loc[days == day]
        out[str(day)] = {
            name: (
                categorical_counts(rows[name].to_numpy(dtype="float64"), ref["categories"])
                if ref["kind"] == "categorical"
                else numeric_counts(rows[name].to_numpy(dtype="float64"), ref["edges"])
            ).tolist()
            for name, ref in profile["features"].items()
        }
    return out


def load_profile(tracking_uri: str, model_name: str, version: str) -> dict:
    """The reference profile of a registered model version (logged with its training run)."""
    import mlflow

    run_id = connect(tracking_uri).get_model_version(model_name, version).run_id
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{PROFILE_ARTIFACT}")


def log_reference_profile(tracking_uri: str, usecase: UseCase, model_name: str, version: str, storage=None) -> str:
    """Profile `version` from its own data (`reference_profile`: the training rows' features, the
    held-out evaluation rows' scores, calibration and attributions), read back from its run's
    lineage, hash-checked, and the version's own files; log it to its run. A refit (`refit.py`),
    whose scores of its held-out rows are in-sample, carries the profile of the version the gate
    judged instead. Idempotent: a run that has its profile keeps it. Returns the profile's URI."""
    import mlflow

    client = connect(tracking_uri)
    run_id = client.get_model_version(model_name, version).run_id
    uri = f"runs:/{run_id}/{PROFILE_ARTIFACT}"
    if any(a.path == PROFILE_ARTIFACT for a in client.list_artifacts(run_id, PROFILE_ARTIFACT.rsplit("/", 1)[0])):
        log.info("version %s already has its reference profile: %s", version, uri)
        return uri
    lineage = mlflow.artifacts.load_dict(f"runs:/{run_id}/{LINEAGE_ARTIFACT}")
    if "gated" in lineage:  # a refit has seen its held-out week: the judged fit's profile stands for it
        gated = log_reference_profile(tracking_uri, usecase, model_name, lineage["gated"]["version"], storage)
        profile = mlflow.artifacts.load_dict(gated) | {"carried_from_version": lineage["gated"]["version"]}
        client.log_dict(run_id, profile, PROFILE_ARTIFACT)
        log.info(
            "reference profile of refit %s: version %s's, which the gate judged → %s", version, lineage["gated"]["version"], uri
        )
        return uri
    train, held_out = read_validated(lineage["train"], storage), read_validated(lineage["eval"], storage)
    profile = reference_profile(load_judged_model(client, model_name, version), usecase, train, held_out)
    client.log_dict(run_id, profile, PROFILE_ARTIFACT)
    log.info(
        "reference profile of version %s: %d training rows over %d days, scores of %d held-out rows → %s",
        version,
        profile["n"],
        len(profile["daily_counts"]),
        profile["eval_rows"],
        uri,
    )
    return uri
