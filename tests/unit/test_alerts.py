"""Alerts: the local sink, links, the failure notifier, and the provider notifiers built from settings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from include.alerting.alerts import airflow_task_link, read_alerts, send_alert
from include.settings import get_settings


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOP_STATE_DIR", str(tmp_path))
    for key in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_inside_a_task_the_alert_links_the_task_in_the_airflow_ui(settings, monkeypatch):
    assert airflow_task_link() is None
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example/")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "monitor")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2013-07-08T00:00:00+00:00")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "check")
    alert = send_alert(settings, "drift", "v3 drifted", {"version": "3"}, links={"mlflow": "http://mlflow/#/x", "report": None})
    assert alert["links"] == {
        "mlflow": "http://mlflow/#/x",
        "airflow": "https://airflow.example/dags/monitor/runs/manual__2013-07-08T00%3A00%3A00%2B00%3A00/tasks/check",
    }
    assert read_alerts(settings) == [alert]


def test_the_failure_notifier_alerts_once_and_leaves_specific_alerts_alone(settings):
    from include.airflow_glue import AlertNotifier
    from include.data.gate import BatchQuarantined

    ti = SimpleNamespace(
        dag_id="train", task_id="champion_gate", run_id="r1", try_number=3, log_url="http://af/dags/train/runs/r1"
    )
    AlertNotifier().notify({"ti": ti, "exception": RuntimeError("MLflow unreachable")})
    [alert] = read_alerts(settings)
    assert alert["kind"] == "task_failed" and "MLflow unreachable" in alert["message"]
    assert alert["links"]["airflow"] == ti.log_url and alert["details"]["try_number"] == 3

    wrapped = RuntimeError("partition quarantined")
    wrapped.__cause__ = BatchQuarantined("partition quarantined")
    AlertNotifier().notify({"ti": ti, "exception": wrapped})
    assert len(read_alerts(settings)) == 1  # the task already sent its `quarantined` alert


def test_provider_notifiers_come_from_settings_and_a_failing_sink_does_not_raise(settings, caplog):
    from airflow.providers.http.notifications.http import HttpNotifier
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from include.airflow_glue import notify_sinks, sink_notifiers

    alert = {"kind": "rollback", "message": "v4 rolled back", "links": {"airflow": "http://af/x"}, "details": {}}
    assert sink_notifiers(settings, alert) == []
    configured = settings.model_copy(
        update={
            "alert_http_conn_id": "loop_alerts",
            "alert_http_endpoint": "/hooks/loop",
            "alert_slack_conn_id": "loop_slack",
            "alert_email": "ml-oncall@example.com",
        }
    )
    http, slack, smtp = sink_notifiers(configured, alert)
    assert isinstance(http, HttpNotifier) and http.json == alert and http.http_conn_id == "loop_alerts"
    assert isinstance(slack, SlackWebhookNotifier) and "<http://af/x|airflow>" in slack.text
    assert isinstance(smtp, SmtpNotifier) and "v4 rolled back" in smtp.subject and 'href="http://af/x"' in smtp.html_content

    notify_sinks(settings.model_copy(update={"alert_http_conn_id": "no_such_connection"}), alert)
    assert "alert sink HttpNotifier failed" in caplog.text
