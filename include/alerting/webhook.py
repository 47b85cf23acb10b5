"""Alert-driven reruns: which DAG run an Alertmanager notification asks for (pure; no Airflow).

The webhook (`plugins/alert_webhook.py`, `POST /loop/alerts` on the Airflow API server) receives
Alertmanager's webhook payload (version 4). Each *firing* alert names the DAG to run in its
`dag_id` label; it must be one of `LOOP_WEBHOOK_DAGS`. The run id is made from the alert's
fingerprint and the time it started firing, so Alertmanager's repeat notifications of the same
alert (same fingerprint, same `startsAt`) map to the run that already exists and start nothing
new, while the same alert firing again after it resolved starts a fresh run.

The run's conf carries the reason (`alert <alertname> <fingerprint>: <summary>`), the alert's
source link, and any JSON object in the alert's `loop_conf` annotation (validated by the DAG's
own params form, like any trigger).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

RUN_ID_PREFIX = "alert__"


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(pattern="^(firing|resolved)$")
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class AlertmanagerPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str = "4"
    status: str = ""
    receiver: str = ""
    alerts: list[Alert] = Field(min_length=1, max_length=100)


@dataclass
class Planned:
    fingerprint: str
    dag_id: str | None
    run_id: str | None = None
    conf: dict = field(default_factory=dict)
    status: str = "trigger"
    """`trigger`, or why not: `resolved`, `refused`, `invalid`."""
    detail: str = ""


def run_id_for(alert: Alert) -> str:
    started = alert.startsAt.strftime("%Y%m%dT%H%M%S")
    return f"{RUN_ID_PREFIX}{alert.fingerprint}__{started}"


def plan(payload: AlertmanagerPayload, allowed_dags: tuple[str, ...]) -> list[Planned]:
    """One entry per alert: the run to start, or why none starts."""
    planned = []
    for alert in payload.alerts:
        dag_id = alert.labels.get("dag_id")
        entry = Planned(fingerprint=alert.fingerprint, dag_id=dag_id)
        planned.append(entry)
        if alert.status != "firing":
            entry.status, entry.detail = "resolved", "a resolved alert starts nothing"
            continue
        if not dag_id:
            entry.status, entry.detail = "refused", "the alert has no `dag_id` label naming the DAG to run"
            continue
        if dag_id not in allowed_dags:
            entry.status = "refused"
            entry.detail = f"DAG {dag_id!r} may not be started by alerts (LOOP_WEBHOOK_DAGS: {', '.join(allowed_dags)})"
            continue
        conf: dict = {}
        if raw := alert.annotations.get("loop_conf"):
            try:
                conf = json.loads(raw)
            except json.JSONDecodeError as exc:
                entry.status, entry.detail = "invalid", f"annotation loop_conf is not JSON: {exc}"
                continue
            if not isinstance(conf, dict):
                entry.status, entry.detail = "invalid", "annotation loop_conf must be a JSON object"
                continue
        name = alert.labels.get("alertname", "alert")
        summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
        reason = re.sub(r"\s+", " ", f"alert {name} {alert.fingerprint}: {summary}").strip()
        entry.run_id = run_id_for(alert)
        entry.conf = {"reason": reason[:500], **conf}
        if alert.generatorURL:
            entry.conf.setdefault("alert_url", alert.generatorURL)
    return planned
