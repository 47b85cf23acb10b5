"""Real services for the integration tests: a Dask cluster, moto's S3 on free loopback ports (the MLflow
server and the validated weeks are shared with the faults layer: `tests/conftest.py`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from include.data.storage import get_storage
from include.local.stack import free_port, start_dask
from include.rollout.processes import Stack, wait_http
from include.settings import get_settings


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A Dask scheduler and two worker processes (one thread each) for one module; yields its address."""
    stack = Stack(tmp_path_factory.mktemp("dask"))
    try:
        yield start_dask(stack, workers=2)
    finally:
        stack.stop()
    assert not stack.running()


@pytest.fixture
def mlflow_env(mlflow_server, monkeypatch, request):
    """Point settings at the session's MLflow server, with a model name unique to the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("LOOP_MODEL_NAME", f"it-{request.node.name[:40]}".replace("[", "-").replace("]", ""))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def env(validated_weeks, mlflow_env, monkeypatch):
    """Settings for one training test: the module's validated weeks and the session's MLflow server
    (a module may define its own `env`)."""
    monkeypatch.setenv("LOOP_STORAGE_URI", str(validated_weeks))
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API on loopback: moto's server."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url, 30, proc)  # fails naming the URL if moto never answers, at once if it exits
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """Settings pointing the storage layer at bucket `loop-test` of the moto server."""
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LOOP_S3_ENDPOINT_URL": s3_endpoint,
        "LOOP_STORAGE_URI": "s3://loop-test/zones",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    if "loop-test" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="loop-test")
    yield get_storage()
    get_settings.cache_clear()
