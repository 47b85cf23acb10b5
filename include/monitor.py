"""Drift and decay statistics: a reference profile saved with each model, and a streaming
comparison of served traffic against it.

The profile is what the monitor needs to know a model's reference, so it travels with the model
(an MLflow artifact of its training run): per numeric feature the reference's quantile bin edges
and counts, per categorical feature the category counts, the score distribution (bins plus a
sample for the KS test), the base rate. Missing values have a bin of their own everywhere: a
feature that starts arriving empty is drift too.

The comparison streams: `DriftAccumulator.update` takes one partition of the inference log at a
time and only adds counts (one `searchsorted` + `bincount` per column), so memory stays bounded
by the number of bins, not by the window. PSI is computed on the reference's bins; categorical
features also get the Jensen–Shannon distance (scipy); scores get PSI and a two-sample KS test
(scipy) against the reference sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

PROFILE_ARTIFACT = "reference/profile.json"
BINS = 10
SCORE_SAMPLE = 2000
EPS = 1e-4
"""Floor of a bin's share in PSI, so an empty bin gives a large but finite term."""


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

    from include.registry import connect

    run_id = connect(tracking_uri).get_model_version(model_name, version).run_id
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{PROFILE_ARTIFACT}")


def psi(reference: np.ndarray, current: np.ndarray, eps: float = EPS) -> float:
    """Population stability index of two count vectors over the same bins."""
    p = np.clip(np.asarray(reference, dtype="float64") / max(np.sum(reference), 1), eps, None)
    q = np.clip(np.asarray(current, dtype="float64") / max(np.sum(current), 1), eps, None)
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass
class DriftAccumulator:
    """Counts of the current window in the reference's bins; feed it partitions one by one."""

    profile: dict
    score_reservoir: int = 10_000
    seed: int = 0
    n: int = 0
    labelled: int = 0
    positives: float = 0.0
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    score_counts: np.ndarray | None = None
    _scores: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """Sampled scores with the number of window rows each stands for."""

    def update(self, features: pd.DataFrame, scores: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        for name, ref in self.profile["features"].items():
            values = features[name].to_numpy(dtype="float64")
            add = (
                categorical_counts(values, ref["categories"])
                if ref["kind"] == "categorical"
                else numeric_counts(values, ref["edges"])
            )
            self.counts[name] = self.counts.get(name, 0) + add
        self.n += len(features)
        if scores is not None:
            scores = np.asarray(scores, dtype="float64")
            add = numeric_counts(scores, self.profile["score"]["edges"])
            self.score_counts = add if self.score_counts is None else self.score_counts + add
            self._scores.append((scores, np.ones(scores.size)))
            self._shrink_scores()
        if labels is not None:
            labels = np.asarray(labels, dtype="float64")
            known = ~np.isnan(labels)
            self.labelled += int(known.sum())
            self.positives += float(labels[known].sum())

    def _shrink_scores(self) -> None:
        # A bounded sample of the window's scores for the KS test; weights keep every partition
        # represented by its row count, however many shrinks ago it was sampled.
        pooled = np.concatenate([s for s, _ in self._scores])
        weights = np.concatenate([w for _, w in self._scores])
        if pooled.size > self.score_reservoir:
            rng = np.random.default_rng(self.seed + self.n)
            idx = rng.choice(pooled.size, size=self.score_reservoir, p=weights / weights.sum())  # with replacement: unbiased
            pooled, weights = pooled[idx], np.full(self.score_reservoir, weights.sum() / self.score_reservoir)
        self._scores = [(pooled, weights)]

    def report(self) -> dict:
        """Per-feature PSI (and JS distance for categoricals), prediction drift, base-rate shift."""
        from scipy.spatial.distance import jensenshannon
        from scipy.stats import ks_2samp

        features = {}
        for name, ref in self.profile["features"].items():
            cur = self.counts.get(name)
            if cur is None:
                continue
            entry = {"psi": psi(ref["counts"], cur), "missing_share": float(cur[-1] / max(cur.sum(), 1)), "counts": cur.tolist()}
            if ref["kind"] == "categorical":
                p = np.asarray(ref["counts"], dtype="float64")
                entry["js_distance"] = float(jensenshannon(p / p.sum(), cur / max(cur.sum(), 1), base=2))
                entry["unknown_share"] = float(cur[-2] / max(cur.sum(), 1))
            features[name] = entry
        out: dict = {"n": self.n, "features": features}
        if self.score_counts is not None:
            ks = ks_2samp(self.profile["score"]["sample"], np.concatenate([s for s, _ in self._scores]))
            out["prediction"] = {
                "psi": psi(self.profile["score"]["counts"], self.score_counts),
                "ks_statistic": float(ks.statistic),
                "ks_pvalue": float(ks.pvalue),
            }
        out["labels"] = {
            "labelled": self.labelled,
            "base_rate": self.positives / self.labelled if self.labelled else None,
            "reference_base_rate": self.profile["base_rate"],
        }
        return out


def window_report(usecase, profile: dict, start, end, storage=None) -> dict:
    """Drift, data quality and (once labels have landed) performance of the predictions logged
    for events in [start, end): the inference log is read one day at a time, so memory holds one
    day plus the window's labelled (score, label) pairs."""
    from datetime import datetime, timedelta

    import pandas as pd

    from include.data import list_validated, read_validated
    from include.evaluate import compute_metrics
    from include.serving.inference_log import FEATURE_PREFIX, join_labels, read_inference_log

    acc = DriftAccumulator(profile)
    # labels come from the validated partitions whose interval overlaps the window
    overlap = [
        r
        for r in list_validated(usecase.name, storage)
        if datetime.fromisoformat(r["interval_start"]) < end and datetime.fromisoformat(r["interval_end"]) > start
    ]
    labels = read_validated(overlap, storage) if overlap else None
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    versions: dict[str, int] = {}
    day = start
    while day < end:
        log = read_inference_log(usecase, day, min(day + timedelta(days=1), end), storage)
        day += timedelta(days=1)
        if log.empty:
            continue
        for v, n in log["model_version"].value_counts().items():
            versions[str(v)] = versions.get(str(v), 0) + int(n)
        features = log[[FEATURE_PREFIX + f for f in usecase.features]].set_axis(list(usecase.features), axis=1)
        y = join_labels(usecase, log, labels)["label"].to_numpy() if labels is not None else None
        acc.update(features, log["score"].to_numpy(), y)
        if y is not None:
            known = ~np.isnan(y)
            pairs.append((log["score"].to_numpy()[known], y[known]))
    report = acc.report() | {"window": [start.isoformat(), end.isoformat()], "model_versions": versions}
    scores = np.concatenate([p[0] for p in pairs]) if pairs else np.array([])
    ys = np.concatenate([p[1] for p in pairs]) if pairs else np.array([])
    if ys.size and 0 < ys.sum() < ys.size:
        metrics = compute_metrics(pd.Series(ys), scores, 0.5)
        report["performance"] = {"roc_auc": metrics["roc_auc"], "pr_auc": metrics["pr_auc"], "log_loss": metrics["log_loss"]}
        report["calibration"] = {"mean_score": float(scores.mean()), "base_rate": float(ys.mean())}
    else:
        report["performance"] = {}
    return report


def monitoring_window(settings, start: str | None, end: str | None, events: list[dict]):
    """The window a monitor run checks: the form's dates (days in LOOP_TIMEZONE, end exclusive)
    if given, else the intervals of the validated partitions whose arrival triggered the run (their
    labels have just landed)."""
    from datetime import date, datetime, time
    from zoneinfo import ZoneInfo

    if start or end:
        if not (start and end):
            raise ValueError("give both window_start and window_end, or neither")
        tz = ZoneInfo(settings.timezone)
        a, b = (datetime.combine(date.fromisoformat(d), time(), tz) for d in (start, end))
    else:
        spans = [(e["interval_start"], e["interval_end"]) for e in events if "interval_start" in e]
        if not spans:
            raise ValueError("no window: trigger with window_start/window_end, or let validated-data events trigger it")
        a, b = min(datetime.fromisoformat(s) for s, _ in spans), max(datetime.fromisoformat(e) for _, e in spans)
    if b <= a:
        raise ValueError(f"window end {b} is not after its start {a}")
    return a, b


def monitoring_experiment(model_name: str) -> str:
    return f"{model_name}-monitoring"


def run_monitor(
    settings, usecase, start, end, *, dag_id: str, dag_run_id: str, training_active: bool = False, storage=None
) -> dict:
    """Check the window [start, end) of the live model: drift and decay report, the policy's
    decision, all logged to MLflow (experiment `<model>-monitoring`, one run per window and
    version; metrics stamped with the window end, so they chart over time). Idempotent: a rerun
    for the same window and version returns the recorded decision.

    Times are data time (the window's end is "now"): in production that is the wall clock; in the
    2013 replay it keeps the cooldown meaningful."""
    import mlflow
    from mlflow.entities import Metric

    from include.policy import History, PolicyConfig, decide
    from include.registry import CHAMPION, alias_version, connect, experiment_id, find_runs

    client = connect(settings.mlflow_tracking_uri)
    model_name = settings.model_name or usecase.model_name
    live = _live_version(settings, client, model_name) or alias_version(client, model_name, CHAMPION)
    if live is None:
        return _without_model(settings, usecase, model_name, training_active, storage)
    version = str(live.version)
    exp = experiment_id(client, monitoring_experiment(model_name))
    window = {"monitor.window_start": start.isoformat(), "monitor.window_end": end.isoformat(), "monitor.model_version": version}
    for run in find_runs(client, exp, window):
        if run.info.status == "FINISHED" and "decision.action" in run.data.tags:
            return _result(run.info.run_id, run.data.tags, reused=True)

    profile = mlflow.artifacts.load_dict(f"runs:/{live.run_id}/{PROFILE_ARTIFACT}")
    report = window_report(usecase, profile, start, end, storage)
    model_metrics = client.get_run(live.run_id).data.metrics
    reference = {m: model_metrics.get(f"eval_{m}") for m in ("roc_auc", "pr_auc")}
    history = History(
        now=end,
        last_training_at=_last_training_end(client, model_name),
        training_active=training_active,
        requests=_earlier_requests(client, exp, before=end),
    )
    decision = decide(report, reference, history, PolicyConfig.from_settings(settings, usecase.drift_exempt))

    stamp = int(end.timestamp() * 1000)
    metrics = {f"psi.{k}": v["psi"] for k, v in report["features"].items()}
    metrics |= {f"prediction.{k}": v for k, v in report.get("prediction", {}).items()}
    metrics |= {f"live.{k}": v for k, v in report.get("performance", {}).items()}
    metrics |= {"rows": report["n"], "labelled": report["labels"]["labelled"]}
    if report["labels"]["base_rate"] is not None:
        metrics["base_rate"] = report["labels"]["base_rate"]
    tags = {
        **window,
        "airflow.dag_id": dag_id,
        "airflow.dag_run_id": dag_run_id,
        "decision.action": decision.action,
        "decision.cause": decision.cause,
        "decision.reason": decision.reason[:4000],
    }
    with mlflow.start_run(experiment_id=exp, run_name=f"v{version} {start.date()}…{end.date()}", tags=tags) as run:
        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v == v])
        mlflow.log_dict(report, "monitor/report.json")
        mlflow.log_dict(decision.as_dict(), "monitor/decision.json")
        auc_history = _auc_history(client, exp, before=end)
        if "roc_auc" in report.get("performance", {}):
            auc_history.append((end, report["performance"]["roc_auc"], version))
        fig = drift_figure(profile, report, usecase, auc_history=auc_history, reference_auc=reference["roc_auc"])
        mlflow.log_figure(fig, "monitor/drift.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
    if decision.cause:
        from include.alerts import mlflow_artifact_link, mlflow_run_link, send_alert

        send_alert(
            settings,
            "decay" if "decay" in decision.cause else "drift",
            f"{model_name} v{version}, {start.date()}…{end.date()}: {decision.reason} → {decision.action}",
            {"model_version": version, "action": decision.action, "cause": decision.cause},
            links={
                "mlflow": mlflow_run_link(settings, run.info.run_id, exp),
                "report": mlflow_artifact_link(settings, run.info.run_id, "monitor/drift.png"),
            },
        )
    return _result(run.info.run_id, tags, reused=False)


def _result(run_id: str, tags: dict, reused: bool) -> dict:
    window = f"{tags['monitor.window_start'][:10]}…{tags['monitor.window_end'][:10]}"
    report_uri = f"runs:/{run_id}/monitor/report.json"
    return {
        "retrain_conf": {"reason": f"monitor {window}: {tags['decision.reason']}"[:500], "report_uri": report_uri},
        "action": tags["decision.action"],
        "cause": tags["decision.cause"],
        "reason": tags["decision.reason"],
        "model_version": tags["monitor.model_version"],
        "mlflow_run_id": run_id,
        "report_uri": report_uri,
        "reused": reused,
    }


def _without_model(settings, usecase, model_name, training_active, storage) -> dict:
    """No version serves or is champion. With `LOOP_RETRAIN_ON=drift`, new data never trains by
    itself, so the monitor asks for the first model once enough partitions are validated."""
    from include.data import list_validated

    none = {"action": "none", "cause": "", "retrain_conf": {}, "report_uri": None}
    if settings.retrain_on != "drift":
        return none | {"reason": f"no deployed or champion version of {model_name} to monitor"}
    have, need = len(list_validated(usecase.name, storage)), settings.min_train_partitions
    if have < need:
        return none | {"reason": f"no model yet, and {have} validated partitions of the {need} a first training needs"}
    why = f"no model of {model_name} yet and {have} validated partitions: first training"
    if training_active:
        return none | {"action": "suppressed", "cause": "bootstrap", "reason": f"{why}; a training run is already active"}
    return none | {"action": "retrain", "cause": "bootstrap", "reason": why, "retrain_conf": {"reason": f"monitor: {why}"}}


def _live_version(settings, client, model_name):
    from include.deploy import Serving

    live = Serving(settings).live()
    if live and live["model_name"] == model_name:
        return client.get_model_version(model_name, live["model_version"])
    return None


def _last_training_end(client, model_name):
    """Data time of the newest training: the end of the newest version's data window."""
    from datetime import datetime

    versions = client.search_model_versions(f"name = '{model_name}'")
    ends = [v.tags.get("loop.data_window", "").partition(" … ")[2] for v in versions]
    ends = [datetime.fromisoformat(e) for e in ends if e]
    return max(ends) if ends else None


def _auc_history(client, exp, before) -> list:
    """(window end, live ROC AUC, model version) of the earlier monitored windows that had labels."""
    from datetime import datetime

    runs = client.search_runs([exp], filter_string="metrics.`live.roc_auc` > 0", max_results=1000)
    points = [
        (
            datetime.fromisoformat(r.data.tags["monitor.window_end"]),
            r.data.metrics["live.roc_auc"],
            r.data.tags["monitor.model_version"],
        )
        for r in runs
        if "monitor.window_end" in r.data.tags
    ]
    return [p for p in points if p[0] < before]


def _earlier_requests(client, exp, before) -> tuple:
    from datetime import datetime

    runs = client.search_runs([exp], filter_string="tags.`decision.action` = 'retrain'")
    found = [(datetime.fromisoformat(r.data.tags["monitor.window_end"]), r.data.tags["decision.cause"]) for r in runs]
    return tuple(sorted(x for x in found if x[0] < before))


def drift_figure(profile: dict, report: dict, usecase, top: int = 6, auc_history=(), reference_auc=None):
    """PSI per feature; live ROC AUC over the monitored windows (`auc_history`: (window end,
    AUC, model version) tuples) against the model's evaluation AUC; and reference vs current bin
    shares of the most drifted features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    psis = sorted(((k, v["psi"]) for k, v in report["features"].items()), key=lambda kv: kv[1])
    worst = [k for k, _ in psis[::-1] if k not in getattr(usecase, "drift_exempt", ())][:top]
    fig, axes = plt.subplots(1 + (len(worst) + 2) // 3, 3, figsize=(13, 3.2 * (1 + (len(worst) + 2) // 3)))
    ax = plt.subplot2grid((1 + (len(worst) + 2) // 3, 3), (0, 0), colspan=2, fig=fig)
    exempt = set(getattr(usecase, "drift_exempt", ()))
    colours = ["#aaaaaa" if k in exempt else "#c0392b" if v > 0.25 else "#3b75af" for k, v in psis]
    ax.barh([f"{k} (exempt)" if k in exempt else k for k, _ in psis], [v for _, v in psis], color=colours)
    ax.axvline(0.25, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("PSI against the training reference (dashed: 0.25)")
    ax.set_title(f"Drift of {report['window'][0][:10]} … {report['window'][1][:10]} ({report['n']:,} predictions)")
    ax = plt.subplot2grid((1 + (len(worst) + 2) // 3, 3), (0, 2), fig=fig)
    points = sorted(auc_history)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#3b75af", label="live ROC AUC")
        for when, auc, version in points:
            ax.annotate(f"v{version}", (when, auc), fontsize=7, textcoords="offset points", xytext=(0, 4))
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    else:
        ax.text(0.5, 0.5, "no labelled window yet", ha="center", va="center", transform=ax.transAxes)
    if reference_auc is not None:
        ax.axhline(reference_auc, color="grey", linestyle="--", linewidth=1, label="evaluation AUC")
    ax.set_title("ROC AUC over time (labels joined)")
    if points or reference_auc is not None:
        ax.legend(fontsize=7)
    for i, name in enumerate(worst):
        ax = axes.flat[3 + i]
        ref = np.asarray(profile["features"][name]["counts"], dtype="float64")
        cur = np.asarray(report["features"][name]["counts"], dtype="float64")
        x = np.arange(len(ref))
        ax.bar(x - 0.2, ref / max(ref.sum(), 1), 0.4, label="reference", color="#3b75af")
        ax.bar(x + 0.2, cur / max(cur.sum(), 1), 0.4, label="current", color="#e67e22")
        ax.set_title(f"{name}: PSI {report['features'][name]['psi']:.2f}")
        ax.set_xticks([])
        ax.set_xlabel("reference bins (last: missing)")
        if i == 0:
            ax.legend()
    for ax in axes.flat[3 + len(worst) :]:
        ax.axis("off")
    for ax in axes.flat[:3]:
        ax.axis("off")
    fig.tight_layout()
    return fig
