"""Model health: a read-only page per use case inside the Airflow UI, behind Airflow's own login.

An external view in the UI's navigation ("Model health") opens `/model-health/`, a FastAPI app the
API server mounts. Airflow does not authenticate a plugin's app, so this one requires what the UI's
pages require: a signed-in user allowed to see the website (`requires_access_view(AccessView.WEBSITE)`),
from the UI's session cookie (the view is an iframe of the UI) or a bearer token (`/model-health/api`
for scripts). It reads the registry, the monitoring runs, the serving records, the quarantine zone
and the alerts (`include/health/snapshot.py`), and renders them as one page with no script
(`include/health/page.py`): the serving version and its traffic, served ROC AUC over the windows,
per-feature drift, the versions with their gate decisions, the deployment timeline, quarantined
partitions (with a link to `revalidate`) and recent alerts.
"""

from __future__ import annotations

import json
import os

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import requires_access_view
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

app = FastAPI(title="Loop model health", description=__doc__, dependencies=[Depends(requires_access_view(AccessView.WEBSITE))])


def _snapshot() -> dict:
    from include.health.snapshot import as_json, snapshot
    from include.settings import get_settings
    from include.usecases import get_usecase

    return json.loads(as_json(snapshot(get_settings(), get_usecase())))


@app.get("/", response_class=HTMLResponse)
def page() -> str:
    from include.health.page import render
    from include.settings import get_settings

    base = os.environ.get("AIRFLOW__API__BASE_URL", "").rstrip("/")
    return render(_snapshot(), {"airflow": base, "mlflow": get_settings().mlflow_tracking_uri})


@app.get("/data-docs/{partition}", response_class=HTMLResponse)
def data_docs(partition: str) -> HTMLResponse:
    """GX's Data Docs page of a partition's validation, from the data zones (local or S3)."""
    from fastapi import HTTPException

    from include.health.snapshot import data_docs_page
    from include.usecases import get_usecase

    page = data_docs_page(get_usecase(), partition)
    if page is None:
        raise HTTPException(404, f"no Data Docs for partition {partition!r}: not validated since Data Docs were kept")
    return HTMLResponse(page)


@app.get("/api")
def api() -> JSONResponse:
    return JSONResponse(_snapshot())


class LoopModelHealth(AirflowPlugin):
    name = "loop_model_health"
    fastapi_apps = [{"app": app, "url_prefix": "/model-health", "name": "Loop model health"}]
    external_views = [{"name": "Model health", "href": "model-health/", "destination": "nav", "url_route": "model-health"}]
