"""Airflow notifiers: a failed task reaches people through the loop's alert sinks.

Every DAG's `default_args` carry `on_failure_callback=failure_notifiers()` (it fires once a task
has used up its retries): the alert names the DAG, task and run, the error, and links to the task
in the Airflow UI. The local sink (`.state/alerts.jsonl`) always gets it; with LOOP_ALERT_EMAIL
set, Airflow's SMTP provider notifier also mails it through the connection named by
LOOP_ALERT_SMTP_CONN_ID (configured in Airflow, never in code).

Like `assets.py`, this module imports Airflow; the rest of `include/` does not.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk.bases.notifier import BaseNotifier

from include.config import get_settings


class AlertNotifier(BaseNotifier):
    """Sends the failure to `include.alerts.send_alert` with its links."""

    def __init__(self, kind: str = "task_failed"):
        super().__init__()
        self.kind = kind

    def notify(self, context) -> None:
        from include.alerts import send_alert

        ti = context["ti"]
        error = context.get("exception")
        message = f"{ti.dag_id}.{ti.task_id} failed in run {ti.run_id}" + (f": {error}" if error else "")
        details = {
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "try_number": ti.try_number,
            "airflow_url": ti.log_url,
        }
        send_alert(get_settings(), self.kind, message[:2000], details)


def failure_notifiers() -> list[BaseNotifier]:
    """The notifiers every task's failure goes to (see the module docstring)."""
    settings = get_settings()
    notifiers: list[BaseNotifier] = [AlertNotifier()]
    if settings.alert_email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifiers.append(
            SmtpNotifier(
                to=settings.alert_email,
                smtp_conn_id=settings.alert_smtp_conn_id,
                subject="[loop] {{ ti.dag_id }}.{{ ti.task_id }} failed",
                html_content='Run {{ ti.run_id }}: {{ exception }}<br><a href="{{ ti.log_url }}">task in Airflow</a>',
            )
        )
    return notifiers


def task_defaults(retry_delay: timedelta, **extra) -> dict:
    """`default_args` of every DAG of the loop: the owner, two retries, the failure notifiers."""
    return {"owner": "ml-platform", "on_failure_callback": failure_notifiers(), "retries": 2, "retry_delay": retry_delay, **extra}
