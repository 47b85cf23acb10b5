"""Alertmanager payload → DAG runs (include/webhook.py): pure planning, no Airflow."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from include.alerting.webhook import AlertmanagerPayload, plan

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
