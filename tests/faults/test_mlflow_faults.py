"""MLflow faults against a real tracking server this module stops, pauses and restarts (same port,
same SQLite store and artifacts, as a restarted service would be).

Each test cuts training or the champion gate at one point, right before a given MLflow call:
the call fails with TrackingServerUnreachable naming the server's URL within the retry budget the
settings give MLflow; nothing half-done is left that a later step could take for a finished
candidate; and once the server is back, the task's retry (the same call, same DAG run id)
completes with exactly one model version. Numbers (time to fail, versions) are printed
(`-s`, or the report).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time

import pytest
from mlflow import MlflowClient

from include.local.stack import free_port, start_mlflow
from include.model.gate import run_champion_gate
from include.model.params import TrainParams
from include.model.registry import CHALLENGER, CHAMPION, TrackingServerUnreachable, alias_version, connect
from include.model.training import train_candidate
from include.rollout.processes import Stack
from include.settings import get_settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]
WEAK = TrainParams(window_weeks=8, n_estimators=5, max_depth=1, learning_rate=0.05)
LINEAGE_TAGS = ("airflow.dag_run_id", "loop.data_window", "loop.partitions_sha256", "loop.git_commit", "loop.reason")
GATE_TAGS = ("gate.decision", "gate.reason", "gate.metric", "gate.challenger", "gate.champion", "gate.champion_version")


class Server:
    """An MLflow server on a fixed port and store that a test can stop, restart, pause and resume."""

    def __init__(self, state):
        self.stack, self.store, self.port = Stack(state), state / "store", free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        began = time.monotonic()
        start_mlflow(self.stack, self.port, self.store)
        return time.monotonic() - began

    def stop(self) -> None:
        assert self.stack.stop_one("mlflow"), "the MLflow server was not running"

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.stack.running()["mlflow"], sig)  # the server and its workers: one session

    def ensure_up(self) -> None:
        if "mlflow" in self.stack.running():
            self.signal(signal.SIGCONT)
        else:
            self.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-faults"))
    srv.start()
    yield srv
    srv.ensure_up()  # a paused server would not act on SIGTERM
    srv.stack.stop()
    assert not srv.stack.running()


@pytest.fixture
def configure(server, validated_weeks, monkeypatch, request, tmp_path):
    """`configure(**variables)`: settings pointing at the module's server (running, not paused),
    with a model name unique to the test, plus `variables`; MLflow's retry settings are the
    defaults unless given."""
    server.ensure_up()

    def settings(**variables):
        for key, value in {
            "MLFLOW_TRACKING_URI": server.url,
            "LOOP_STORAGE_URI": str(validated_weeks),
            "LOOP_STATE_DIR": str(tmp_path / "state"),
            "LOOP_MODEL_NAME": "mf-" + re.sub(r"[^\w-]", "-", request.node.name.removeprefix("test_")),
            **variables,
        }.items():
            monkeypatch.setenv(key, str(value))
        get_settings.cache_clear()
        return get_settings()

    yield settings
    get_settings.cache_clear()
    server.ensure_up()


def backoff(settings) -> tuple[float, float]:
    """(least, most) seconds urllib3 sleeps between the retries of one MLflow call: 0, 2·factor,
    4·factor …, each plus up to 1 s of jitter."""
    retries, factor = settings.mlflow_http_max_retries, settings.mlflow_http_backoff_factor
    least = sum(factor * 2**i for i in range(1, retries))
    return least, least + retries


def retry_budget(settings) -> float:
    """The longest one MLflow call may take against a server that hangs: every try times out."""
    return (settings.mlflow_http_max_retries + 1) * settings.mlflow_http_timeout_seconds + backoff(settings)[1]


def cut_before(monkeypatch, method: str, fault, after: int = 0) -> list[float]:
    """Inject `fault()` once, right before the (`after` + 1)-th call of `MlflowClient.<method>`
    (the fluent API and `register_model` go through it too); returns the list the fault's time
    goes to. Other calls pass through."""
    real, calls, when = getattr(MlflowClient, method), [], []

    def cut(self, *args, **kwargs):
        calls.append(method)
        if len(calls) == after + 1:
            fault()
            when.append(time.monotonic())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, method, cut)
    return when


def snapshot(settings) -> dict:
    """What the registry and the tracking server hold for the test's model."""
    client = connect(settings.mlflow_tracking_uri)
    name = settings.model_name
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    versions = client.search_model_versions(f"name = '{name}'")
    return {
        "runs": sorted(r.info.status for r in runs),
        "versions": sorted(v.version for v in versions),
        "challenger": getattr(alias_version(client, name, CHALLENGER), "version", None),
        "champion": getattr(alias_version(client, name, CHAMPION), "version", None),
        "tags": {v.version: v.tags for v in versions},
    }


def fails_naming_the_server(call, settings, started: list[float]) -> float:
    """Run `call`, expecting TrackingServerUnreachable naming the URL; seconds from the fault."""
    with pytest.raises(
        TrackingServerUnreachable, match=rf"MLflow tracking server at {settings.mlflow_tracking_uri} stopped answering"
    ):
        call()
    assert started, "the fault was never injected: the cut point was not reached"
    return time.monotonic() - started[0]


@pytest.mark.parametrize(
    ("cut", "left_behind"),
    [
        # after the run started and the model was fitted, before it is logged
        ("log_param", {"runs": ["RUNNING"], "versions": [], "challenger": None}),
        # the run is FINISHED, nothing registered yet
        ("create_registered_model", {"runs": ["FINISHED"], "versions": [], "challenger": None}),
        # the version exists (created with its lineage tags), no alias points at it yet
        ("set_registered_model_alias", {"runs": ["FINISHED"], "versions": ["1"], "challenger": None}),
    ],
    ids=["mid-run", "before-registration", "before-alias"],
)
def test_server_dying_during_training_fails_naming_it_and_the_retry_registers_one_version(
    configure, server, flights, monkeypatch, cut, left_behind
):
    settings = configure()  # MLflow's retry settings: the defaults
    fault = cut_before(monkeypatch, cut, server.stop)
    train = lambda: train_candidate(flights, WEAK, settings, dag_id="train", dag_run_id="manual__mlflow_down")  # noqa: E731
    took = fails_naming_the_server(train, settings, fault)
    # Refused connections: the failing call backs off between its retries, then fails; the run's
    # end (marking it FAILED) may spend one more round. A hang adds the timeouts: < 2 min too.
    least, most = backoff(settings)
    assert least <= took < 2 * most + 10, f"failed after {took:.1f}s"
    assert 2 * retry_budget(settings) < 120
    restart = server.start()

    before = snapshot(settings)
    assert {k: before[k] for k in left_behind} == left_behind
    for tags in before["tags"].values():  # a version that exists is never without its lineage
        assert all(tags.get(k) for k in LINEAGE_TAGS), tags

    out = train()
    after = snapshot(settings)
    assert after["versions"] == ["1"] and out["version"] == "1" and after["challenger"] == "1"
    assert out["reused"] == (cut != "log_param")
    assert after["runs"].count("FINISHED") == 1 and set(after["runs"]) <= {"FINISHED", "FAILED"}
    lineage = {k: after["tags"]["1"].get(k) for k in LINEAGE_TAGS}
    assert all(lineage.values()) and lineage["airflow.dag_run_id"] == "manual__mlflow_down", lineage
    assert train() == out | {"reused": True} and snapshot(settings)["versions"] == ["1"]
    print(
        f"\n[training cut before {cut}] failed naming {server.url} after {took:.1f}s "
        f"(budget {retry_budget(settings):.0f}s per call); left runs {before['runs']}, versions {before['versions']}; "
        f"restart {restart:.1f}s; retry: versions {after['versions']}, runs {after['runs']}, reused {out['reused']}"
    )


def test_hung_server_fails_training_within_the_timeouts_and_the_retry_completes(configure, server, flights, monkeypatch):
    settings = configure(MLFLOW_HTTP_REQUEST_TIMEOUT=2, MLFLOW_HTTP_REQUEST_MAX_RETRIES=1, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1)
    fault = cut_before(monkeypatch, "log_param", lambda: server.signal(signal.SIGSTOP))
    train = lambda: train_candidate(flights, WEAK, settings, dag_id="train", dag_run_id="manual__mlflow_hung")  # noqa: E731
    took = fails_naming_the_server(train, settings, fault)
    tries = settings.mlflow_http_max_retries + 1
    assert tries * settings.mlflow_http_timeout_seconds <= took < 2 * retry_budget(settings) + 5, f"failed after {took:.1f}s"
    server.signal(signal.SIGCONT)  # it answers again, and works off what it queued meanwhile

    out = train()
    after = snapshot(settings)
    assert out["reused"] is False and after["versions"] == ["1"] and after["challenger"] == "1"
    assert after["runs"].count("FINISHED") == 1
    print(
        f"\n[training, server paused] failed naming {server.url} after {took:.1f}s (budget {retry_budget(settings)}s per call); retry: versions {after['versions']}, runs {after['runs']}"
    )


def test_a_short_outage_is_ridden_out_by_mlflows_retries(configure, server, flights, monkeypatch):
    settings = configure(MLFLOW_HTTP_REQUEST_TIMEOUT=2, MLFLOW_HTTP_REQUEST_MAX_RETRIES=3, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1)
    retried = threading.Event()

    class RetryWatch(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Retrying"):
                retried.set()

    watch = RetryWatch(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").addHandler(watch)

    def resume_after_a_retry():
        retried.wait(60)
        server.signal(signal.SIGCONT)

    def pause():
        server.signal(signal.SIGSTOP)
        threading.Thread(target=resume_after_a_retry, daemon=True).start()

    fault = cut_before(monkeypatch, "log_param", pause)
    try:
        out = train_candidate(flights, WEAK, settings, dag_id="train", dag_run_id="manual__mlflow_blip")
    finally:
        logging.getLogger("urllib3.connectionpool").removeHandler(watch)
    took = time.monotonic() - fault[0]
    assert retried.is_set(), "the outage was ridden out without a retry: it never happened"
    after = snapshot(settings)
    assert out["reused"] is False and after["versions"] == ["1"] and after["runs"] == ["FINISHED"]
    print(
        f"\n[training, server paused until MLflow's first retry] succeeded {took:.1f}s after the pause; versions {after['versions']}, runs {after['runs']}"
    )


@pytest.mark.parametrize(
    ("cut", "after"),
    [
        ("log_dict", 0),  # decided, nothing recorded yet
        ("set_model_version_tag", 2),  # part of the version's gate tags written
    ],
    ids=["before-recording", "amid-version-tags"],
)
def test_server_dying_during_the_gate_leaves_no_decision_and_the_retry_decides(
    configure, server, flights, monkeypatch, cut, after
):
    settings = configure()
    trained = train_candidate(flights, WEAK, settings, dag_id="train", dag_run_id="manual__gate_down")
    gate = lambda: run_champion_gate(flights, settings, trained["model_name"], trained["version"])  # noqa: E731
    fault = cut_before(monkeypatch, cut, server.stop, after=after)
    took = fails_naming_the_server(gate, settings, fault)
    least, most = backoff(settings)
    assert least <= took < most + 10, f"failed after {took:.1f}s"
    server.start()

    before = snapshot(settings)
    assert "gate.decision" not in before["tags"]["1"], "a gate cut short must leave no decision to reuse"
    assert before["champion"] is None
    decided = gate()
    final = snapshot(settings)
    assert decided["promoted"] and not decided["reused"] and "first model" in decided["reason"]
    assert final["champion"] == "1" and final["versions"] == ["1"]
    assert all(k in final["tags"]["1"] for k in GATE_TAGS) and final["tags"]["1"]["gate.applied"] == "true"
    assert gate()["reused"]
    written = sorted(k for k in before["tags"]["1"] if k.startswith("gate."))
    print(
        f"\n[gate cut before {cut} #{after + 1}] failed naming {server.url} after {took:.1f}s; gate tags left {written}; retry: promoted, champion v{final['champion']}"
    )
