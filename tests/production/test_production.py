"""The production configuration, run for real: docker-compose.yaml's services as local processes
(PostgreSQL, Redis, an S3 API, MLflow with authentication on PostgreSQL + S3, Airflow with the
CeleryExecutor and the FAB auth manager, two Celery workers and the `serving` worker, Traefik,
Dask), the same DAG files as the embedded runtime, five weekly intervals with one planted bad
batch. The results are checked where production keeps them."""

from __future__ import annotations

import boto3
import pytest
import requests

from include.local.demo import DAG_IDS, count_intervals, plant_faults, unpause_when_parsed, wait_until_idle
from include.model.registry import CHAMPION, LIVE, alias_version, connect
from include.rollout.infra import golden_records
from include.rollout.records import read_live
from include.settings import get_settings
from include.usecases import get_calendar, get_usecase, registered_model_name
from tests.production.native import NativeProduction, psql, wait_for

# The set-up replays five weeks through the whole stack: beside the other test processes of `make test`
# it can take longer than the suite's 900 s per test.
pytestmark = [pytest.mark.production, pytest.mark.slow, pytest.mark.timeout(1800)]

BAD_INTERVAL = 2  # 2013-06-18: a renamed column, quarantined


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    native = NativeProduction(
        tmp_path_factory.mktemp("production"),
        overrides={
            "LOOP_START_DATE": "2013-06-04",
            "LOOP_END_DATE": "2013-07-02",
            "LOOP_CANARY_BAKE_SECONDS": "3",
            "LOOP_INFERENCE_LOG_FLUSH_SECONDS": "5",  # compose's minute, shortened: a test waits for the parts
            # compose's 120 s, shortened so the worker-loss test waits less for the retry: on one
            # quiet host the tasks' supervisors heartbeat every few seconds
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "45",
        },
    )
    try:
        client = native.start()
        with native.as_current():
            plant_faults(get_usecase(), {BAD_INTERVAL: "renamed_column"})
            unpause_when_parsed(client, DAG_IDS, native.stack.log_dir / "airflow-dag-processor.log")
            finished = wait_until_idle(client, count_intervals(get_calendar()), timeout=900, poll=5)
            yield native, client, finished
    finally:
        stopped = native.stop()
        assert {"airflow-scheduler", "airflow-worker-1", "airflow-worker-2", "serving-host", "mlflow"} - native.killed <= set(
            stopped
        )
        assert not native.stack.running()
        assert not psql(f"SELECT 1 FROM pg_database WHERE datname LIKE '{native.run}%'"), "the run's databases were dropped"


def test_every_interval_ran_on_celery_and_is_recorded_in_postgresql(prod):
    native, client, finished = prod
    assert finished, f"the loop did not finish; logs in {native.stack.log_dir}"
    rows = psql(
        "SELECT state, to_char(data_interval_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM dag_run "
        "WHERE dag_id = 'ingest_validate' ORDER BY data_interval_start",
        native.dsn("airflow"),
    )
    assert len(rows) == 5
    assert [day for state, day in rows if state == "failed"] == ["2013-06-18"]
    assert {state for state, day in rows if day != "2013-06-18"} == {"success"}
    executors = psql("SELECT DISTINCT queue, executor FROM task_instance WHERE state = 'success'", native.dsn("airflow"))
    assert {q for q, _ in executors} == {"default", "serving"}, executors
    hosts = psql("SELECT DISTINCT queue, hostname FROM task_instance WHERE state = 'success'", native.dsn("airflow"))
    assert hosts, "task instances carry the hostname of the worker that ran them"


def test_data_lives_in_the_bucket(prod):
    native, _, _ = prod
    with native.as_current():
        s3 = boto3.client("s3", endpoint_url=get_settings().s3_endpoint_url)
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket="loop-data")
            for o in page.get("Contents", [])
        ]
    zones = {k.split("/")[1] for k in keys}
    assert {"landing", "validated", "quarantine"} <= zones, zones
    assert sum("/validated/" in k and k.endswith(".parquet") for k in keys) == 4
    assert any("/quarantine/" in k and "2013-06-18" in k for k in keys)
    assert not (native.state / "airflow" / "data").exists(), "nothing was written to a local data zone"


def test_the_model_registry_and_artifacts(prod):
    native, _, _ = prod
    with native.as_current():
        settings = get_settings()
        assert requests.get(f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/experiments/search", timeout=10).status_code == 401
        mlc = connect(settings.mlflow_tracking_uri)
        champion = alias_version(mlc, registered_model_name(settings), CHAMPION)
        assert champion is not None and champion.tags["gate.decision"] == "promote"
        live = alias_version(mlc, champion.name, LIVE)
        assert live is not None and live.version == champion.version
        source = mlc.get_run(champion.run_id).info.artifact_uri
        s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
        objects = s3.list_objects_v2(Bucket="loop-mlflow").get("KeyCount", 0)
    assert source.startswith("mlflow-artifacts:") or source.startswith("s3://loop-mlflow/"), source
    assert objects > 0, "the model's artifacts are in the MLflow bucket"


def test_the_model_health_view_behind_the_fab_login_reads_mlflow_with_its_credentials_and_the_bucket(prod):
    """The view on the compose stack: the FAB auth manager's login in front of it, MLflow (behind
    basic auth) and the data zones in S3 behind it, as the API server's own environment reaches them."""
    from include.data.partitions import quarantined_batches

    native, client, _ = prod
    for path in ("model-health/", "model-health/api"):
        assert requests.get(f"{client.base}/{path}", timeout=10).status_code in (401, 403)
    client.get("plugins")  # signs the session in (the API token)
    r = client.session.get(f"{client.base}/model-health/api", timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    with native.as_current():
        settings = get_settings()
        model_name = registered_model_name(settings)
        mlc = connect(settings.mlflow_tracking_uri)
        live, champion = alias_version(mlc, model_name, LIVE), alias_version(mlc, model_name, CHAMPION)
        registered = sorted((v.version for v in mlc.search_model_versions(f"name = '{model_name}'")), key=int, reverse=True)
        quarantined = [q["partition"] for q in quarantined_batches(get_usecase().name)]
    assert doc["model_name"] == model_name
    assert (doc["serving"]["version"], doc["serving"]["champion"]) == (live.version, champion.version)
    assert [v["version"] for v in doc["versions"]] == registered
    assert [q["partition"] for q in doc["quarantined"]] == quarantined and len(quarantined) == 1
    assert all(q["data_docs_uri"].startswith("s3://") for q in doc["quarantined"]), doc["quarantined"]
    docs = client.session.get(f"{client.base}/model-health/data-docs/{quarantined[0]}", timeout=30)
    assert docs.status_code == 200 and "Unsuccessful Expectations" in docs.text, docs.text[:300]
    page = client.session.get(f"{client.base}/model-health/", timeout=30)
    assert page.status_code == 200 and f"Serving <b>v{live.version}</b>" in page.text


def test_the_served_version_answers_through_traefik_and_logs_to_the_bucket(prod):
    native, client, _ = prod
    with native.as_current():
        settings, usecase = get_settings(), get_usecase()
        live = read_live(settings, registered_model_name(settings, usecase))
        assert live is not None
        records = golden_records(settings, usecase, 20)
        for record in records:
            r = requests.post(f"http://127.0.0.1:{settings.serving_port}/predict", json=record, timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == live["model_version"]
        s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)

        def logged():
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="loop-data", Prefix="zones/inference").get("Contents", [])]
            return keys

        assert wait_for(logged, 120, "inference-log parts in the bucket")
    runs = client.runs("monitor")
    assert runs and all(r["state"] == "success" for r in runs), [(r["dag_run_id"], r["state"]) for r in runs]


def test_a_restarted_serving_host_brings_the_live_version_back_from_the_registry(prod):
    """The serving host's container restarts: its worker and the slots it ran are gone; its start
    command reads the registry's live record and serves that version again."""
    from include.rollout.slots import Serving

    native, _, _ = prod
    with native.as_current("serving-host"):
        settings = get_settings()
        live = read_live(settings, registered_model_name(settings))
        [record] = golden_records(settings, get_usecase(), 1)
        entry = f"http://127.0.0.1:{settings.serving_port}/predict"
        native.kill("serving-host")
        assert Serving(settings).stack.stop(), "the live slot was running on the serving host"
        assert requests.post(entry, json=record, timeout=10).status_code >= 500, "nothing serves while the host is down"
        native.start_serving_host()

        def served():
            try:
                r = requests.post(entry, json=record, timeout=10)
            except requests.RequestException:
                return None
            return r.json()["model_version"] if r.status_code == 200 else None

        assert wait_for(served, 300, "the entry to answer again after the serving host restarted") == live["model_version"]
        assert Serving(settings).slot_running(live["slot"])
    # the entry can answer a moment before the host logs that it resumed (it logs once `resume` returns)
    resumed = f"resumed: {live['model_name']} v{live['model_version']} in slot {live['slot']}"
    wait_for(
        lambda: resumed in (native.stack.log_dir / "serving-host.log").read_text(), 60, "the serving host to log what it resumed"
    )


def test_losing_a_worker_mid_training_retries_on_the_other_and_registers_one_version(prod):
    native, client, _ = prod
    with native.as_current():
        settings = get_settings()
        model_name = registered_model_name(settings)
        r = client.trigger("train", {"reason": "production test: worker loss", "n_estimators": 400, "force": True})
        assert r.status_code == 200, r.text
        run_id = r.json()["dag_run_id"]
        path = f"dags/train/dagRuns/{run_id}/taskInstances/train_challenger"

        def running():
            ti = client.get(path)
            return ti if ti["state"] == "running" else None

        ti = wait_for(running, 300, "train_challenger to run on a worker", poll=0.5)
        victim = native.worker_running(ti["id"])
        assert victim, f"no worker runs task instance {ti['id']}"
        native.kill(victim)
        survivor = {f"airflow-worker-{i}" for i in (1, 2)} - {victim}

        def finished():
            run = client.get(f"dags/train/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None

        run = wait_for(finished, 900, "the train run to finish after the worker loss", poll=5)
        assert run["state"] == "success", run
        ti = client.get(path)
        assert ti["try_number"] >= 2, ti
        mlc = connect(settings.mlflow_tracking_uri)
        mine = [v for v in mlc.search_model_versions(f"name = '{model_name}'") if v.tags.get("airflow.dag_run_id") == run_id]
        # one challenger, and at most its one refit (if the gate accepted it)
        versions = [v for v in mine if "loop.refit_of" not in v.tags]
        refits = [v for v in mine if "loop.refit_of" in v.tags]
        assert len(versions) == 1 and len(refits) <= 1, [(v.version, v.tags) for v in mine]
        assert all(v.tags["loop.refit_of"] == versions[0].version for v in refits), [(v.version, v.tags) for v in mine]
        # no orphan alias: every alias the model has names a registered version of it, and the
        # challenger is the one version this run registered (not the killed try's)
        registered = {v.version for v in mlc.search_model_versions(f"name = '{model_name}'")}
        aliases = mlc.get_registered_model(model_name).aliases
        assert set(aliases) <= {"challenger", "champion", "live"} and set(aliases.values()) <= registered, aliases
        assert aliases["challenger"] == versions[0].version, aliases
        assert survivor <= set(native.stack.running())
    print(f"\nworker loss: killed {victim} during try 1; try {ti['try_number']} finished; one version: v{versions[0].version}")
