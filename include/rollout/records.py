"""What a rollout records in the model registry, the serving version of record that every worker
and host can read: the live deployment (`live`: the registered model's tag with slot, bento tag and
version, and the `live` alias on that version), `deploy.*` tags for a deployment, `deploy.rejected`
and `deploy.rolled_back` with their reasons, each of the latter two with an alert."""

from __future__ import annotations

import json

from include.alerting.alerts import send_alert
from include.model.registry import LIVE, connect, model_tag, tag_version
from include.model.registry import timestamp as now
from include.settings import Settings


def tag(settings: Settings, model_name: str, version: str, tags: dict) -> None:
    tag_version(connect(settings.mlflow_tracking_uri), model_name, version, tags)


def reject(settings: Settings, model_name: str, version: str, reason: str, details: dict) -> None:
    """Tag the version `deploy.rejected` with the reason and alert; it never got traffic."""
    tag(settings, model_name, version, {"deploy.rejected": reason[:4000], "deploy.rejected_at": now()})
    send_alert(settings, "infra_validation_failed", f"{model_name} v{version} rejected before any traffic: {reason}", details)


def rolled_back(settings: Settings, model_name: str, version: str, slot: str, reason: str, restored: str | None) -> None:
    """Tag the version `deploy.rolled_back` with the reason and alert."""
    tag(settings, model_name, version, {"deploy.rolled_back": reason[:4000], "deploy.rolled_back_at": now()})
    send_alert(
        settings,
        "rollback",
        f"{model_name} v{version} rolled back from slot {slot}: {reason}",
        {"slot": slot, "restored": restored},
    )


def record_live(settings: Settings, live: dict) -> None:
    """Record `live` (slot, bento_tag, model_name, model_version, deployed_at, dag_run_id) as what
    serves 100% of traffic: one tag write on the registered model, then the `live` alias."""
    client = connect(settings.mlflow_tracking_uri)
    client.set_registered_model_tag(live["model_name"], LIVE, json.dumps(live, sort_keys=True))
    client.set_registered_model_alias(live["model_name"], LIVE, live["model_version"])


def read_live(settings: Settings, model_name: str) -> dict | None:
    """The live deployment of `model_name` as recorded by `record_live`, or None."""
    doc = model_tag(connect(settings.mlflow_tracking_uri), model_name, LIVE)
    return json.loads(doc) if doc else None


def clear_live(settings: Settings, model_name: str) -> None:
    """Forget the live deployment (nothing serves): the tag and the alias."""
    client = connect(settings.mlflow_tracking_uri)
    if model_tag(client, model_name, LIVE) is not None:
        client.delete_registered_model_tag(model_name, LIVE)
        client.delete_registered_model_alias(model_name, LIVE)
