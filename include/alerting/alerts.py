"""Alerts: what a person must look at, with the links they need, sent to every configured sink.

Kinds: `drift`, `decay` (monitor), `quarantined` (data gate), `gate_rejected` (champion gate),
`infra_validation_failed`, `rollback` (rollout), `task_failed` (any task, after its retries), and
from the serving guard `serving_restarted`, `serving_down`, `proxy_restarted`, `canary_abandoned`,
`routing_restored`.

Sinks:
* always, the local JSON-lines file `<state>/alerts.jsonl` (the embedded runtime's sink; also
  logged at WARNING);
* the sinks registered with `add_sink`: inside an Airflow task, Airflow's provider notifiers
  configured through Airflow connections (`include/airflow_glue.py`): a generic webhook (HTTP provider, `LOOP_ALERT_HTTP_CONN_ID`), Slack
  (`LOOP_ALERT_SLACK_CONN_ID`), mail (SMTP provider, `LOOP_ALERT_EMAIL`). A sink that fails is
  logged and never fails the task that alerted.

Links: `airflow` (the task in the Airflow UI, from the task's own context), `mlflow` (the run that
explains the alert) and `report` (its report or plot), whichever apply.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from include.settings import Settings

log = logging.getLogger(__name__)

Sink = Callable[[Settings, dict], None]
_SINKS: dict[str, Sink] = {}


def add_sink(name: str, sink: Sink) -> None:
    """Send every later alert to `sink` too (registering a name again replaces its sink)."""
    _SINKS[name] = sink


def airflow_task_link() -> str | None:
    """The current task's page in the Airflow UI, from the context Airflow exports to a task
    process (`AIRFLOW_CTX_*`) and the API server's public base URL; None outside a task."""
    dag_id, run_id = os.environ.get("AIRFLOW_CTX_DAG_ID"), os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    base = os.environ.get("AIRFLOW__API__BASE_URL", "").rstrip("/")
    if not (dag_id and run_id and base):
        return None
    link = f"{base}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"
    task_id = os.environ.get("AIRFLOW_CTX_TASK_ID")
    return f"{link}/tasks/{quote(task_id)}" if task_id else link


def mlflow_run_link(settings: Settings, run_id: str, experiment_id: str) -> str | None:
    base = settings.mlflow_tracking_uri.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base.startswith("http") else None


def mlflow_artifact_link(settings: Settings, run_id: str, path: str) -> str | None:
    """A direct download of one artifact of a run, served by the tracking server."""
    base = settings.mlflow_tracking_uri.rstrip("/")
    return f"{base}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}" if base.startswith("http") else None


def send_alert(settings: Settings, kind: str, message: str, details: dict | None = None, links: dict | None = None) -> dict:
    links = {k: v for k, v in (links or {}).items() if v}
    if "airflow" not in links and (here := airflow_task_link()):
        links["airflow"] = here
    alert = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "kind": kind,
        "message": message,
        "links": links,
        "details": details or {},
    }
    log.warning("ALERT %s: %s %s", kind, message, " ".join(f"{k}={v}" for k, v in links.items()))
    path = settings.state_dir / "alerts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(alert, default=str) + "\n")
    for name, sink in _SINKS.items():
        try:
            sink(settings, alert)
        except Exception:  # the alert is in the local sink; alerting must not fail the caller
            log.exception("alert sink %s failed", name)
    return alert


def read_alerts(settings: Settings) -> list[dict]:
    path = settings.state_dir / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
