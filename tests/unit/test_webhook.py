"""The alert webhook: Alertmanager payload → DAG runs (include/alerting/webhook.py, pure planning
and the rate limiter), and the endpoint's order of checks (plugins/alert_webhook.py, through
FastAPI's TestClient with Airflow's trigger faked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from include.alerting.webhook import MAX_BODY_BYTES, MAX_LOOP_CONF_BYTES, MAX_NOTE_CHARS, AlertmanagerPayload, RateLimiter, plan

ROOT = Path(__file__).resolve().parents[2]

ALLOWED = ("train", "monitor")


def payload(*alerts: dict) -> AlertmanagerPayload:
    return AlertmanagerPayload.model_validate({"version": "4", "status": "firing", "receiver": "loop", "alerts": list(alerts)})


def alert(fingerprint="a1b2c3", status="firing", starts="2026-11-26T04:00:00Z", **labels) -> dict:
    return {
        "status": status,
        "labels": {"alertname": "LateRateDrift", **labels},
        "annotations": {"summary": "late rate 31% vs 18%\n in training"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph?g0.expr=late_rate",
        "fingerprint": fingerprint,
    }


def test_a_firing_alert_plans_one_run_named_by_its_fingerprint_with_the_reason():
    [p] = plan(payload(alert(dag_id="train")), ALLOWED)
    assert p.status == "trigger" and p.dag_id == "train"
    assert p.run_id == "alert__a1b2c3__20261126T040000"
    assert p.conf["reason"] == "alert LateRateDrift a1b2c3: late rate 31% vs 18% in training"
    assert p.conf["alert_url"].startswith("http://prometheus.local/")


def test_a_summary_with_control_characters_becomes_a_reason_the_train_form_admits():
    from include.model.params import TrainParams

    noisy = alert(dag_id="train") | {"annotations": {"summary": "late\x00 rate\x1b[31m up\x07\r\n again"}}
    [p] = plan(payload(noisy), ALLOWED)
    assert p.conf["reason"] == "alert LateRateDrift a1b2c3: late rate [31m up again"
    assert TrainParams.from_mapping(p.conf).reason == p.conf["reason"]


def test_a_repeated_notification_maps_to_the_same_run_and_a_new_firing_to_a_new_one():
    first = plan(payload(alert(dag_id="train")), ALLOWED)[0].run_id
    repeat = plan(payload(alert(dag_id="train")), ALLOWED)[0].run_id
    refired = plan(payload(alert(dag_id="train", starts="2026-11-27T09:30:00Z")), ALLOWED)[0].run_id
    assert first == repeat != refired


def test_resolved_unmapped_and_unlisted_alerts_start_nothing_and_say_why():
    planned = plan(
        payload(alert("f1", status="resolved", dag_id="train"), alert("f2"), alert("f3", dag_id="deploy")),
        ALLOWED,
    )
    assert [p.status for p in planned] == ["resolved", "refused", "refused"]
    assert "dag_id" in planned[1].detail and "LOOP_WEBHOOK_DAGS" in planned[2].detail
    assert all(p.run_id is None for p in planned)


def test_conf_comes_from_the_loop_conf_annotation_and_bad_json_is_named():
    good = alert(dag_id="monitor")
    good["annotations"]["loop_conf"] = '{"window_start": "2013-07-01", "window_end": "2013-07-08"}'
    bad = alert("f9", dag_id="monitor")
    bad["annotations"]["loop_conf"] = "[1, 2"
    listed = alert("f8", dag_id="monitor")
    listed["annotations"]["loop_conf"] = "[1, 2]"
    p_good, p_bad, p_list = plan(payload(good, bad, listed), ALLOWED)
    assert p_good.conf["window_start"] == "2013-07-01" and p_good.conf["reason"].startswith("alert ")
    assert p_bad.status == "invalid" and "not JSON" in p_bad.detail
    assert p_list.status == "invalid" and "JSON object" in p_list.detail


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        ({"alerts": []}, ("alerts",)),
        ({"alerts": [alert(fingerprint="../../etc")]}, ("alerts", 0, "fingerprint")),
        ({"alerts": [alert(status="pending")]}, ("alerts", 0, "status")),
        ({"alerts": [{k: v for k, v in alert().items() if k != "startsAt"}]}, ("alerts", 0, "startsAt")),
    ],
)
def test_malformed_payloads_are_refused_with_the_field_named(broken, field):
    with pytest.raises(ValidationError) as err:
        AlertmanagerPayload.model_validate(broken)
    assert [e["loc"] for e in err.value.errors()] == [field]


def test_a_loop_conf_over_the_limit_is_refused_naming_the_limit_and_the_note_is_cut():
    huge = alert("f7", dag_id="train")
    huge["annotations"]["loop_conf"] = json.dumps({"reason": "x" * 100_000})
    wordy = alert("f6", dag_id="train")
    wordy["annotations"]["loop_conf"] = json.dumps({"reason": "y" * (MAX_LOOP_CONF_BYTES - 20)})
    p_huge, p_wordy = plan(payload(huge, wordy), ALLOWED)
    assert p_huge.status == "invalid" and str(MAX_LOOP_CONF_BYTES) in p_huge.detail and p_huge.run_id is None
    assert p_wordy.status == "trigger" and len(p_wordy.conf["reason"]) > MAX_NOTE_CHARS
    assert p_wordy.note == "y" * MAX_NOTE_CHARS


def test_an_alert_cannot_force_a_training_past_the_retrain_guards():
    forcing = alert("f8", dag_id="train")
    forcing["annotations"]["loop_conf"] = json.dumps({"force": True, "n_estimators": 50})
    [p] = plan(payload(forcing), ALLOWED)
    assert p.status == "invalid" and "force" in p.detail and "retrain guards" in p.detail and p.run_id is None


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_rate_limiter_admits_a_burst_per_client_then_names_the_wait_and_refills():
    clock = FakeClock()
    limiter = RateLimiter(3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0, 0, 0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(20.0)  # one request every 20 s at 3 a minute
    assert limiter.acquire("b") == 0, "another client has its own bucket"
    clock.now += 19
    assert limiter.acquire("a") > 0
    clock.now += 1.5
    assert limiter.acquire("a") == 0 and limiter.acquire("a") > 0


def test_the_rate_limiter_forgets_idle_clients_and_refuses_a_zero_rate():
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock, max_clients=2)
    limiter.acquire("a")
    limiter.acquire("b")
    clock.now += 60
    limiter.acquire("c")
    assert set(limiter._buckets) == {"c"}
    with pytest.raises(ValueError, match="admits nothing"):
        RateLimiter(0)


# The endpoint itself, through FastAPI's TestClient (no Airflow server; the trigger is faked).

TOKEN = "test-token-" + "k" * 16


def _load_plugin():
    spec = importlib.util.spec_from_file_location("alert_webhook_under_test", ROOT / "plugins" / "alert_webhook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plugin():
    return _load_plugin()


@pytest.fixture
def webhook(plugin, monkeypatch):
    """(plugin module, TestClient, triggered runs): the token set, a fresh rate limiter, and
    Airflow's trigger_dag replaced by a recorder."""
    import airflow.api.common.trigger_dag as trigger_module
    from fastapi.testclient import TestClient

    from include.settings import get_settings

    triggered: list[dict] = []
    monkeypatch.setattr(trigger_module, "trigger_dag", lambda dag_id, **kw: triggered.append({"dag_id": dag_id, **kw}))
    monkeypatch.setenv("LOOP_WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("LOOP_WEBHOOK_RATE_PER_MINUTE", "1000")
    get_settings.cache_clear()
    plugin._limiter.cache_clear()
    yield plugin, TestClient(plugin.app), triggered
    get_settings.cache_clear()
    plugin._limiter.cache_clear()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_an_unauthenticated_call_gets_401_without_its_body_being_read(webhook):
    plugin, client, triggered = webhook
    read = []

    def body():
        read.append(True)
        yield b'{"alerts": "nope", "not json'

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.post("/alerts", content=body(), headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 401, r.text
        assert "LOOP_WEBHOOK_TOKEN" in r.json()["detail"] and "alerts" not in r.text
    r = client.post("/alerts", content=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 401, "the token is checked before the size"
    assert not read and not triggered


def test_the_webhook_is_off_without_a_token(webhook, monkeypatch):
    from include.settings import get_settings

    _, client, _ = webhook
    monkeypatch.setenv("LOOP_WEBHOOK_TOKEN", "")
    get_settings.cache_clear()
    r = client.post("/alerts", json={}, headers=AUTH)
    assert r.status_code == 503 and "LOOP_WEBHOOK_TOKEN" in r.json()["detail"]


def test_a_body_over_the_limit_is_refused_by_its_length_or_as_it_streams(webhook):
    _, client, triggered = webhook
    declared = client.post("/alerts", content=b" " * (MAX_BODY_BYTES + 1), headers=AUTH)
    assert declared.status_code == 413 and str(MAX_BODY_BYTES) in declared.json()["detail"]

    def chunked():  # no Content-Length: only counting the bytes catches it
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    streamed = client.post("/alerts", content=chunked(), headers=AUTH)
    assert streamed.status_code == 413
    assert not triggered


def test_an_authorized_malformed_payload_gets_422_naming_the_field_without_echoing_it(webhook):
    _, client, triggered = webhook
    r = client.post("/alerts", json={"alerts": "nope-marker"}, headers=AUTH)
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "alerts"]]
    assert "nope-marker" not in r.text
    assert client.post("/alerts", content=b"{not json", headers=AUTH).status_code == 422
    assert not triggered


def test_a_valid_alert_triggers_its_run_with_a_bounded_note_and_an_oversized_conf_is_invalid(webhook):
    _, client, triggered = webhook
    good = alert("g1", dag_id="train")
    good["annotations"]["loop_conf"] = json.dumps({"reason": "z" * 3000})
    huge = alert("g2", dag_id="train")
    huge["annotations"]["loop_conf"] = json.dumps({"n_estimators": 50, "pad": "p" * 100_000})
    body = {"version": "4", "status": "firing", "receiver": "loop", "alerts": [good, huge]}
    r = client.post("/alerts", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    created, refused = r.json()["runs"]
    assert created["status"] == "created" and created["dag_run_id"] == "alert__g1__20261126T040000"
    assert refused["status"] == "invalid" and str(MAX_LOOP_CONF_BYTES) in refused["detail"]
    [run] = triggered
    assert run["dag_id"] == "train" and run["run_id"] == created["dag_run_id"]
    assert run["note"] == "z" * MAX_NOTE_CHARS and run["triggering_user_name"] == "alert-webhook"


def test_a_client_over_the_rate_gets_429_with_retry_after_before_its_token_is_checked(webhook, monkeypatch):
    from include.settings import get_settings

    plugin, client, _ = webhook
    monkeypatch.setenv("LOOP_WEBHOOK_RATE_PER_MINUTE", "3")
    get_settings.cache_clear()
    assert [client.post("/alerts", json={}).status_code for _ in range(3)] == [401, 401, 401]
    for headers in ({}, AUTH):
        r = client.post("/alerts", json={}, headers=headers)
        assert r.status_code == 429 and "LOOP_WEBHOOK_RATE_PER_MINUTE" in r.json()["detail"]
        assert 1 <= int(r.headers["Retry-After"]) <= 20
