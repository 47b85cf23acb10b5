"""Test settings: every test runs against its own state directory, never the demo's `.state/`.

Airflow reads its configuration when first imported, so its environment is set here, before any
test module imports it.
"""

from __future__ import annotations

import os
import shutil
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
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",  # as the runtimes set it: nothing in the loop unpickles
        "GIT_PYTHON_REFRESH": "quiet",
    }
)
os.environ.pop("MLFLOW_TRACKING_URI", None)
(_STATE / "airflow").mkdir(parents=True, exist_ok=True)


def _own_port_slice() -> None:
    """Under pytest-xdist, each worker draws loopback ports from a slice of its own."""
    from include.local import stack

    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker:
        size = len(stack.FREE_PORTS) // count
        start = stack.FREE_PORTS.start + int(worker.removeprefix("gw")) * size
        stack.FREE_PORTS = range(start, start + size)


_own_port_slice()


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


@pytest.fixture(scope="session")
def start_moto():
    """Starts moto's S3 server on a free loopback port: `start_moto()` returns (process, URL). A test
    may stop or pause its own server; every server started is ended with the session."""
    import signal
    import subprocess
    import sys

    from include.local.stack import free_port
    from include.rollout.processes import wait_http

    started = []

    def start():
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(url, 30, proc)  # fails naming the URL if moto never answers, at once if it exits
        return proc, url

    yield start
    for proc in started:
        proc.send_signal(signal.SIGCONT)  # a paused server would not act on SIGTERM
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def s3_endpoint(start_moto):
    """A real S3 API on loopback, shared by the session: moto's server."""
    return start_moto()[1]


@pytest.fixture
def use_s3(monkeypatch):
    """`use_s3(endpoint)` points the storage layer at bucket `loop-test` of that S3 endpoint
    (creating the bucket) and returns the storage."""
    from include.data.storage import get_storage
    from include.settings import get_settings

    def use(endpoint: str):
        import boto3

        for key, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LOOP_S3_ENDPOINT_URL": endpoint,
            "LOOP_STORAGE_URI": "s3://loop-test/zones",
        }.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        client = boto3.client("s3", endpoint_url=endpoint)
        if "loop-test" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
            client.create_bucket(Bucket="loop-test")
        return get_storage()

    yield use
    get_settings.cache_clear()


@pytest.fixture
def s3(s3_endpoint, use_s3):
    """The storage layer on bucket `loop-test` of the session's moto server."""
    return use_s3(s3_endpoint)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """Where the session's MLflow server keeps its SQLite database and, under `artifacts/`, the
    artifacts (`mlflow-artifacts:/<path>` is `artifacts/<path>`)."""
    return tmp_path_factory.mktemp("mlflow") / "store"


@pytest.fixture(scope="session")
def mlflow_server(mlflow_store):
    """A real `mlflow server` (SQLite + local artifacts) for the whole session; yields its URL."""
    from include.local.stack import free_port, start_mlflow
    from include.rollout.processes import Stack

    stack = Stack(mlflow_store.parent)
    port = free_port()
    start_mlflow(stack, port, mlflow_store)
    yield f"http://127.0.0.1:{port}"
    stack.stop()
    assert not stack.running()


def _build_validated_weeks(root: Path, flights) -> None:
    """Land and validate (GX) six weeks of May–June 2013 under storage root `root`."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from include.data.gate import validate_partition
    from include.data.partitions import Partition, land_partition
    from include.settings import get_settings

    ny = ZoneInfo("America/New_York")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOP_STORAGE_URI", str(root))
        get_settings.cache_clear()
        for i in range(6):
            start = datetime(2013, 5, 7, tzinfo=ny) + timedelta(weeks=i)
            p = Partition("flights", start, start + timedelta(weeks=1))
            land_partition(flights, p, replay=True)
            validate_partition(flights, p, max_bad_row_share=0.01)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def validated_store(tmp_path_factory, flights):
    """The six validated weeks, landed and validated with GX once per test run: the first xdist
    worker that needs them builds them under a lock in the run's shared temporary directory, the
    others wait and read the same store. Nobody writes to it: modules get copies."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: gw0/, gw1/ … share their parent
    store, done = shared / "validated-weeks", shared / "validated-weeks.done"
    with open(shared / "validated-weeks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(store, ignore_errors=True)  # a build interrupted before `done`
            _build_validated_weeks(store, flights)
            done.touch()
    return store


@pytest.fixture(scope="module")
def validated_weeks(tmp_path_factory, validated_store):
    """Six validated weeks of May–June 2013 in a storage root shared by one module's tests: a copy
    of the run's validated store, so what one module lands or quarantines no other module sees."""
    root = tmp_path_factory.mktemp("zones")
    shutil.copytree(validated_store, root, dirs_exist_ok=True)
    return root


# Under pytest-xdist (`make test`: --dist loadscope --no-loadscope-reorder), each module's tests run on
# one worker, so a module that starts services starts them once, and the modules are handed out in
# the order below: the longest first (each module's wall time, set-up and teardown included, in a
# three-worker run on two cores, 2026-12-07), so the production and e2e stacks do not start last
# and become the tail of the run; then by layer. (xdist's loadgroup would spread unit tests finer,
# but its groups do not reach pytest 9: it renames `item._nodeid`, which pytest 9 no longer reads.)
_LONGEST = (
    "production/test_production.py",  # 677 s; first of the two, its set-up starts more services
    "e2e/test_loop.py",  # 689 s
    "integration/test_rollout.py",  # 502 s
    "faults/test_mlflow_faults.py",  # 233 s
    "integration/test_data_gate.py",  # 221 s
    "integration/test_dag_runs.py",  # 138 s
    "faults/test_serving_faults.py",  # 137 s
    "integration/test_broken_challengers.py",  # 90 s run alone (added 2026-12-07)
    "integration/test_dask_training.py",  # 64 s
    "integration/test_serving_input.py",  # 58 s
    "integration/test_monitor_window.py",  # 50 s
)
_LAYERS = ("production", "e2e", "faults", "integration", "model", "dags", "unit")


def pytest_collection_modifyitems(config, items):
    def order(item) -> tuple[int, int]:
        path = Path(item.fspath).relative_to(ROOT / "tests")
        first = _LONGEST.index(path.as_posix()) if path.as_posix() in _LONGEST else len(_LONGEST)
        return first, _LAYERS.index(path.parts[0]) if path.parts[0] in _LAYERS else len(_LAYERS)

    items.sort(key=order)  # stable: the order within a module is kept
