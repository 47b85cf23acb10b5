"""What a rollout records on the model version (the registry is the serving version of record):
`deploy.*` tags for a deployment, `deploy.rejected` and `deploy.rolled_back` with their reasons,
each of the latter two with an alert."""

from __future__ import annotations

from datetime import UTC, datetime

from include.alerting.alerts import send_alert
from include.model.registry import connect, tag_version
from include.settings import Settings


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
