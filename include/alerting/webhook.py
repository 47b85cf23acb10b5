"""Alert-driven reruns: which DAG run an Alertmanager notification asks for (pure; no Airflow).

The webhook (`plugins/alert_webhook.py`, `POST /loop/alerts` on the Airflow API server) receives
Alertmanager's webhook payload (version 4). Each *firing* alert names the DAG to run in its
`dag_id` label; it must be one of `LOOP_WEBHOOK_DAGS`. The run id is made from the alert's
fingerprint and the time it started firing, so Alertmanager's repeat notifications of the same
alert (same fingerprint, same `startsAt`) map to the run that already exists and start nothing
new, while the same alert firing again after it resolved starts a fresh run.

The run's conf carries the reason (`alert <alertname> <fingerprint>: <summary>`), the alert's
source link, and any JSON object in the alert's `loop_conf` annotation (validated by the DAG's
own params form, like any trigger). What one alert can put into Airflow is bounded: a `loop_conf`
over `MAX_LOOP_CONF_BYTES` is refused as `invalid`, and the run's note is cut at `MAX_NOTE_CHARS`.

The endpoint is exposed on the API server, so it answers strangers as cheaply as it can: a request
is counted against its client's `RateLimiter` first, then its token is checked, and only then is
its body read, up to `MAX_BODY_BYTES`, and parsed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

RUN_ID_PREFIX = "alert__"
MAX_BODY_BYTES = 1 << 20
"""A larger request body is refused (413) unread: 100 alerts fit in far less."""
MAX_LOOP_CONF_BYTES = 4096
"""A `loop_conf` annotation is a few form values; a larger one is refused."""
MAX_NOTE_CHARS = 500
"""The run's note (the reason) is cut here."""
ALERTS_MAY_NOT_SET = frozenset({"force"})
"""Form values only a person sets: `force` trains past the retrain guards (cooldown, training running)."""


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
    note: str = ""
    """The run's note: its reason, at most `MAX_NOTE_CHARS`."""


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
            size = len(raw.encode())
            if size > MAX_LOOP_CONF_BYTES:
                entry.status = "invalid"
                entry.detail = (
                    f"annotation loop_conf is {size} bytes, over the limit of {MAX_LOOP_CONF_BYTES}: pass a few form values"
                )
                continue
            try:
                conf = json.loads(raw)
            except json.JSONDecodeError as exc:
                entry.status, entry.detail = "invalid", f"annotation loop_conf is not JSON: {exc}"
                continue
            if not isinstance(conf, dict):
                entry.status, entry.detail = "invalid", "annotation loop_conf must be a JSON object"
                continue
            if ALERTS_MAY_NOT_SET & conf.keys():
                entry.status = "invalid"
                entry.detail = f"annotation loop_conf may not set {sorted(ALERTS_MAY_NOT_SET & conf.keys())}: the retrain guards apply to alerts"
                continue
        name = alert.labels.get("alertname", "alert")
        summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
        # one line of plain text: control characters (a NUL, an ANSI escape) would be refused by the form
        reason = re.sub(r"[\s\x00-\x1f\x7f]+", " ", f"alert {name} {alert.fingerprint}: {summary}").strip()
        entry.run_id = run_id_for(alert)
        entry.conf = {"reason": reason[:MAX_NOTE_CHARS], **conf}
        if alert.generatorURL:
            entry.conf.setdefault("alert_url", alert.generatorURL)
        entry.note = str(entry.conf["reason"])[:MAX_NOTE_CHARS]
    return planned


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute, with bursts of as many. In-process
    (per API-server worker), which is what it is for: a stranger guessing tokens or flooding the
    endpoint is slowed down before anything is read or parsed."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000):
        if per_minute < 1:
            raise ValueError(f"a rate limit of {per_minute} requests a minute admits nothing: use 1 or more")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, client: str) -> float:
        """0 when `client` may go ahead (and it is counted), else the seconds until it may."""
        now = self.clock()
        tokens, last = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1, now)
        if len(self._buckets) > self.max_clients:
            self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        # A bucket that has refilled carries no state worth keeping: many clients cost no memory.
        full = [c for c, (tokens, last) in self._buckets.items() if tokens + (now - last) * self.rate >= self.capacity]
        for client in full:
            del self._buckets[client]
