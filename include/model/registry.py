"""MLflow: the tracking server connection, run lookup for idempotent reruns, and model aliases.

The registry is used with aliases (`challenger`, `champion`), never the deprecated stages. Every
version carries tags that lead back to its run; the run carries the lineage (partitions, hashes,
GX results, git commit, Airflow DAG run).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from include.integrity import NATIVE_MODEL_FILE, ModelTampered, model_digest, parse_manifest, verify
from include.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from xgboost import XGBClassifier

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
LIVE = "live"
"""The version serving 100% of traffic, set by the rollout's last step (the record itself, with the
slot and bento, is the registered model's `live` tag: one write, so never half-updated)."""
MODEL_DIGEST = "loop.model_sha256"
MODEL_FILES = "loop.model_files"
"""Run and version tags: the digest of the model's files as the artifact store held them when
training logged them, and their manifest (`include/integrity.py`); packaging checks against them."""


class TrackingServerUnreachable(ConnectionError):
    """The MLflow tracking server did not answer its health check, or stopped answering a call."""


def connect(tracking_uri: str, *, attempts: int = 5, wait_seconds: float = 2.0) -> MlflowClient:
    """Point MLflow at `tracking_uri` after checking the server answers; retries with backoff.

    Every later MLflow request retries and times out as the settings say (MLflow reads its
    variables at each request, so they are set here, once, from the validated settings)."""
    import os

    import mlflow
    import requests

    settings = get_settings()
    os.environ.update(
        {
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings.mlflow_http_timeout_seconds),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.mlflow_http_max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(settings.mlflow_http_backoff_factor),
        }
    )
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


@contextmanager
def naming_the_server(tracking_uri: str) -> Iterator[None]:
    """Around MLflow calls: once MLflow's own retries give up on a server that does not answer
    (refused, timed out, 5xx), fail with TrackingServerUnreachable naming `tracking_uri`."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    try:
        yield
    except (MlflowException, RequestException) as exc:
        cause = _transport_error(exc)
        if cause is None:
            raise
        s = get_settings()
        raise TrackingServerUnreachable(
            f"MLflow tracking server at {tracking_uri} stopped answering ({type(cause).__name__}) after "
            f"{s.mlflow_http_max_retries} retries with backoff, each try timing out after {s.mlflow_http_timeout_seconds}s "
            "(MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT). Bring it back (`make up`) or fix "
            "MLFLOW_TRACKING_URI, then retry the task: it resumes without a second model version."
        ) from exc


def _transport_error(exc: BaseException) -> BaseException | None:
    """The connection failure, timeout or exhausted retries behind `exc` (MLflow wraps them in an
    MlflowException whose cause or context is requests' error), or None."""
    from requests import exceptions

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, exceptions.ConnectionError | exceptions.RetryError | exceptions.Timeout):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


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


def finished_run(
    client: MlflowClient, exp_id: str, identity: dict[str, str], *, has_tag: str | None = None, fail_unfinished: bool = False
) -> Run | None:
    """The newest finished run tagged `identity` (and carrying tag `has_tag`: the mark of a run that
    got as far as recording its outcome), or None: what a rerun reuses instead of doing the work
    twice. With `fail_unfinished`, the unfinished runs newer than it (an interrupted attempt: a
    killed task, a server that stopped answering) are marked FAILED, so none looks in progress."""
    for run in find_runs(client, exp_id, identity):
        if run.info.status == "FINISHED" and (has_tag is None or has_tag in run.data.tags):
            return run
        if fail_unfinished and run.info.status != "FINISHED":
            client.set_terminated(run.info.run_id, "FAILED")
    return None


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


def load_judged_model(client: MlflowClient, model_name: str, version: str) -> XGBClassifier:
    """The classifier of registered `version`, read from XGBoost's native file once its files are
    shown to be the ones training recorded (`loop.model_sha256`): what the gate scores, the
    reference profile is built from and infra validation compares a slot with are the very files
    packaging will serve. Nothing in the directory decides what code runs (MLmodel is not read);
    ModelTampered, naming the version and the files, otherwise."""
    import tempfile
    from pathlib import Path

    import mlflow
    import xgboost

    mv = client.get_model_version(model_name, str(version))
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(model_name, str(version)), dst_path=tmp
        )
        verify_version_files(local, mv)
        model = xgboost.XGBClassifier()
        model.load_model(Path(local) / NATIVE_MODEL_FILE)
    return model


def verify_version_files(directory: str | Path, mv: ModelVersion) -> None:
    """ModelTampered unless the files in `directory` have the digest training recorded on the
    model version `mv`; a version without one is refused too, printing the digest an operator
    may vouch with once they have checked the files."""
    what = f"{mv.name} version {mv.version} (run {mv.run_id})"
    expected = mv.tags.get(MODEL_DIGEST)
    if not expected:
        raise ModelTampered(
            f"{what} has no {MODEL_DIGEST} tag (registered before digests were recorded, or not by the train DAG): "
            f"nothing says which files the gate judged. Retrain it (trigger the train DAG); or, having checked its "
            f"files yourself, vouch for them: tag the version {MODEL_DIGEST} with {model_digest(directory)}"
        )
    verify(directory, expected, what, parse_manifest(mv.tags.get(MODEL_FILES)))


def timestamp() -> str:
    """Now, as the registry's tags record times (UTC, ISO 8601, seconds)."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")
