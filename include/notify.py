"""Airflow notifiers: alerts reach people through Airflow's provider notifiers.

* `AlertNotifier` is every task's `on_failure_callback` (`task_defaults()`): once a task has used up
  its retries, the error and a link to the task become a `task_failed` alert.
* `notify_sinks()` sends any alert (drift, decay, quarantine, failed gate, rollback, failure) to the
  provider notifiers configured through Airflow connections: `HttpNotifier` (a generic webhook:
  the alert as JSON), `SlackWebhookNotifier`, `SmtpNotifier`. No endpoint or credential lives in
  code; each is an Airflow connection named in the settings (`include/config.py`).

Like `assets.py`, this module imports Airflow; the rest of `include/` does not.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk.bases.notifier import BaseNotifier

from include.config import get_settings

log = logging.getLogger(__name__)


class AlertNotifier(BaseNotifier):
    """Sends the failure to `include.alerts.send_alert` with its links."""

    def __init__(self, kind: str = "task_failed"):
        super().__init__()
        self.kind = kind

    def notify(self, context) -> None:
        from include.alerts import send_alert

        ti = context["ti"]
        error = context.get("exception")
        if getattr(error, "alerted", False) or getattr(getattr(error, "__cause__", None), "alerted", False):
            return  # the task sent its own, more specific alert before failing
        message = f"{ti.dag_id}.{ti.task_id} failed in run {ti.run_id}" + (f": {error}" if error else "")
        details = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "try_number": ti.try_number}
        send_alert(get_settings(), self.kind, message[:2000], details, links={"airflow": ti.log_url})


def sink_notifiers(settings, alert: dict) -> list[BaseNotifier]:
    """The provider notifiers the settings name, each carrying this alert."""
    notifiers: list[BaseNotifier] = []
    links = alert["links"]
    text = f"[loop] {alert['kind']}: {alert['message']}"
    if settings.alert_http_conn_id:
        from airflow.providers.http.notifications.http import HttpNotifier

        notifiers.append(
            HttpNotifier(
                http_conn_id=settings.alert_http_conn_id,
                endpoint=settings.alert_http_endpoint,
                json=alert,
                headers={"Content-Type": "application/json"},
            )
        )
    if settings.alert_slack_conn_id:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        lines = [text] + [f"<{url}|{name}>" for name, url in links.items()]
        notifiers.append(SlackWebhookNotifier(slack_webhook_conn_id=settings.alert_slack_conn_id, text="\n".join(lines)))
    if settings.alert_email:
        from html import escape

        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        body = f"<p>{escape(alert['message'])}</p>" + "".join(
            f'<p><a href="{escape(url)}">{escape(name)}</a></p>' for name, url in links.items()
        )
        notifiers.append(
            SmtpNotifier(to=settings.alert_email, smtp_conn_id=settings.alert_smtp_conn_id, subject=text[:200], html_content=body)
        )
    return notifiers


def notify_sinks(settings, alert: dict) -> None:
    """Send the alert through every configured notifier; a failing sink is logged, not raised
    (the alert is already in the local sink, and alerting must not fail the task)."""
    from airflow.sdk import get_current_context

    try:
        context = get_current_context()
    except Exception:
        context = {}
    for notifier in sink_notifiers(settings, alert):
        try:
            notifier.notify(context)
        except Exception as exc:
            log.error("alert sink %s failed: %s", type(notifier).__name__, exc)


def task_defaults(retry_delay: timedelta, **extra) -> dict:
    """`default_args` of every DAG of the loop: the owner, two retries, the failure notifier."""
    return {"owner": "ml-platform", "on_failure_callback": [AlertNotifier()], "retries": 2, "retry_delay": retry_delay, **extra}
