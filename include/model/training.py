"""Training: a rolling window of validated partitions → XGBoost → an MLflow run and model version.

The split is by time: the newest `eval_partitions` partitions are the evaluation slice, the older
ones in the window are the training set. A rerun of the same Airflow DAG run finds its finished
MLflow run by tags and returns it instead of training again, so retries and cleared tasks never
create a second model version.

Two engines train the same model: XGBoost in the task's process (`single`), or `xgboost.dask` on
the Dask cluster at LOOP_DASK_ADDRESS (`dask`) when the form asks for it or the training rows reach
LOOP_DASK_MIN_ROWS. The Dask booster comes back as a plain `XGBClassifier`, so what follows (metrics,
MLflow's xgboost flavour, the gate, the bento) does not know which engine trained it; the run records
it (params `train.engine`, `train.workers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from importlib.metadata import version as installed_version
from typing import TYPE_CHECKING, Literal

from include.data.partitions import list_validated, read_validated
from include.data.storage import Storage, get_storage
from include.model.dataset import LINEAGE_ARTIFACT, labelled, lineage, select_partitions
from include.model.metrics import compute_metrics, slice_metrics
from include.model.params import TrainParams
from include.model.registry import CHALLENGER, connect, experiment_id, find_runs, version_of_run
from include.outcomes import FailNow
from include.settings import PROJECT_ROOT, Settings, variable
from include.usecases import UseCase

if TYPE_CHECKING:
    import pandas as pd
    from xgboost import XGBClassifier

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
RUNTIME_PACKAGES = ("xgboost", "pandas", "numpy", "scikit-learn", "pyarrow")


class NoDaskCluster(FailNow):
    """A run asked for Dask but no cluster is configured; retrying cannot help."""


def _model_options(X: pd.DataFrame, params: TrainParams, categorical: tuple[str, ...]) -> dict:
    """The XGBClassifier options of both engines."""
    return {
        "tree_method": "hist",
        "enable_categorical": True,
        "feature_types": ["c" if c in categorical else "q" for c in X.columns],
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "random_state": 0,
        **params.xgb_params(),
    }


def fit(X: pd.DataFrame, y: pd.Series, params: TrainParams, categorical: tuple[str, ...] = ()) -> XGBClassifier:
    from xgboost import XGBClassifier

    return XGBClassifier(n_jobs=2, **_model_options(X, params, categorical)).fit(X, y)


def choose_engine(distributed: bool, n_rows: int, settings: Settings) -> Literal["single", "dask"]:
    """`dask` if the run asks for it or `n_rows` reaches LOOP_DASK_MIN_ROWS with a cluster configured,
    else `single`. Asking for Dask without a cluster fails the run rather than quietly training here."""
    if not settings.dask_address:
        if distributed:
            raise NoDaskCluster(
                f"the run asks for distributed training but {variable('dask_address')} is empty: set it to the "
                "Dask scheduler (e.g. tcp://dask-scheduler:8786), or run without `distributed`"
            )
        return "single"
    return "dask" if distributed or n_rows >= settings.dask_min_rows else "single"


def fit_on_dask(
    X: pd.DataFrame, y: pd.Series, params: TrainParams, categorical: tuple[str, ...], address: str
) -> tuple[XGBClassifier, int]:
    """`fit` with xgboost.dask on the cluster at `address`, one partition per worker.

    Returns the model as a plain `XGBClassifier` (the booster the workers trained) and the number
    of workers that trained it. A cluster that does not answer raises `ConnectionError`, which keeps
    the task's retries.
    """
    import dask.dataframe as dd
    import numpy as np
    import xgboost.dask
    from distributed import Client
    from xgboost import XGBClassifier

    options = _model_options(X, params, categorical)
    where = f"the Dask scheduler at {address} ({variable('dask_address')})"
    try:
        client = Client(address, timeout="30s")
    except OSError as exc:
        raise ConnectionError(f"{where} did not answer within 30 s: {exc}") from exc
    with client:
        try:
            client.wait_for_workers(1, timeout=60)
        except TimeoutError as exc:
            raise ConnectionError(f"{where} has no workers after 60 s") from exc
        workers = len(client.nthreads())
        # Scattered to the workers, not dd.from_pandas: that embeds the frame in the task graph,
        # which the scheduler then holds in memory as well.
        frame = X.assign(_label=y.to_numpy())
        bounds = np.linspace(0, len(frame), workers + 1).astype(int)
        parts = client.scatter([frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        data = dd.from_delayed(parts, meta=frame.head(0))
        model = xgboost.dask.DaskXGBClassifier(**options)
        model.client = client
        model.fit(data[list(X.columns)], data["_label"])
        booster = model.get_booster()
    local = XGBClassifier(n_jobs=2, **options)
    local.load_model(booster.save_raw())
    return local, workers


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

    Returns references only: {"run_id", "model_name", "version", "reused"}.
    """
    import mlflow

    storage = storage or get_storage()
    model_name = settings.model_name or usecase.model_name
    # Selecting first is cheap and makes "not enough data yet" a quick skip.
    train_recs, eval_recs = select_partitions(
        list_validated(usecase.name, storage),
        params.window_weeks,
        params.eval_partitions,
        settings.min_train_partitions,
        params.as_of,
    )
    client = connect(settings.mlflow_tracking_uri)
    exp_id = experiment_id(client, model_name)
    identity = {"airflow.dag_id": dag_id, "airflow.dag_run_id": dag_run_id}

    for run in find_runs(client, exp_id, identity):
        if run.info.status == "FINISHED":
            mv = version_of_run(client, model_name, run.info.run_id) or mlflow.register_model(
                f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}", model_name
            )
            log.info("DAG run %s already trained MLflow run %s (version %s): reusing it", dag_run_id, run.info.run_id, mv.version)
            client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
            return {"run_id": run.info.run_id, "model_name": model_name, "version": mv.version, "reused": True}
        client.set_terminated(run.info.run_id, "FAILED")  # an interrupted attempt; train afresh

    log.info(
        "training on %d partitions (%s … %s), evaluating on %s",
        len(train_recs),
        train_recs[0]["partition"],
        train_recs[-1]["partition"],
        [r["partition"] for r in eval_recs],
    )
    train_df, eval_df = read_validated(train_recs, storage), read_validated(eval_recs, storage)
    X_train, y_train, _ = labelled(usecase, train_df)
    X_eval, y_eval, eval_slices = labelled(usecase, eval_df)
    engine = choose_engine(params.distributed, len(X_train), settings)

    commit = git_commit(settings)
    partitions = {"train": lineage(train_recs), "eval": lineage(eval_recs)}
    digest = hashlib.sha256("".join(r["validated_sha256"] for r in train_recs + eval_recs).encode()).hexdigest()
    window = f"{train_recs[0]['interval_start']} … {eval_recs[-1]['interval_end']}"
    # Why this version exists, on the run and on the registered version alike.
    request = {
        "loop.reason": params.reason or "(none given)",
        **({"loop.monitor_report": params.report_uri} if params.report_uri else {}),
    }
    tags = {
        **identity,
        "mlflow.source.git.commit": commit,
        "loop.usecase": usecase.name,
        **request,
        "loop.data_window": window,
        "loop.partitions_sha256": digest,
        "loop.eval_partitions": ",".join(r["partition"] for r in eval_recs),
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{dag_id}/{dag_run_id}", tags=tags) as run:
        mlflow.log_params(
            {
                **params.model_dump(mode="json"),
                "tree_method": "hist",
                "train.engine": engine,
                "n_train_partitions": len(train_recs),
                "n_train_rows": len(X_train),
                "n_eval_rows": len(X_eval),
                "n_unlabelled_dropped": len(train_df) + len(eval_df) - len(X_train) - len(X_eval),
            }
        )
        mlflow.log_dict(partitions, LINEAGE_ARTIFACT)
        # The exact partitions and hashes are in the lineage artifact; the datasets give
        # MLflow's UI the schema, row counts and a digest of each split.
        zone = storage.uri(f"validated/{usecase.name}")
        for split, frame in (("train", train_df), ("eval", eval_df)):
            dataset = mlflow.data.from_pandas(frame.drop(columns="_partition"), source=zone, name=f"{usecase.name}-{split}")
            mlflow.log_input(dataset, context="training" if split == "train" else "evaluation")

        log.info("fitting %d rows with the %s engine", len(X_train), engine)
        if engine == "dask":
            model, workers = fit_on_dask(X_train, y_train, params, usecase.categorical, settings.dask_address)
        else:
            model, workers = fit(X_train, y_train, params, usecase.categorical), 1
        mlflow.log_param("train.workers", workers)
        score = model.predict_proba(X_eval)[:, 1]
        metrics = compute_metrics(y_eval, score, settings.operating_threshold)
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items()})
        train_score = model.predict_proba(X_train)[:, 1]
        mlflow.log_metrics(
            {f"train_{k}": v for k, v in compute_metrics(y_train, train_score, settings.operating_threshold).items()}
        )
        slices = slice_metrics(eval_slices, y_eval.to_numpy(), score, settings.operating_threshold)
        mlflow.log_dict(slices, "evaluation/slices.json")
        mlflow.log_metrics(
            {
                f"slice.{k.replace('=', '.')}.{m}": v
                for k, s in slices.items()
                for m, v in s.items()
                if m in ("roc_auc", "n") and v == v
            }
        )

        fig = _importance_figure(model)
        mlflow.log_figure(fig, "plots/feature_importance.png")
        import matplotlib.pyplot as plt

        plt.close(fig)

        from mlflow.models import infer_signature

        example = X_eval.head(5)
        info = mlflow.xgboost.log_model(
            model,
            name=MODEL_ARTIFACT,
            model_format="ubj",
            signature=infer_signature(example, model.predict_proba(example)[:, 1]),
            input_example=example,
            pip_requirements=[f"{p}=={installed_version(p)}" for p in RUNTIME_PACKAGES],
        )
    # Registered after the run is FINISHED: a crash in between leaves a finished run without a
    # version, which the rerun above registers, instead of a second run.
    mv = mlflow.register_model(
        info.model_uri,
        model_name,
        tags={
            **identity,
            "loop.data_window": window,
            "loop.git_commit": commit,
            "loop.partitions_sha256": digest,
            **request,
        },
    )
    client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    log.info(
        "run %s: eval %s; registered %s version %s as %s",
        run.info.run_id,
        json.dumps({k: round(v, 4) for k, v in metrics.items()}),
        model_name,
        mv.version,
        CHALLENGER,
    )
    return {"run_id": run.info.run_id, "model_name": model_name, "version": mv.version, "reused": False}
