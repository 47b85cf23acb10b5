"""Test settings: every test runs against its own state directory, never the demo's `.state/`.

Airflow reads its configuration when first imported, so its environment is set here, before any
test module imports it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_STATE = Path(tempfile.mkdtemp(prefix="loop-tests-"))

os.environ.update(
    {
        "LOOP_STATE_DIR": str(_STATE),
        "LOOP_STORAGE_URI": str(_STATE / "data"),
        "AIRFLOW_HOME": str(_STATE / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080",  # the links in alerts
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_STATE / 'airflow' / 'airflow.db'}",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
)
os.environ.pop("MLFLOW_TRACKING_URI", None)
(_STATE / "airflow").mkdir(parents=True, exist_ok=True)


@pytest.fixture
def storage_root(tmp_path, monkeypatch):
    """A fresh local storage root for one test."""
    from include.settings import get_settings

    monkeypatch.setenv("LOOP_STORAGE_URI", str(tmp_path / "zones"))
    get_settings.cache_clear()
    yield tmp_path / "zones"
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def flights():
    from include.usecases import get_usecase

    return get_usecase("flights")
