"""Training: a rolling window of validated partitions → XGBoost → an MLflow run and model version.

The split is by time: the newest `eval_partitions` partitions are the evaluation slice, the older
ones in the window are the training set. A rerun of the same Airflow DAG run finds its finished
MLflow run by tags and returns it instead of training again, so retries and cleared tasks never
create a second model version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from importlib.metadata import version as installed_version
from typing import TYPE_CHECKING

from include.config import PROJECT_ROOT, Settings
from include.data import list_validated, read_validated
from include.registry import CHALLENGER, connect, experiment_id, find_runs, version_of_run
from include.storage import Storage, get_storage
from include.usecases import UseCase

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
RUNTIME_PACKAGES = ("xgboost", "pandas", "numpy", "scikit-learn", "pyarrow")


class NotEnoughData(RuntimeError):
    """Fewer validated partitions than training needs; the run is skipped, not failed."""


@dataclass(frozen=True)
class TrainParams:
    """Per-run knobs; the DAG's `params` form validates them first, this checks them again."""

    window_weeks: int = 8
    eval_partitions: int = 1
    as_of: str | None = None
    n_estimators: int = 300
    max_depth: int = 6
    learning_rate: float = 0.1
    subsample: float = 0.9
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    reason: str = ""
    report_uri: str | None = None
    """The monitoring report behind a drift-triggered run (tagged on the MLflow run)."""

    def __post_init__(self):
        checks = {
            "window_weeks": 1 <= self.window_weeks <= 104,
            "eval_partitions": 1 <= self.eval_partitions <= 8,
            "n_estimators": 1 <= self.n_estimators <= 5000,
            "max_depth": 1 <= self.max_depth <= 16,
            "learning_rate": 0 < self.learning_rate <= 1,
            "subsample": 0 < self.subsample <= 1,
            "colsample_bytree": 0 < self.colsample_bytree <= 1,
            "min_child_weight": 0 <= self.min_child_weight <= 1000,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training parameters: {', '.join(bad)}")
        if self.as_of:
            date.fromisoformat(self.as_of)

    @classmethod
    def from_mapping(cls, values: dict) -> TrainParams:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def xgb_params(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("n_estimators", "max_depth", "learning_rate", "subsample", "colsample_bytree", "min_child_weight")
        }


def select_partitions(
    records: list[dict], window_weeks: int, eval_partitions: int, min_partitions: int, as_of: str | None = None
) -> tuple[list[dict], list[dict]]:
    """Split validated partitions into (train, eval) by time.

    The window ends with the newest partition starting on or before `as_of` (default: newest of
    all) and reaches back `window_weeks` from that partition's end.
    """
    recs = sorted(records, key=lambda r: r["interval_start"])
    if as_of:
        cutoff = datetime.fromisoformat(as_of).date()
        recs = [r for r in recs if datetime.fromisoformat(r["interval_start"]).date() <= cutoff]
    if recs:
        window_start = datetime.fromisoformat(recs[-1]["interval_end"]) - timedelta(weeks=window_weeks)
        recs = [r for r in recs if datetime.fromisoformat(r["interval_start"]) >= window_start]
    needed = max(min_partitions, eval_partitions + 1)
    if len(recs) < needed:
        raise NotEnoughData(
            f"{len(recs)} validated partition(s) in a {window_weeks}-week window"
            f"{f' up to {as_of}' if as_of else ''}; training needs at least {needed}"
        )
    return recs[:-eval_partitions], recs[-eval_partitions:]


def labelled(usecase: UseCase, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Features, labels and slice columns of the rows whose label is known."""
    y = usecase.build_target(df)
    known = y.notna()
    df = df.loc[known].reset_index(drop=True)
    return usecase.build_features(df), y[known].astype(int).reset_index(drop=True), df[list(usecase.slices)]


def fit(X: pd.DataFrame, y: pd.Series, params: TrainParams, categorical: tuple[str, ...] = ()):
    from xgboost import XGBClassifier

    model = XGBClassifier(
        tree_method="hist",
        enable_categorical=True,
        feature_types=["c" if c in categorical else "q" for c in X.columns],
        objective="binary:logistic",
        eval_metric="logloss",
        random_state=0,
        n_jobs=2,
        **params.xgb_params(),
    )
    return model.fit(X, y)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _lineage(records: list[dict]) -> list[dict]:
    keys = (
        "partition",
        "interval_start",
        "interval_end",
        "validated_key",
        "validated_uri",
        "validated_sha256",
        "landing_uri",
        "landing_sha256",
        "gx_result_uri",
        "rows_validated",
        "rows_quarantined",
    )
    return [{k: r.get(k) for k in keys} for r in records]


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

    from include.evaluate import compute_metrics, slice_metrics
    from include.monitor import PROFILE_ARTIFACT, build_profile

    commit = git_commit()
    lineage = {"train": _lineage(train_recs), "eval": _lineage(eval_recs)}
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
                **asdict(params),
                "tree_method": "hist",
                "n_train_partitions": len(train_recs),
                "n_train_rows": len(X_train),
                "n_eval_rows": len(X_eval),
                "n_unlabelled_dropped": len(train_df) + len(eval_df) - len(X_train) - len(X_eval),
            }
        )
        mlflow.log_dict(lineage, "lineage/partitions.json")
        # The exact partitions and hashes are in lineage/partitions.json; the datasets give
        # MLflow's UI the schema, row counts and a digest of each split.
        zone = storage.uri(f"validated/{usecase.name}")
        for split, frame in (("train", train_df), ("eval", eval_df)):
            dataset = mlflow.data.from_pandas(frame.drop(columns="_partition"), source=zone, name=f"{usecase.name}-{split}")
            mlflow.log_input(dataset, context="training" if split == "train" else "evaluation")

        model = fit(X_train, y_train, params, usecase.categorical)
        score = model.predict_proba(X_eval)[:, 1]
        metrics = compute_metrics(y_eval, score, settings.operating_threshold)
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items()})
        train_score = model.predict_proba(X_train)[:, 1]
        mlflow.log_metrics(
            {f"train_{k}": v for k, v in compute_metrics(y_train, train_score, settings.operating_threshold).items()}
        )
        # The monitor's reference: everything it needs to judge drift against this model.
        mlflow.log_dict(build_profile(X_train, train_score, y_train.to_numpy(), usecase.categorical), PROFILE_ARTIFACT)
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
