"""Real services for the integration tests: a Dask cluster on free loopback ports (the MLflow server,
moto's S3 and the validated weeks are shared with the faults layer: `tests/conftest.py`)."""

from __future__ import annotations

import pytest

from include.local.stack import start_dask
from include.rollout.processes import Stack
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
