"""Alert webhook: Alertmanager notifications start the DAG each alert names (`include/webhook.py`).

Mounted in the Airflow API server as a FastAPI app (an Airflow plugin): `POST /loop/alerts` with
`Authorization: Bearer $LOOP_WEBHOOK_TOKEN`. Alertmanager's receiver:

    receivers:
      - name: loop
        webhook_configs:
          - url: http://<airflow-api-server>:8080/loop/alerts
            http_config: {authorization: {credentials_file: /etc/alertmanager/loop-token}}

Runs are created through Airflow's own trigger API (`airflow.api.common.trigger_dag`, what the
REST endpoint calls), so the DAG's params form validates the conf. The alert's fingerprint and
start make the run id: a repeated notification finds its run and starts nothing.
Answers: 200 with one outcome per alert (`created`, `exists`, `resolved`, `refused`, `invalid`);
401 without the right token; 503 while no token is configured (the webhook is off).
"""

from __future__ import annotations

import logging
import secrets

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Header, HTTPException

from include.alerting.webhook import AlertmanagerPayload, plan
from include.settings import get_settings

log = logging.getLogger(__name__)

app = FastAPI(title="Loop alert webhook", description=__doc__)


def _authorize(authorization: str | None) -> None:
    token = get_settings().webhook_token
    if not token:
        raise HTTPException(503, "the alert webhook is off: set LOOP_WEBHOOK_TOKEN on the API server")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "a valid `Authorization: Bearer <LOOP_WEBHOOK_TOKEN>` header is required")


@app.post("/alerts")
def receive_alerts(payload: AlertmanagerPayload, authorization: str | None = Header(default=None)) -> dict:
    _authorize(authorization)
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists, ParamValidationError
    from airflow.utils.types import DagRunTriggeredByType

    outcomes = []
    for entry in plan(payload, get_settings().webhook_dags):
        outcome = {"fingerprint": entry.fingerprint, "dag_id": entry.dag_id, "dag_run_id": entry.run_id}
        if entry.status != "trigger":
            outcomes.append(outcome | {"status": entry.status, "detail": entry.detail})
            continue
        try:
            trigger_dag(
                entry.dag_id,
                run_id=entry.run_id,
                conf=entry.conf,
                triggered_by=DagRunTriggeredByType.REST_API,
                triggering_user_name="alert-webhook",
                note=entry.conf["reason"],
            )
            status, detail = "created", ""
        except DagRunAlreadyExists:
            status, detail = "exists", "this alert already started that run"
        except DagNotFound as exc:
            status, detail = "refused", str(exc)
        except (ParamValidationError, ValueError) as exc:
            status, detail = "invalid", str(exc)
        log.info("alert %s → %s %s: %s %s", entry.fingerprint, entry.dag_id, entry.run_id, status, detail)
        outcomes.append(outcome | {"status": status, "detail": detail})
    return {"runs": outcomes}


class LoopAlertWebhook(AirflowPlugin):
    name = "loop_alert_webhook"
    fastapi_apps = [{"app": app, "url_prefix": "/loop", "name": "Loop alert webhook"}]
