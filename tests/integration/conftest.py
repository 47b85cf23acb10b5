"""Real services for the integration tests: an MLflow tracking server on a free loopback port."""

from __future__ import annotations

import pytest

from include.config import get_settings
from include.stack import Stack, free_port, start_mlflow


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite + local artifacts) for the whole session; yields its URL."""
    state = tmp_path_factory.mktemp("mlflow")
    stack = Stack(state)
    port = free_port()
    start_mlflow(stack, port, state / "store")
    yield f"http://127.0.0.1:{port}"
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
