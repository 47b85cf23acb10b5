"""Serving faults against real processes on loopback: an MLflow server, `bentoml serve` slots, the
real Traefik binary, and the serving guard as its own process (`python -m include.rollout.guard`).

Each test injects one fault, then observes what a client and an operator would: the entry
answering again, the routing, the alert, the model versions. Numbers (recovery times, failed
requests) are printed in the test output (`-s`, or the report).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime

import pytest
import requests

from include.alerting.alerts import read_alerts
from include.health.snapshot import snapshot
from include.local.stack import free_port, serving_problems
from include.model.packaging import build_bento
from include.model.params import TrainParams
from include.model.training import train_candidate
from include.rollout import lease
from include.rollout.infra import golden_records
from include.rollout.processes import Stack, kill_tree
from include.rollout.rollout import finalize, plan, plan_rollout, rollout_version, shift_traffic
from include.rollout.slots import Serving, other
from include.settings import PROJECT_ROOT, get_settings
from include.usecases import get_usecase
from tests.support.serving import Load, poll

pytestmark = [pytest.mark.faults, pytest.mark.slow]
GUARD_STALE_SECONDS = 4


@pytest.fixture(scope="module")
def env(validated_weeks, mlflow_server, flights, tmp_path_factory):
    """Settings for this module (its own state directory, model name and ports; short bakes; a
    guard checking every second); three trained versions; v1 serving."""
    ports = [free_port() for _ in range(4)]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "LOOP_STATE_DIR": str(tmp_path_factory.mktemp("faults-state")),
            "LOOP_STORAGE_URI": str(validated_weeks),
            "MLFLOW_TRACKING_URI": mlflow_server,
            "LOOP_MODEL_NAME": "faults-serving",
            "LOOP_SERVING_PORT": str(ports[0]),
            "LOOP_TRAEFIK_METRICS_PORT": str(ports[1]),
            "LOOP_SLOT_PORTS": f"{ports[2]},{ports[3]}",
            "LOOP_CANARY_STEPS": "10,50,100",
            "LOOP_CANARY_BAKE_SECONDS": "2",
            "LOOP_CANARY_CHECK_SECONDS": "0.5",
            "LOOP_CANARY_MIN_REQUESTS": "5",
            "LOOP_GOLDEN_ROWS": "40",
            "LOOP_GOLDEN_LATENCY_MS": "1000",
            "LOOP_GUARD_INTERVAL_SECONDS": "1",
            "LOOP_GUARD_UNREADY_SECONDS": "5",
            "LOOP_GUARD_CANARY_STALE_SECONDS": str(GUARD_STALE_SECONDS),
        }.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        settings = get_settings()
        for i, trees in enumerate((20, 40, 60)):
            params = TrainParams(window_weeks=8, n_estimators=trees, max_depth=4)
            out = train_candidate(flights, params, settings, dag_id="train", dag_run_id=f"faults_{i}")
            assert out["version"] == str(i + 1)
        ref = plan_rollout(settings, flights, "1", owner="deploy/faults-setup")
        rollout_version(settings, flights, ref, "faults-setup")
        yield settings
        Serving(settings).stack.stop()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def guard(env):
    """The serving guard, started as the demo and the serving host start it."""
    stack = Stack(env.state_dir)
    proc = stack.start("serving-guard", [sys.executable, "-m", "include.rollout.guard"], {})
    log = stack.log_dir / "serving-guard.log"
    # its first round imports MLflow's client and reads the live record: seconds a running guard has behind it
    poll(
        lambda: "serving guard: watching live slot" in log.read_text() or proc.poll() is not None, 120, "the guard's first round"
    )
    assert proc.poll() is None, log.read_text()[-3000:]
    yield proc
    stack.stop_one("serving-guard")
    print("\n--- serving guard log ---\n" + (stack.log_dir / "serving-guard.log").read_text()[-4000:])


@pytest.fixture(scope="module")
def records(env, flights):
    return golden_records(env, flights, 50)


def served_version(settings, record) -> str | None:
    try:
        r = requests.post(f"http://127.0.0.1:{settings.serving_port}/predict", json=record, timeout=5)
    except requests.RequestException:
        return None
    return r.json()["model_version"] if r.status_code == 200 else None


def alerts_of(settings, kind: str, since: float) -> list[dict]:
    """Alerts of `kind` sent at or after `since` (alert times have whole seconds)."""
    return [a for a in read_alerts(settings) if a["kind"] == kind and datetime.fromisoformat(a["time"]).timestamp() >= int(since)]


def routing_changes(settings, since: float) -> list[dict]:
    path = Serving(settings).proxy.history_file
    return [c for c in map(json.loads, path.read_text().splitlines()) if c["at"] >= since]


def live_version(settings) -> str:
    return Serving(settings).live()["model_version"]


def test_a_dead_live_slot_is_restarted_within_30_s_and_alerted(env, guard, records):
    serving = Serving(env)
    live = serving.live()
    since = time.time()
    killed_at = time.monotonic()
    kill_tree(serving.stack.running()[f"slot-{live['slot']}"])  # supervisor and workers, as an OOM kill would
    assert served_version(env, records[0]) is None, "nothing serves right after the kill"
    problems = serving_problems(env, serving.stack.running())  # what `make status` prints
    assert any("serving entry" in p for p in problems) and any(f"live slot {live['slot']}" in p for p in problems), problems
    poll(lambda: served_version(env, records[0]) == live["model_version"], 30, "the entry to serve the live version again")
    recovery = time.monotonic() - killed_at
    print(f"\nlive slot {live['slot']} killed: the entry served v{live['model_version']} again after {recovery:.1f} s")
    poll(lambda: alerts_of(env, "serving_restarted", since), 10, "the serving_restarted alert")
    [alert] = alerts_of(env, "serving_restarted", since)
    assert f"live slot {live['slot']}" in alert["message"] and f"v{live['model_version']}" in alert["message"]
    assert "not running" in alert["message"] and alert["details"]["recovery_seconds"] <= 30
    assert serving.proxy.weights() == {live["slot"]: 100}
    assert serving_problems(env, serving.stack.running()) == []
    # the model-health view's deployment timeline shows the repair, newest first
    heal = next(e for e in snapshot(env, get_usecase())["timeline"] if e["event"].startswith("self-heal:"))
    assert (heal["at"], heal["version"]) == (alert["time"], live["model_version"]) and alert["message"] in heal["event"]


def test_a_restarted_traefik_comes_back_with_the_last_routing(env, guard, records):
    serving = Serving(env)
    live = serving.live()
    since = time.time()
    killed_at = time.monotonic()
    kill_tree(serving.stack.running()["traefik"])
    poll(lambda: served_version(env, records[0]) == live["model_version"], 30, "the entry to answer again after Traefik died")
    print(f"\nTraefik killed: the entry answered again after {time.monotonic() - killed_at:.1f} s")
    assert serving.proxy.applied_weights() == {live["slot"]: 100}, "Traefik applies the routing it had"
    poll(lambda: alerts_of(env, "proxy_restarted", since), 10, "the proxy_restarted alert")


CANARY_SCRIPT = """
import sys
from include.model.packaging import build_bento
from include.rollout.rollout import plan_rollout, shift_traffic, start_candidate
from include.settings import get_settings
from include.usecases import get_usecase

settings = get_settings()
ref = plan_rollout(settings, get_usecase("flights"), sys.argv[1], owner=sys.argv[2])
bento = build_bento(settings, ref["model_name"], ref["version"])
start_candidate(settings, ref["model_name"], ref["version"], ref["slot"], bento["bento_tag"], owner=ref["owner"])
shift_traffic(settings, ref)
"""


def test_a_canary_killed_between_steps_gives_traffic_back_and_its_retry_completes(env, guard, records, flights):
    serving = Serving(env)
    live = serving.live()
    version = str(int(live["model_version"]) % 3 + 1)
    candidate = other(live["slot"])
    owner = "deploy/faults-canary"
    since = time.time()
    # A canary that would bake each step for 10 minutes: it is killed at its first step.
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CANARY_SCRIPT), version, owner],
        env={**os.environ, "LOOP_CANARY_BAKE_SECONDS": "600"},
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    try:
        with Load(env, records, clients=2, limit=20000) as load:
            poll(lambda: serving.proxy.weights().get(candidate) == 10 or proc.poll() is not None, 180, "the canary's 10% step")
            assert proc.poll() is None, f"the canary exited with {proc.returncode} before its first step"
            poll(lambda: any(o.version == version for o in list(load.result.outcomes)), 30, f"v{version} to answer its share")
            os.killpg(proc.pid, signal.SIGKILL)  # the task's worker is lost between two checks
            killed_at = time.monotonic()
            poll(
                lambda: serving.proxy.weights() == {live["slot"]: 100}, GUARD_STALE_SECONDS + 30, "traffic back on the live slot"
            )
            back_after = time.monotonic() - killed_at
            # Traefik applies a routing change within a second of the file's replacement.
            mark = time.time() + 1
            poll(lambda: sum(o.started > mark for o in list(load.result.outcomes)) >= 20, 30, "answers after the take-back")
            after = [o for o in list(load.result.outcomes) if o.started > mark]
    finally:
        proc.kill()
        proc.wait(10)
    failed = load.result.failed
    print(
        f"\ncanary killed at 10%: traffic back on v{live['model_version']} after {back_after:.1f} s; "
        f"{len(failed)} of {len(load.result.outcomes)} requests failed"
    )
    assert not failed, [(o.status, o.started) for o in failed]
    assert after and {o.version for o in after} == {live["model_version"]}, "after the take-back only the live version answers"
    [alert] = alerts_of(env, "canary_abandoned", since)
    assert owner in alert["message"] and f"slot {live['slot']}" in alert["message"]
    assert lease.current(env)["traffic"]["state"] == lease.ABANDONED
    assert serving.slot_running(candidate), "the candidate keeps running, without traffic, for the retry"

    # Airflow retries the canary task: it starts again from the first step and completes.
    ref = {"model_name": env.model_name, "version": version, "slot": candidate, "mode": "promote", "owner": owner}
    shift_traffic(env, ref)
    done = finalize(env, ref, build_bento(env, env.model_name, version)["bento_tag"], "faults-canary")
    assert done["model_version"] == version == served_version(env, records[0])
    assert lease.current(env) is None, "finalize released the lease"


ROLLOUT_SCRIPT = """
import sys
from include.rollout.rollout import plan_rollout, rollout_version
from include.settings import get_settings
from include.usecases import get_usecase

settings, usecase = get_settings(), get_usecase("flights")
version, owner, reason = sys.argv[1], sys.argv[2], sys.argv[3] or None
ref = plan_rollout(settings, usecase, version, owner=owner, restore_reason=reason)
print("nothing to do" if ref is None else rollout_version(settings, usecase, ref, owner), flush=True)
"""


def test_deploy_and_rollback_started_together_never_interleave_their_traffic(env, guard, records):
    live = live_version(env)
    deploy_v, rollback_v = [v for v in ("1", "2", "3") if v != live]
    since = time.time()
    procs = {
        owner: subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(ROLLOUT_SCRIPT), version, owner, reason],
            env=os.environ.copy(),
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
        for owner, version, reason in (
            ("deploy/race", deploy_v, ""),
            ("rollback/race", rollback_v, "faults: deploy and rollback at once"),
        )
    }
    for owner, proc in procs.items():
        assert proc.wait(600) == 0, f"{owner} failed"
    changes = routing_changes(env, since)
    writers = [c["pid"] for c in changes]
    blocks = [pid for i, pid in enumerate(writers) if i == 0 or writers[i - 1] != pid]
    print(f"\nrouting changes (pid, weights): {[(c['pid'], c['weights']) for c in changes]}")
    assert set(writers) == {p.pid for p in procs.values()}, "both rollouts moved traffic"
    assert len(blocks) == 2, f"the two rollouts' traffic changes interleaved: {blocks}"
    second = next(owner for owner, p in procs.items() if p.pid == blocks[1])
    expected = deploy_v if second == "deploy/race" else rollback_v
    assert live_version(env) == expected == served_version(env, records[0])
    assert plan(env, env.model_name, expected)["action"] == "noop"
    assert lease.current(env) is None
