"""Serving and rollout against real processes on loopback: an MLflow server, bentos built from its
registry, `bentoml serve` slots and the real Traefik binary.

The tests share one serving runtime, like the life of a deployment: first rollout, a blue/green
switch under load, bad candidates that must never get traffic, a rollback during the bake, a slot
that dies, a manual rollback. Each first puts the runtime in the state it starts from
(`ensure_live`, `nothing_served`), so any one of them runs alone and in any order. Numbers each test
measures (failed requests, detection delay) are printed in the test output (`-s` or the report).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.data.partitions import list_validated, read_validated
from include.local.stack import free_port
from include.local.traffic import replay
from include.model.packaging import build_bento
from include.model.params import TrainParams
from include.model.registry import CHAMPION, LIVE, alias_version, connect
from include.model.training import train_candidate
from include.rollout.canary import CanaryRolledBack, bentoml_counters, canary
from include.rollout.infra import golden_records, infra_validate
from include.rollout.processes import descendants, kill_tree
from include.rollout.records import clear_live, read_live
from include.rollout.rollout import plan, restore_version, start_candidate
from include.rollout.slots import InfraValidationFailed, Serving, other
from include.settings import get_settings
from tests.support.serving import Load, ensure_live, entry_version, poll, prepare, switch

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NY = ZoneInfo("America/New_York")
GOLDEN = 40
CHECK_SECONDS = 1.0


@pytest.fixture(scope="module")
def env(validated_weeks, mlflow_server, flights):
    """Settings for this module: its own model name, free ports, short bakes; three versions."""
    ports = [free_port() for _ in range(4)]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "LOOP_STORAGE_URI": str(validated_weeks),
            "MLFLOW_TRACKING_URI": mlflow_server,
            "LOOP_MODEL_NAME": "it-serving",
            "LOOP_SERVING_PORT": str(ports[0]),
            "LOOP_TRAEFIK_METRICS_PORT": str(ports[1]),
            "LOOP_SLOT_PORTS": f"{ports[2]},{ports[3]}",
            "LOOP_CANARY_STEPS": "10,50,100",
            "LOOP_CANARY_BAKE_SECONDS": "4",
            "LOOP_CANARY_CHECK_SECONDS": str(CHECK_SECONDS),
            "LOOP_CANARY_MIN_REQUESTS": "5",
            "LOOP_GOLDEN_ROWS": str(GOLDEN),
            "LOOP_GOLDEN_LATENCY_MS": "1000",
        }.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        settings = get_settings()
        for i, trees in enumerate((20, 40, 60)):
            params = TrainParams(window_weeks=8, n_estimators=trees, max_depth=4)
            out = train_candidate(flights, params, settings, dag_id="train", dag_run_id=f"serving_{i}")
            assert out["version"] == str(i + 1)
        yield settings
        Serving(settings).stack.stop()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def records(env, flights):
    return golden_records(env, flights, 300)


def test_bento_is_built_once_per_version_with_lineage_labels(env):
    first = build_bento(env, env.model_name, "1")
    again = build_bento(env, env.model_name, "1")
    assert again["reused"] and again["bento_tag"] == first["bento_tag"] == "it-serving-service:v1"
    mv = connect(env.mlflow_tracking_uri).get_model_version(env.model_name, "1")
    labels = again["labels"]
    assert labels["model_version"] == "1" and labels["mlflow_run_id"] == mv.run_id
    assert labels["data_window"] == mv.tags["loop.data_window"] and labels["git_commit"] == mv.tags["loop.git_commit"]


@pytest.fixture
def nothing_served(env):
    """No slot, no routing, no live deployment: the state before the first rollout."""
    serving = Serving(env)
    serving.stack.stop()
    clear_live(env, env.model_name)
    assert serving.live() is None
    for path in (serving.proxy.routing_file, *serving.proxy.dir.glob("slot-*.json")):
        path.unlink(missing_ok=True)


def test_first_rollout_serves_the_version_on_the_entry(env, flights, records, nothing_served):
    live = switch(env, "1", prepare(env, flights, "1"))
    assert live["slot"] == "blue" and live["model_version"] == "1"
    assert entry_version(env, records[0]) == "1"
    tags = connect(env.mlflow_tracking_uri).get_model_version(env.model_name, "1").tags
    assert tags["deploy.bento_tag"] == "it-serving-service:v1" and tags["deploy.slot"] == "blue"
    # what serves is recorded in the registry, where every worker reads it
    mlc = connect(env.mlflow_tracking_uri)
    assert alias_version(mlc, env.model_name, LIVE).version == "1"
    assert read_live(env, env.model_name) == live and live["bento_tag"] == "it-serving-service:v1"
    # a rerun for the live version does nothing
    assert plan(env, env.model_name, "1")["action"] == "noop"


def test_blue_green_switch_under_load_fails_no_request(env, flights, records):
    old = ensure_live(env, flights, "1")
    ref = prepare(env, flights, "2")
    old_slot = descendants(Serving(env).stack.running()[f"slot-{old['slot']}"])
    assert old_slot, "BentoML's supervisor should have worker processes"
    with Load(env, records, limit=20000) as load:
        live = switch(env, "2", ref)
    summary = load.result.summary()
    print(f"\nswitch v1→v2 under load: {summary}")
    assert summary["requests"] > 500
    assert summary["failed"] == 0, summary
    assert set(summary["versions"]) == {"1", "2"}
    assert live["slot"] == other(old["slot"]) and entry_version(env, records[0]) == "2"
    serving = Serving(env)
    assert not serving.slot_running(old["slot"]) and serving.proxy.weights() == {live["slot"]: 100}
    assert not [p for p in old_slot if p.is_running() and p.status() != "zombie"], "the old slot left processes behind"


def test_the_entry_serves_the_api_but_not_the_slots_metrics(env, flights, records):
    """Issue 11: clients reach predictions, health and the API document through the entry; the
    slots' Prometheus metrics only on the slots' own ports (for the scraper)."""
    live = ensure_live(env, flights, "2")
    entry = f"http://127.0.0.1:{env.serving_port}"
    assert requests.get(f"{entry}/metrics", timeout=5).status_code == 404
    assert requests.get(f"{entry}/metrics/", timeout=5).status_code == 404
    assert (
        "request_duration_seconds_count" in requests.get(f"{Serving(env).proxy.slot_url(live['slot'])}/metrics", timeout=5).text
    )
    assert requests.get(f"{entry}/readyz", timeout=5).status_code == 200
    assert requests.get(f"{entry}/docs.json", timeout=5).json()["paths"]
    assert entry_version(env, records[0]) == "2"


def test_routing_survives_a_proxy_restart(env, flights, records):
    live = ensure_live(env, flights, "2")
    serving = Serving(env)
    assert serving.stack.stop_one("traefik")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{env.serving_port}/readyz", timeout=2)
    serving.ensure_proxy()
    serving.proxy.wait_applied({live["slot"]: 100})
    assert entry_version(env, records[0]) == "2"


def test_the_serving_host_brings_the_live_slot_back_when_it_restarts(env, flights, records):
    """A host restart loses Traefik, the slots and (a new machine) the bento store: the host's
    start command resumes what the registry records, then runs the given command."""
    import shutil
    import subprocess
    import sys

    live = ensure_live(env, flights, "2")
    serving = Serving(env)
    serving.stack.stop()
    shutil.rmtree(env.bentoml_home / "bentos" / "it-serving-service" / "v2")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{env.serving_port}/readyz", timeout=2)
    marker = env.state_dir / "host-command-ran"
    done = subprocess.run(
        [sys.executable, "-m", "include.rollout.host", "--wait", "60", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "resumed: it-serving v2 in slot " + live["slot"] in done.stderr
    assert marker.exists(), "the host's own command runs after the resume"
    assert entry_version(env, records[0]) == "2"
    assert serving.proxy.weights() == {live["slot"]: 100} and serving.slot_running(live["slot"])
    # the host started its serving guard beside the command (tests/faults exercises it); the
    # tests here move traffic without the rollout lease, so it must not run on
    assert serving.stack.stop_one("serving-guard"), "the host starts the serving guard"


def test_each_slot_counts_only_its_own_requests(env, flights, records):
    """The canary judges the candidate by its own metrics: starting it must not reset the live
    slot's counters, and requests to one slot must not show in the other's."""
    live = ensure_live(env, flights, "2")
    idle = other(live["slot"])
    serving = Serving(env)

    def served(slot):
        return bentoml_counters(requests.get(f"{serving.proxy.slot_url(slot)}/metrics", timeout=5).text)["requests"]

    for record in records[:5]:
        requests.post(f"{serving.proxy.slot_url(live['slot'])}/predict", json=record, timeout=10).raise_for_status()
    live_before = served(live["slot"])
    assert live_before >= 5
    start_candidate(env, env.model_name, "3", idle, build_bento(env, env.model_name, "3")["bento_tag"])
    for record in records[:10]:
        requests.post(f"{serving.proxy.slot_url(idle)}/predict", json=record, timeout=10).raise_for_status()
    assert served(idle) == 10
    assert served(live["slot"]) == live_before, "the candidate's start or traffic changed the live slot's counters"
    serving.stop_slot(idle)


@pytest.mark.parametrize("fault", ["unready", "skew"])
def test_a_bad_candidate_never_receives_traffic(env, flights, records, fault):
    live = ensure_live(env, flights, "2")
    idle = other(live["slot"])
    serving = Serving(env)
    bento = build_bento(env, env.model_name, "3")
    with Load(env, records, limit=3000) as load, pytest.raises(InfraValidationFailed):
        start_candidate(env, env.model_name, "3", idle, bento["bento_tag"], env={"LOOP_SLOT_FAULT": fault}, timeout=30)
        infra_validate(env, flights, idle, env.model_name, "3")
    assert load.result.summary()["versions"] == {"2": len(load.result.outcomes)}
    assert load.result.summary()["failed"] == 0
    assert serving.proxy.weights() == {live["slot"]: 100} and not serving.slot_running(idle)
    tags = connect(env.mlflow_tracking_uri).get_model_version(env.model_name, "3").tags
    assert "deploy.rejected" in tags and "deploy.bento_tag" not in tags
    print(f"\n{fault} candidate rejected: {tags['deploy.rejected'][:160]}")


def test_errors_during_the_bake_roll_back_within_one_check(env, flights, records):
    live = ensure_live(env, flights, "2")
    idle = other(live["slot"])
    serving = Serving(env)
    bento = build_bento(env, env.model_name, "3")
    # healthy through infra validation (GOLDEN single requests + 1 batch), then every request fails
    start_candidate(env, env.model_name, "3", idle, bento["bento_tag"], env={"LOOP_SLOT_FAULT": f"errors:{GOLDEN + 50}"})
    infra_validate(env, flights, idle, env.model_name, "3")
    with Load(env, records, limit=8000) as load, pytest.raises(CanaryRolledBack) as rolled:
        canary(env, env.model_name, "3", idle)
    outcomes = load.result.outcomes
    failed = [o for o in outcomes if o.status != 200]
    assert failed, "the faulty canary should have failed some requests"
    after = [o for o in failed if o.started > rolled.value.restored_at]
    delay = rolled.value.detected_at - min(o.started for o in failed)
    print(
        f"\nerrors at canary: {len(failed)} of {len(outcomes)} requests failed before rollback; detected {delay:.2f}s after the first error; {len(after)} after"
    )
    assert not after
    assert delay <= CHECK_SECONDS + 1.0
    assert {o.status for o in failed} <= {500}
    assert serving.proxy.weights() == {live["slot"]: 100} and not serving.slot_running(idle)
    assert "deploy.rolled_back" in connect(env.mlflow_tracking_uri).get_model_version(env.model_name, "3").tags


def test_a_slot_dying_during_the_bake_costs_only_its_in_flight_requests(env, flights, records):
    live = ensure_live(env, flights, "2")
    idle = other(live["slot"])
    serving = Serving(env)
    bento = build_bento(env, env.model_name, "3")
    start_candidate(env, env.model_name, "3", idle, bento["bento_tag"])
    infra_validate(env, flights, idle, env.model_name, "3")
    errors: list[Exception] = []

    def bake():
        try:
            canary(env, env.model_name, "3", idle, bake_seconds=6)
        except Exception as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    clients = 3
    with Load(env, records, clients=clients, limit=10000) as load:
        t = threading.Thread(target=bake)
        t.start()
        poll(lambda: serving.proxy.weights().get(idle) == 50, 30, f"the canary's 50% step on {idle}")
        at_half = time.time()
        # the candidate is answering its half of the traffic when it dies
        poll(
            lambda: sum(o.version == "3" and o.started > at_half for o in list(load.result.outcomes)) >= 10,
            30,
            "v3 answers at 50%",
        )
        pid = serving.stack.running()[f"slot-{idle}"]
        tree = descendants(pid)  # found first: the kill itself is then instant, as an OOM kill is
        killed_at = time.time()
        kill_tree(pid, tree)  # supervisor and workers
        t.join(60)
    failed = load.result.failed
    detail = [(o.status, round(o.started - killed_at, 3), round(o.latency_ms)) for o in failed]
    print(f"\nslot killed at 50%: {len(failed)} of {len(load.result.outcomes)} requests failed (clients: {clients}): {detail}")
    assert len(errors) == 1 and isinstance(errors[0], CanaryRolledBack) and "down" in str(errors[0])
    restored_at = errors[0].restored_at
    print(f"rollback confirmed {restored_at - killed_at:.2f} s after the kill")
    # Only requests caught by the death fail: in flight on the slot, or sent before the rollback
    # and retried onto the dead slot again (Traefik's health check and our watcher have not seen it
    # yet). None after Traefik confirmed the old routing, and a small share of the traffic.
    assert not [o for o in failed if o.started > restored_at]
    assert len(failed) <= max(clients, len(load.result.outcomes) // 500)
    assert serving.proxy.weights() == {live["slot"]: 100}


def test_manual_rollback_restores_the_requested_version(env, flights, records):
    ensure_live(env, flights, "2")
    ref = {"model_name": env.model_name, "version": "1", "slot": plan(env, env.model_name, "1")["slot"]}
    live = restore_version(env, flights, ref, "test: v2 misbehaves", "manual__test")
    assert live["model_version"] == "1" and entry_version(env, records[0]) == "1"
    client = connect(env.mlflow_tracking_uri)
    assert alias_version(client, env.model_name, CHAMPION).version == "1"
    assert client.get_model_version(env.model_name, "1").tags["rollback.reason"] == "test: v2 misbehaves"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture
def serving_v2(env, flights):
    return ensure_live(env, flights, "2")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_requests_never_get_a_5xx(env, records, serving_v2, data):
    """Property: whatever a client sends (a valid record with one field broken, dropped or added,
    a batch too big, a body that is no JSON at all), the answer is never a 5xx, and it is a 4xx
    whenever the request is invalid."""
    url = f"http://127.0.0.1:{env.serving_port}"
    record = dict(data.draw(st.sampled_from(records)))
    kind = data.draw(st.sampled_from(["replace", "drop", "add", "batch", "raw"]))
    path, valid = "/predict", False
    if kind == "replace":
        field = data.draw(st.sampled_from(sorted(record)))
        record[field] = data.draw(JSON_VALUES)
        body = json.dumps(record, allow_nan=True)
        valid = None  # may happen to be valid (e.g. null for a nullable field)
    elif kind == "drop":
        field = data.draw(st.sampled_from([k for k in record if record[k] is not None]))
        del record[field]
        body = json.dumps(record)
        valid = None
    elif kind == "add":
        record[data.draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in record))] = data.draw(JSON_VALUES)
        body = json.dumps(record, allow_nan=True)
    elif kind == "batch":
        path = "/predict_batch"
        body = json.dumps({"records": [record] * data.draw(st.sampled_from([0, 1001, 5000]))})
    else:
        body = data.draw(st.binary(max_size=200)).decode("latin-1")
    r = requests.post(url + path, data=body.encode(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code < 500, (kind, body[:300], r.status_code, r.text[:300])
    if valid is False:
        assert 400 <= r.status_code < 500, (kind, body[:300], r.status_code)
        assert r.json().get("detail") or r.json().get("error")


def test_every_prediction_is_logged_and_joins_its_label(env, flights, records):
    from include.data.inference_layout import FEATURE_PREFIX
    from include.data.inference_log import join_labels, read_inference_log

    url = f"http://127.0.0.1:{env.serving_port}"
    sent: dict[str, str] = {}
    for version in ("1", "2"):
        ensure_live(env, flights, version)  # the switch to v2 stops v1's slot, which flushes its log
        batch = [{**r, "request_id": f"logged-{version}-{i}"} for i, r in enumerate(records)]
        report = replay(url, batch, clients=2)
        assert not report.failed and report.summary()["versions"] == {version: len(batch)}
        sent |= {r["request_id"]: version for r in batch}
    serving = Serving(env)
    serving.stack.stop_one(f"slot-{serving.live()['slot']}")  # shutdown flushes the buffer
    newest = list_validated("flights")[-1]
    start, end = datetime.fromisoformat(newest["interval_start"]), datetime.fromisoformat(newest["interval_end"])
    log = read_inference_log(flights, start - timedelta(days=1), end + timedelta(days=1))
    mine = log[log["request_id"].isin(sent)]
    # every prediction, once, with the version that made it
    assert len(mine) == len(sent) and mine["request_id"].is_unique
    assert dict(zip(mine["request_id"], mine["model_version"], strict=True)) == sent
    assert mine["score"].between(0, 1).all()
    assert [c for c in log.columns if c.startswith(FEATURE_PREFIX)] == [FEATURE_PREFIX + f for f in flights.features]
    joined = join_labels(flights, mine, read_validated([newest]))
    assert len(joined) == len(mine)
    assert joined["label"].notna().mean() > 0.9  # a few cancelled flights have no label


def test_a_bento_is_exported_once_to_s3_storage(env, s3):
    build_bento(env, env.model_name, "1")  # built on the local runtime before
    first = build_bento(get_settings(), env.model_name, "1")
    assert first["reused"] and first["export_uri"] == "s3://loop-test/zones/bentos/it-serving-service/v1.bento"
    archive = s3.read_bytes("bentos/it-serving-service/v1.bento")
    assert len(archive) > 10_000
    assert build_bento(get_settings(), env.model_name, "1")["export_uri"] == first["export_uri"]
