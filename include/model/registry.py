"""MLflow: the tracking server connection, run lookup for idempotent reruns, and model aliases.

The registry is used with aliases (`challenger`, `champion`), never the deprecated stages. Every
version carries tags that lead back to its run; the run carries the lineage (partitions, hashes,
GX results, git commit, Airflow DAG run).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
LIVE = "live"
"""The version serving 100% of traffic, set by the rollout's last step (the record itself, with the
slot and bento, is the registered model's `live` tag: one write, so never half-updated)."""


class TrackingServerUnreachable(ConnectionError):
    """The MLflow tracking server did not answer its health check."""


def connect(tracking_uri: str, *, attempts: int = 5, wait_seconds: float = 2.0) -> MlflowClient:
    """Point MLflow at `tracking_uri` after checking the server answers; retries with backoff."""
    import os

    import mlflow
    import requests

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars flood task logs
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        error: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                requests.get(url, timeout=5).raise_for_status()
                break
            except requests.RequestException as exc:
                error = exc
                log.warning("MLflow at %s not answering (attempt %d/%d): %s", tracking_uri, attempt, attempts, exc)
                if attempt < attempts:
                    time.sleep(wait_seconds * 2 ** (attempt - 1))
        else:
            raise TrackingServerUnreachable(
                f"MLflow tracking server at {tracking_uri} is unreachable after {attempts} attempts "
                f"({type(error).__name__}: {error}). Start it (`make up`) or fix MLFLOW_TRACKING_URI."
            )
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by another task
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_runs(client: MlflowClient, exp_id: str, tags: dict[str, str]) -> list[Run]:
    """Runs of the experiment whose tags equal `tags`, newest first."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"])


def version_of_run(client: MlflowClient, model_name: str, run_id: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def alias_version(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or _absent(client, model_name, exc):
            return None
        raise


def tag_version(client: MlflowClient, model_name: str, version: str, tags: dict[str, object]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))


def model_tag(client: MlflowClient, model_name: str, key: str) -> str | None:
    """A tag of the registered model, or None (also when the model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model_name).tags.get(key)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or _absent(client, model_name, exc):
            return None
        raise


def _absent(client: MlflowClient, model_name: str, error) -> bool:
    """Behind MLflow's basic-auth app a model that does not exist yet answers 403 (its permission
    cannot be looked up), not 404: absent if the search, which every user may run, finds none."""
    if error.error_code != "PERMISSION_DENIED":
        return False
    return not client.search_registered_models(filter_string=f"name = '{model_name}'")
