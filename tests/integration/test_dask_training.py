"""Training on Dask (a scheduler and two worker processes on loopback): the model single-process
training gives, and the same run, lineage, registered version and gate."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from xgboost import XGBClassifier

from include.data.partitions import list_validated, read_validated
from include.data.storage import get_storage
from include.model.dataset import labelled, select_partitions
from include.model.engines import NoDaskCluster, fit, fit_on_dask
from include.model.gate import run_champion_gate
from include.model.metrics import compute_metrics
from include.model.params import TrainParams
from include.model.registry import CHALLENGER, connect, experiment_id
from include.model.training import train_candidate
from include.settings import get_settings

pytestmark = pytest.mark.integration
PARAMS = TrainParams(window_weeks=8, n_estimators=100, max_depth=6, learning_rate=0.1)


@pytest.fixture(scope="module")
def window(validated_weeks, flights):
    """The training and evaluation rows `train_candidate` would use on the validated weeks."""
    storage = get_storage(str(validated_weeks))
    train_recs, eval_recs = select_partitions(list_validated("flights", storage), 8, 1, 3)
    X, y, _ = labelled(flights, read_validated(train_recs, storage))
    X_eval, y_eval, _ = labelled(flights, read_validated(eval_recs, storage))
    return X, y, X_eval, y_eval


def _auc(y, score) -> float:
    return compute_metrics(y, score, 0.5)["roc_auc"]


def test_without_sampling_dask_and_single_process_train_the_same_model(window, dask_cluster, flights):
    X, y, X_eval, y_eval = window
    params = PARAMS.model_copy(update={"subsample": 1.0, "colsample_bytree": 1.0})
    single = fit(X, y, params, flights.categorical)
    dask, workers = fit_on_dask(X, y, params, flights.categorical, dask_cluster)

    assert workers == 2
    assert type(dask) is XGBClassifier  # what MLflow's xgboost flavour, the gate and the bento load
    assert dask.get_booster().feature_types == single.get_booster().feature_types
    assert dask.get_booster().feature_types.count("c") == len(flights.categorical)  # categories survived
    delta = np.abs(single.predict_proba(X_eval)[:, 1] - dask.predict_proba(X_eval)[:, 1])
    print(f"\n{len(X)} training rows, {len(X_eval)} evaluation rows, no sampling: |Δscore| max {delta.max():.2e}")
    assert delta.max() <= 1e-3


def test_with_sampling_dask_differs_from_single_process_no_more_than_another_seed(window, dask_cluster, flights):
    X, y, X_eval, y_eval = window
    single = fit(X, y, PARAMS, flights.categorical)
    reseeded = XGBClassifier(**{**single.get_params(), "random_state": 1}).fit(X, y)
    dask, _ = fit_on_dask(X, y, PARAMS, flights.categorical, dask_cluster)

    s_single, s_seed, s_dask = (m.predict_proba(X_eval)[:, 1] for m in (single, reseeded, dask))
    d_dask, d_seed = np.abs(s_dask - s_single).mean(), np.abs(s_seed - s_single).mean()
    auc_single, auc_dask = _auc(y_eval, s_single), _auc(y_eval, s_dask)
    print(
        f"\nROC AUC single {auc_single:.4f}, dask {auc_dask:.4f} (Δ {auc_dask - auc_single:+.4f}); "
        f"mean |Δscore| dask vs single {d_dask:.4f}, seed 1 vs seed 0 {d_seed:.4f}"
    )
    assert abs(auc_dask - auc_single) <= 0.01
    assert d_dask <= 1.5 * d_seed  # row and column sampling draw other rows on each worker: seed noise, no more


def test_a_run_asking_for_dask_trains_there_with_the_same_run_and_gate(env, dask_cluster, flights, monkeypatch):
    monkeypatch.setenv("LOOP_DASK_ADDRESS", dask_cluster)
    get_settings.cache_clear()
    settings = get_settings()
    out = train_candidate(
        flights, PARAMS.model_copy(update={"distributed": True}), settings, dag_id="train", dag_run_id="manual__dask"
    )

    client = connect(settings.mlflow_tracking_uri)
    run = client.get_run(out["run_id"])
    assert run.data.params["train.engine"] == "dask" and run.data.params["train.workers"] == "2"
    assert run.data.params["distributed"] == "True"
    assert 0.6 < run.data.metrics["eval_roc_auc"] < 0.95
    assert mlflow.artifacts.load_dict(f"runs:/{out['run_id']}/lineage/partitions.json")["eval"]
    mv = client.get_model_version(out["model_name"], out["version"])
    assert CHALLENGER in mv.aliases and mv.run_id == out["run_id"]
    assert type(mlflow.xgboost.load_model(f"models:/{out['model_name']}/{out['version']}")) is XGBClassifier
    decision = run_champion_gate(flights, settings, out["model_name"], out["version"])
    assert decision["promoted"], decision["reason"]


def test_asking_for_dask_without_a_cluster_fails_before_any_run(env, flights, monkeypatch):
    monkeypatch.delenv("LOOP_DASK_ADDRESS", raising=False)
    get_settings.cache_clear()
    with pytest.raises(NoDaskCluster, match="LOOP_DASK_ADDRESS"):
        train_candidate(
            flights, PARAMS.model_copy(update={"distributed": True}), get_settings(), dag_id="train", dag_run_id="manual__nodask"
        )
    client = connect(env.mlflow_tracking_uri)
    assert not client.search_runs([experiment_id(client, env.model_name)])
