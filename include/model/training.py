"""Training: a rolling window of validated partitions → XGBoost → an MLflow run and model version.

The split is by time: the newest `eval_partitions` partitions are the evaluation slice, the older
ones in the window are the training set. A rerun of the same Airflow DAG run finds its finished
MLflow run by tags and returns it instead of training again, so retries and cleared tasks never
create a second model version.

The run and its version carry the digest of the model's files as the artifact store holds them
(`loop.model_sha256`, `include/integrity.py`): packaging imports those files only if they still match.

Two engines train the same model (`engines.py`): XGBoost in the task's process, or `xgboost.dask`
on the Dask cluster; the run records which (params `train.engine`, `train.workers`).

The steps from a window's rows to a judged model (`training_rows`, `fit_model`, `evaluate`) are
the backtest's too (`include/backtest/`): what it replays is what this trains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from typing import TYPE_CHECKING

from include.data.partitions import list_validated, read_validated
from include.data.storage import Storage, get_storage
from include.integrity import file_hashes, manifest_digest, manifest_text
from include.model.card import write_model_card
from include.model.dataset import LINEAGE_ARTIFACT, labelled, lineage, select_partitions
from include.model.engines import choose_engine, fit, fit_on_dask
from include.model.metrics import compute_metrics, slice_metrics
from include.model.params import TrainParams
from include.model.registry import (
    CHALLENGER,
    MODEL_DIGEST,
    MODEL_FILES,
    connect,
    experiment_id,
    finished_run,
    naming_the_server,
    version_of_run,
)
from include.settings import PROJECT_ROOT, Settings
from include.usecases import UseCase, registered_model_name

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from xgboost import XGBClassifier

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
VERSION_TAGS = (
    "airflow.dag_id",
    "airflow.dag_run_id",
    "loop.data_window",
    "loop.partitions_sha256",
    "loop.reason",
    "loop.monitor_report",
    MODEL_DIGEST,
    MODEL_FILES,
)
"""Run tags a registered version carries too (with the commit as `loop.git_commit`)."""
RUNTIME_PACKAGES = ("xgboost", "pandas", "numpy", "scikit-learn", "pyarrow")
"""What the logged model needs at run time, by import name or distribution name."""


def runtime_requirements() -> list[str]:
    """The logged model's pip requirements, pinned to what trained it: each package by the
    distribution installed here (xgboost's module comes from `xgboost-cpu` on Linux, `xgboost`
    elsewhere)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions

    providers = packages_distributions()
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={installed_version(package)}")
        except PackageNotFoundError:  # an import name whose distribution is named otherwise
            (dist,) = set(providers[package])
            pins.append(f"{dist}=={installed_version(dist)}")
    return pins


STAGE = "loop.stage"
"""Which fit of a DAG run a training run is: `challenger` (judged on its held-out week) or `refit`
(the same configuration on the whole window, `refit.py`); part of the identity a rerun looks up."""


def git_commit(settings: Settings) -> str:
    """The commit the code comes from: LOOP_GIT_COMMIT (an image has no .git), else the checkout's."""
    if settings.git_commit:
        return settings.git_commit
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _importance_figure(model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gain = model.get_booster().get_score(importance_type="gain")
    items = sorted(gain.items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#3b75af")
    ax.set_xlabel("average gain per split (XGBoost 'gain')")
    ax.set_title("Feature importance")
    fig.tight_layout()
    return fig


def _calibration_figure(y_true, scores, bins: int = 10):
    """Reliability on the held-out rows: the observed positive rate against the mean score, per
    decile of the scores, with the rows in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    y, s = np.asarray(y_true, dtype=float), np.asarray(scores, dtype=float)
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
    present = [which == b for b in range(len(edges) - 1) if (which == b).any()]
    mean_score, observed = [s[rows].mean() for rows in present], [y[rows].mean() for rows in present]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.plot(mean_score, observed, marker="o", color="#3b75af", label="held-out deciles")
    ax.set_xlabel("mean score")
    ax.set_ylabel("observed positive rate")
    ax.set_title("Reliability on the held-out rows")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def train_candidate(
    usecase: UseCase,
    params: TrainParams,
    settings: Settings,
    *,
    dag_id: str,
    dag_run_id: str,
    storage: Storage | None = None,
) -> dict:
    """Train on the window, log everything to MLflow, register a version with alias `challenger`.

    Returns references only: {"run_id", "model_name", "version", "reused"}. A tracking server that
    stops answering fails the call with TrackingServerUnreachable naming it, once MLflow's retries
    (the settings') give up; the task's retry resumes from what the server holds: a finished run is
    registered, an interrupted one is marked FAILED and trained afresh.
    """
    storage = storage or get_storage()
    model_name = registered_model_name(settings, usecase)
    # Selecting first is cheap and makes "not enough data yet" a quick skip.
    train_recs, eval_recs = select_partitions(
        list_validated(usecase.name, storage),
        params.window_weeks,
        params.eval_partitions,
        settings.min_train_partitions,
        params.as_of,
    )
    client = connect(settings.mlflow_tracking_uri)
    identity = {"airflow.dag_id": dag_id, "airflow.dag_run_id": dag_run_id, STAGE: "challenger"}
    with naming_the_server(settings.mlflow_tracking_uri):
        exp_id = experiment_id(client, model_name)
        # An interrupted attempt (a killed task, a server that stopped answering) is marked FAILED: train afresh.
        run = finished_run(client, exp_id, identity, fail_unfinished=True)
        reused = run is not None
        if reused:
            log.info("DAG run %s already trained MLflow run %s: reusing it", dag_run_id, run.info.run_id)
        else:
            log.info(
                "training on %d partitions (%s … %s), evaluating on %s",
                len(train_recs),
                train_recs[0]["partition"],
                train_recs[-1]["partition"],
                [r["partition"] for r in eval_recs],
            )
            digest = hashlib.sha256("".join(r["validated_sha256"] for r in train_recs + eval_recs).encode()).hexdigest()
            tags = {
                **identity,
                "mlflow.source.git.commit": git_commit(settings),
                "loop.usecase": usecase.name,
                # Why this version exists (the registered version carries it too: VERSION_TAGS).
                "loop.reason": params.reason or "(none given)",
                **({"loop.monitor_report": params.report_uri} if params.report_uri else {}),
                "loop.data_window": f"{train_recs[0]['interval_start']} … {eval_recs[-1]['interval_end']}",
                "loop.partitions_sha256": digest,
                "loop.eval_partitions": ",".join(r["partition"] for r in eval_recs),
            }
            run = client.get_run(log_training_run(usecase, params, settings, storage, exp_id, tags, train_recs, eval_recs))
        # Registered after the run is FINISHED: a failure in between leaves a finished run without a
        # version, which a rerun registers, instead of a second run.
        registered = register_run(client, model_name, run)
        write_model_card(client, settings, usecase, model_name, registered["version"])
        return registered | {"reused": reused}


@dataclass(frozen=True)
class TrainingRows:
    """The labelled rows of a training window: the model fits `X`, `y` and is judged on the held-out
    `X_eval`, `y_eval` (`eval_slices`: their slice columns)."""

    X: pd.DataFrame
    y: pd.Series
    X_eval: pd.DataFrame
    y_eval: pd.Series
    eval_slices: pd.DataFrame


def training_rows(usecase: UseCase, train_df: pd.DataFrame, eval_df: pd.DataFrame) -> TrainingRows:
    """The labelled rows of a window's training and evaluation frames (rows without a label, such
    as cancelled flights, are left out of both)."""
    X, y, _ = labelled(usecase, train_df)
    X_eval, y_eval, eval_slices = labelled(usecase, eval_df)
    return TrainingRows(X, y, X_eval, y_eval, eval_slices)


def fit_model(
    usecase: UseCase, rows: TrainingRows, params: TrainParams, engine: str = "single", dask_address: str = ""
) -> tuple[XGBClassifier, int]:
    """The model fitted on the training rows by `engine` (`choose_engine`'s), and the number of
    workers that fitted it."""
    if engine == "dask":
        return fit_on_dask(rows.X, rows.y, params, usecase.categorical, dask_address)
    return fit(rows.X, rows.y, params, usecase.categorical), 1


def evaluate(model, rows: TrainingRows, threshold: float) -> tuple[dict[str, float], np.ndarray]:
    """The model's metrics on the held-out rows at the operating threshold, and its scores of them:
    the evaluation the run records and the monitor takes as the model's own numbers."""
    score = model.predict_proba(rows.X_eval)[:, 1]
    return compute_metrics(rows.y_eval, score, threshold), score


def log_training_run(
    usecase, params, settings, storage, exp_id, tags, train_recs, eval_recs, *, held_out="eval", carried=None, gated=None
) -> str:
    """Fit the model and log it, its evaluation and its lineage as one MLflow run; its id.

    A refit (`refit.py`) has seen its held-out rows: it logs its scores of them as `<held_out>_*`
    and carries the judged fit's out-of-sample `eval_*` (`carried`) as its own expected numbers, with
    that fit's reference (`gated`) in its lineage."""
    import mlflow

    train_df, eval_df = read_validated(train_recs, storage), read_validated(eval_recs, storage)
    rows = training_rows(usecase, train_df, eval_df)
    engine = choose_engine(params.distributed, len(rows.X), settings)
    run_name = f"{tags['airflow.dag_id']}/{tags['airflow.dag_run_id']}"
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params(
            {
                **params.model_dump(mode="json"),
                "tree_method": "hist",
                "train.engine": engine,
                "n_train_partitions": len(train_recs),
                "n_train_rows": len(rows.X),
                "n_eval_rows": len(rows.X_eval),
                "n_unlabelled_dropped": len(train_df) + len(eval_df) - len(rows.X) - len(rows.X_eval),
            }
        )
        mlflow.log_dict(
            {"train": lineage(train_recs), "eval": lineage(eval_recs)} | ({"gated": gated} if gated else {}), LINEAGE_ARTIFACT
        )
        # The exact partitions and hashes are in the lineage artifact; the datasets give
        # MLflow's UI the schema, row counts and a digest of each split.
        zone = storage.uri(f"validated/{usecase.name}")
        for split, frame in (("train", train_df), ("eval", eval_df)):
            dataset = mlflow.data.from_pandas(frame.drop(columns="_partition"), source=zone, name=f"{usecase.name}-{split}")
            mlflow.log_input(dataset, context="training" if split == "train" else "evaluation")

        log.info("fitting %d rows with the %s engine", len(rows.X), engine)
        model, workers = fit_model(usecase, rows, params, engine, settings.dask_address)
        mlflow.log_param("train.workers", workers)
        metrics, score = evaluate(model, rows, settings.operating_threshold)
        mlflow.log_metrics({f"{held_out}_{k}": v for k, v in metrics.items()} | (carried or {}))
        train_score = model.predict_proba(rows.X)[:, 1]
        mlflow.log_metrics(
            {f"train_{k}": v for k, v in compute_metrics(rows.y, train_score, settings.operating_threshold).items()}
        )
        if held_out == "eval":  # a refit's scores of rows it has seen judge no slice
            slices = slice_metrics(rows.eval_slices, rows.y_eval.to_numpy(), score, settings.operating_threshold)
            mlflow.log_dict(slices, "evaluation/slices.json")
            mlflow.log_metrics(
                {
                    f"slice.{k.replace('=', '.')}.{m}": v
                    for k, s in slices.items()
                    for m, v in s.items()
                    if m in ("roc_auc", "n") and v == v
                }
            )

        import matplotlib.pyplot as plt

        for fig, path in (
            (_importance_figure(model), "plots/feature_importance.png"),
            (_calibration_figure(rows.y_eval, score), "plots/calibration.png"),
        ):
            mlflow.log_figure(fig, path)
            plt.close(fig)

        from mlflow.models import infer_signature

        example = rows.X_eval.head(5)
        info = mlflow.xgboost.log_model(
            model,
            name=MODEL_ARTIFACT,
            model_format="ubj",  # XGBoost's own format, what the slot reads: nothing pickled
            signature=infer_signature(example, model.predict_proba(example)[:, 1]),
            input_example=example,
            pip_requirements=runtime_requirements(),
        )
        # Before the run finishes: a finished run, which a rerun registers as it is, has its digest.
        mlflow.set_tags(_digest_tags(info.model_id))
    log.info("run %s: eval %s", run.info.run_id, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return run.info.run_id


def _digest_tags(model_id: str) -> dict[str, str]:
    """The digest and manifest tags of a logged model, from its files read back from the artifact
    store: the bytes packaging will import, not the local copy `log_model` uploaded."""
    import tempfile

    import mlflow

    location = mlflow.get_logged_model(model_id).artifact_location
    with tempfile.TemporaryDirectory() as tmp:
        files = file_hashes(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp))
    return {MODEL_DIGEST: manifest_digest(files), MODEL_FILES: manifest_text(files)}


def register_run(
    client: MlflowClient, model_name: str, run: Run, alias: str | None = CHALLENGER, tags_extra: dict | None = None
) -> dict:
    """The finished run's model version, with alias `challenger`: registered unless an earlier
    attempt did. Its tags come from the run's in one request (the version is created with them),
    so a version registered by a rerun carries the same lineage and none lacks it."""
    import mlflow

    run_id = run.info.run_id
    mv = version_of_run(client, model_name, run_id)
    if mv is None:
        tags = {k: run.data.tags[k] for k in VERSION_TAGS if k in run.data.tags}
        tags["loop.git_commit"] = run.data.tags.get("mlflow.source.git.commit", "unknown")
        tags |= tags_extra or {}
        (logged,) = run.outputs.model_outputs  # the run logs one model
        mv = mlflow.register_model(f"models:/{logged.model_id}", model_name, tags=tags)
    if alias:
        client.set_registered_model_alias(model_name, alias, mv.version)
        log.info("run %s: %s version %s is the %s", run_id, model_name, mv.version, alias)
    return {"run_id": run_id, "model_name": model_name, "version": mv.version}
