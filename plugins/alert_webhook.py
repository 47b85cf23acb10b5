"""Alert webhook: Alertmanager notifications start the DAG each alert names (`include/alerting/webhook.py`).

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

A request is checked in this order, and the body is not read before the token is right: 429 (with
`Retry-After`) past `LOOP_WEBHOOK_RATE_PER_MINUTE` from one client; 503 while no token is
configured (the webhook is off); 401 without the right token; 413 for a body over 1 MiB (counted
as it arrives, whatever Content-Length says); 422 for a body that is not an Alertmanager payload.
Then 200 with one outcome per alert (`created`, `exists`, `resolved`, `refused`, `invalid`).
"""

from __future__ import annotations

import logging
import math
import secrets
from functools import cache
from typing import Annotated

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from include.alerting.webhook import MAX_BODY_BYTES, AlertmanagerPayload, RateLimiter, plan
from include.settings import get_settings

log = logging.getLogger(__name__)

app = FastAPI(title="Loop alert webhook", description=__doc__)


@cache
def _limiter(per_minute: int) -> RateLimiter:
    return RateLimiter(per_minute)


async def _throttle(request: Request) -> None:
    # async: it runs on the event loop, one request at a time, so the buckets need no lock
    per_minute = get_settings().webhook_rate_per_minute
    client = request.client.host if request.client else "unknown"
    if wait := _limiter(per_minute).acquire(client):
        raise HTTPException(
            429,
            f"too many requests from {client}: at most {per_minute} a minute (LOOP_WEBHOOK_RATE_PER_MINUTE)",
            headers={"Retry-After": str(math.ceil(wait))},
        )


async def _authorize(authorization: Annotated[str | None, Header()] = None) -> None:
    token = get_settings().webhook_token
    if not token:
        raise HTTPException(503, "the alert webhook is off: set LOOP_WEBHOOK_TOKEN on the API server")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "a valid `Authorization: Bearer <LOOP_WEBHOOK_TOKEN>` header is required")


async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused (413) as soon as it is over `limit`: a declared Content-Length says so
    before anything is read, and the bytes are counted as they arrive (chunked, or a lying header)."""
    too_large = HTTPException(413, f"the request body is over the limit of {limit} bytes; send fewer alerts per notification")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _payload(request: Request) -> AlertmanagerPayload:
    body = await _read_body(request)
    try:
        return AlertmanagerPayload.model_validate_json(body)
    except ValidationError as exc:
        # FastAPI's own shape (`loc` starts at `body`), without echoing the input back
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        ) from None


# Route dependencies run first and in this order; the payload (the body) is read only after them.
@app.post("/alerts", dependencies=[Depends(_throttle), Depends(_authorize)])
def receive_alerts(payload: Annotated[AlertmanagerPayload, Depends(_payload)]) -> dict:
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
                note=entry.note,
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
