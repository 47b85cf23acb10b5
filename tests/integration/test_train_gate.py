"""Training against a real MLflow server, the champion gate, idempotency and lineage."""

from __future__ import annotations

import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from include.data.partitions import list_validated
from include.local.stack import free_port
from include.model.gate import run_champion_gate
from include.model.params import TrainParams
from include.model.registry import CHALLENGER, CHAMPION, TrackingServerUnreachable, alias_version, connect, naming_the_server
from include.model.training import train_candidate
from include.monitoring.profile import load_profile, log_reference_profile
from include.settings import PROJECT_ROOT, get_settings

pytestmark = pytest.mark.integration
NY = ZoneInfo("America/New_York")
WEAK = TrainParams(window_weeks=8, n_estimators=5, max_depth=1, learning_rate=0.05)
STRONG = TrainParams(window_weeks=8, n_estimators=200, max_depth=6, learning_rate=0.1)


def test_training_logs_a_traceable_challenger(env, flights, tmp_path):
    out = train_candidate(flights, STRONG, env, dag_id="train", dag_run_id="manual__lineage")
    client = connect(env.mlflow_tracking_uri)
    mv = client.get_model_version(out["model_name"], out["version"])
    assert CHALLENGER in mv.aliases
    run = client.get_run(mv.run_id)
    # from MLflow alone: partitions with hashes and GX results, code commit, Airflow DAG run
    assert run.data.tags["airflow.dag_id"] == "train" and run.data.tags["airflow.dag_run_id"] == "manual__lineage"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip() and len(head.stdout.strip()) == 40
    assert run.data.params["train.engine"] == "single" and run.data.params["train.workers"] == "1"  # no LOOP_DASK_ADDRESS
    lineage = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/lineage/partitions.json")
    validated = {r["partition"]: r for r in list_validated("flights")}
    assert [r["partition"] for r in lineage["train"]] == list(validated)[:5]
    # the monitor's reference travels with the version: the train DAG's next task logs it, once
    uri = log_reference_profile(env.mlflow_tracking_uri, flights, out["model_name"], out["version"])
    assert uri == f"runs:/{mv.run_id}/reference/profile.json"
    assert log_reference_profile(env.mlflow_tracking_uri, flights, out["model_name"], out["version"]) == uri
    profile = load_profile(env.mlflow_tracking_uri, out["model_name"], out["version"])
    assert list(profile["features"]) == list(flights.features)
    # features: every training row (served traffic has cancelled flights too); scores: the held-out rows
    train_rows = sum(r["rows_validated"] for r in lineage["train"])
    assert profile["n"] == train_rows > int(run.data.params["n_train_rows"]) and 0.05 < profile["base_rate"] < 0.5
    assert profile["eval_rows"] == int(run.data.params["n_eval_rows"]) == sum(profile["score"]["counts"])
    assert sum(profile["features"]["temp"]["counts"]) == profile["n"]
    assert abs(sum(profile["shares"].values()) - 1) < 1e-9 and len(profile["daily_counts"]) >= 5 * 7
    assert [r["partition"] for r in lineage["eval"]] == list(validated)[5:]
    for r in lineage["train"] + lineage["eval"]:
        assert r["validated_sha256"] == validated[r["partition"]]["validated_sha256"]
        assert r["gx_result_uri"].endswith("gx_result.json")
    m = run.data.metrics
    for key in ("eval_roc_auc", "eval_log_loss", "eval_pr_auc", "eval_precision", "eval_recall"):
        assert key in m
    assert 0.6 < m["eval_roc_auc"] < 0.95
    assert any(k.startswith("slice.carrier.") for k in m) and any(k.startswith("slice.origin.") for k in m)
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"lineage", "evaluation", "plots"} <= artifacts
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{out['model_name']}/{out['version']}", dst_path=str(tmp_path)))
    model_files = {p.name for p in model_dir.rglob("*")}
    assert "model.ubj" in model_files, "the model must be XGBoost's native format"
    assert not any(p.endswith((".pkl", ".pickle")) for p in model_files)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"flights-train", "flights-eval"}


def test_rerunning_the_same_dag_run_creates_no_duplicate(env, flights):
    first = train_candidate(flights, WEAK, env, dag_id="train", dag_run_id="manual__rerun")
    again = train_candidate(flights, WEAK, env, dag_id="train", dag_run_id="manual__rerun")
    assert again == first | {"reused": True}
    client = connect(env.mlflow_tracking_uri)
    assert len(client.search_model_versions(f"name = '{first['model_name']}'")) == 1
    g1 = run_champion_gate(flights, env, first["model_name"], first["version"])
    g2 = run_champion_gate(flights, env, first["model_name"], first["version"])
    assert g1["promoted"] and g2["promoted"] and g2["reused"]


def test_a_better_challenger_is_promoted_and_a_worse_one_is_not(env, flights):
    client = connect(env.mlflow_tracking_uri)
    weak = train_candidate(flights, WEAK, env, dag_id="train", dag_run_id="r1")
    name = weak["model_name"]
    first = run_champion_gate(flights, env, name, weak["version"])
    assert first["promoted"] and "first model" in first["reason"]

    strong = train_candidate(flights, STRONG, env, dag_id="train", dag_run_id="r2")
    better = run_champion_gate(flights, env, name, strong["version"])
    assert better["promoted"], better["reason"]
    assert better["previous_champion"] == weak["version"]
    assert alias_version(client, name, CHAMPION).version == strong["version"]

    worse = train_candidate(flights, WEAK.__class__(**{**WEAK.__dict__, "n_estimators": 3}), env, dag_id="train", dag_run_id="r3")
    rejected = run_champion_gate(flights, env, name, worse["version"])
    assert not rejected["promoted"] and "margin" in rejected["reason"]
    assert alias_version(client, name, CHAMPION).version == strong["version"]
    mv = client.get_model_version(name, worse["version"])
    assert mv.tags["gate.decision"] == "reject" and mv.tags["gate.champion_version"] == strong["version"]
    assert float(mv.tags["gate.champion"]) > float(mv.tags["gate.challenger"])
    decision = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/gate/decision.json")
    assert decision["champion_version"] == strong["version"] and decision["promote"] is False


def test_unreachable_tracking_server_fails_with_its_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingServerUnreachable, match=rf"{url} is unreachable after 2 attempts"):
        connect(url, attempts=2, wait_seconds=0.1)


def test_a_server_that_stops_answering_is_named_and_other_mlflow_errors_pass_through(mlflow_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    get_settings.cache_clear()
    client = connect(mlflow_env.mlflow_tracking_uri)
    with pytest.raises(MlflowException) as err, naming_the_server(mlflow_env.mlflow_tracking_uri):
        client.get_registered_model("no-such-model")  # the server answered: not a connection problem
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused, retried once, then named
    named = rf"at {dead} stopped answering \(ConnectionError\) after 1 retries"
    with pytest.raises(TrackingServerUnreachable, match=named), naming_the_server(dead):
        mlflow.MlflowClient(dead).search_experiments()
