"""Alerts: what a person must look at, sent to every configured sink.

The default sink is a local JSON-lines file (`<state>/alerts.jsonl`), so the embedded runtime and
the tests can see every alert; each alert is also logged at WARNING.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from include.config import Settings

log = logging.getLogger(__name__)


def send_alert(settings: Settings, kind: str, message: str, details: dict | None = None) -> dict:
    alert = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "kind": kind, "message": message, "details": details or {}}
    log.warning("ALERT %s: %s", kind, message)
    path = settings.state_dir / "alerts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(alert, default=str) + "\n")
    return alert


def read_alerts(settings: Settings) -> list[dict]:
    path = settings.state_dir / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
