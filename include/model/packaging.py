"""Package a registered model version as a bento: the model in BentoML's store, the service, the lock.

One bento per model version, tagged `<model name>-service:v<version>`: building a version that
already has a bento reuses it. A bento carries the serving code only (`BENTO_INCLUDE`) with its
own lock (`include/serving/requirements.txt`, about 100 packages instead of the project's 270). The model is imported from the MLflow registry
(`bentoml.mlflow.import_model`, which keeps the MLflow model directory and so XGBoost's native
`.ubj` file; nothing is pickled). BentoML's own locking is off, so a build never runs a resolver
against the index. Labels carry
the lineage back to MLflow and the data.

Supply chain (`include/integrity.py`): the imported files must have the digest training recorded
on the version (`loop.model_sha256`); the BentoML model keeps it as its label, which the slot checks
before loading. A copy that differs, or a version without the tag (registered before digests were
recorded), is refused: the copy is deleted, the version tagged `deploy.rejected`, and the build
fails with ModelTampered naming the version and the files (no retry: the same files fail again).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from include.integrity import DIGEST_LABEL, FILES_METADATA, ModelTampered
from include.model.registry import (
    MODEL_DIGEST,
    MODEL_FILES,
    connect,
    naming_the_server,
    tag_version,
    timestamp,
    verify_version_files,
)
from include.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import bentoml

log = logging.getLogger(__name__)

SERVICE = "include.serving.service:Predictor"
BENTO_PREFIX = "bentos"
BENTO_INCLUDE = [
    "include/__init__.py",
    "include/settings.py",
    "include/outcomes.py",
    "include/integrity.py",
    "include/usecases/*.py",
    "include/serving/*.py",
    "include/data/__init__.py",
    "include/data/storage.py",
    "include/data/inference_layout.py",
]
"""What a bento carries: the serving package and what it imports (the use cases, the settings, the
model digest check, the storage layer and the inference log's layout), nothing of training, monitoring,
rollout or Airflow; a test checks this against the service's import closure."""
SERVING_LOCK = "include/serving/requirements.txt"
"""The bento's own lock, resolved from `include/serving/requirements.in` against the project's."""


def import_bentoml(settings: Settings):
    """bentoml, with its home (model and bento stores) under the state directory unless
    BENTOML_HOME says otherwise; it must be set before bentoml is first imported."""
    os.environ.setdefault("BENTOML_HOME", str(settings.bentoml_home))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml

    return bentoml


def bento_tag(model_name: str, version: str) -> str:
    return f"{model_name}-service:v{version}"


def model_tag(model_name: str, version: str) -> str:
    return f"{model_name}:v{version}"


def import_model(settings: Settings, model_name: str, version: str) -> bentoml.Model:
    """The registry version in the BentoML model store, its files checked against the digest
    training recorded on the version: imported once, then reused (and checked again)."""
    bentoml = import_bentoml(settings)
    tag = model_tag(model_name, version)
    with naming_the_server(settings.mlflow_tracking_uri):
        client = connect(settings.mlflow_tracking_uri)
        mv = client.get_model_version(model_name, version)
        model = _stored_model(bentoml, tag) or _import(bentoml, client, mv, tag)
        try:
            verify_version_files(model.path_of(bentoml.mlflow.MLFLOW_MODEL_FOLDER), mv)
        except ModelTampered as exc:
            bentoml.models.delete(tag)
            reason = f"{exc}. Its BentoML copy is deleted: this version is not served."
            tag_version(client, model_name, version, {"deploy.rejected": reason[:4000], "deploy.rejected_at": timestamp()})
            raise ModelTampered(reason) from exc
    return model


def _stored_model(bentoml, tag: str) -> bentoml.Model | None:
    """The model in the store, unless absent or imported before digests were kept (then deleted)."""
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None
    if DIGEST_LABEL in model.info.labels:
        return model
    log.warning("%s was imported before model digests were kept: importing it again", tag)
    bentoml.models.delete(tag)
    return None


def _import(bentoml, client, mv, tag: str) -> bentoml.Model:
    """Copy the version's files as the artifact store holds them into the BentoML store, with the
    version's digest as label (the `models:/` URI would add MLflow's `registered_model_meta` note
    to the directory, a file training never logged)."""
    uri = client.get_model_version_download_uri(mv.name, mv.version)
    log.info("importing %s (models:/%s/%s, run %s) into the BentoML model store as %s", uri, mv.name, mv.version, mv.run_id, tag)
    bentoml.mlflow.import_model(
        tag,
        model_uri=uri,
        labels={
            "model_name": mv.name,
            "model_version": str(mv.version),
            "mlflow_run_id": mv.run_id,
            DIGEST_LABEL: mv.tags.get(MODEL_DIGEST, ""),  # what a slot checks its copy against
        },
        metadata={"mlflow_source": mv.source, FILES_METADATA: mv.tags.get(MODEL_FILES, "")},
    )
    return bentoml.models.get(tag)  # the store's copy, what slots read (import_model returns a temporary one)


def lineage_labels(settings: Settings, model_name: str, version: str) -> dict[str, str]:
    mv = connect(settings.mlflow_tracking_uri).get_model_version(model_name, version)
    return {
        "model_name": model_name,
        "model_version": str(version),
        "mlflow_run_id": mv.run_id,
        "data_window": mv.tags.get("loop.data_window", "unknown"),
        "git_commit": mv.tags.get("loop.git_commit", "unknown"),
        "usecase": settings.usecase,
    }


def build_bento(settings: Settings, model_name: str, version: str) -> dict:
    """Build (or find) the bento of `model_name` version `version`; export it to S3 when the
    storage layer is S3. Returns references: bento tag, model tag, labels, export URI."""
    bentoml = import_bentoml(settings)
    tag = bento_tag(model_name, version)
    model = import_model(settings, model_name, version)  # checked on every build, a found bento's too
    try:
        bento = bentoml.bentos.get(tag)
        reused = True
    except bentoml.exceptions.NotFound:
        labels = lineage_labels(settings, model_name, version)
        log.info("building bento %s from %s with labels %s", tag, SERVICE, labels)
        bento = bentoml.bentos.build(
            SERVICE,
            name=tag.split(":")[0],
            version=tag.split(":")[1],
            labels=labels,
            description=f"{model_name} version {version}, served by {SERVICE}",
            include=BENTO_INCLUDE,
            python={"requirements_txt": SERVING_LOCK, "lock_packages": False},
            args={
                "model_tag": str(model.tag),
                "model_version": str(version),
                "usecase": settings.usecase,
                "threshold": str(settings.operating_threshold),
            },
            build_ctx=str(PROJECT_ROOT),
        )
        reused = False
    export_uri = export_bento(settings, bentoml, str(bento.tag))
    return {"bento_tag": str(bento.tag), "labels": dict(bento.info.labels), "reused": reused, "export_uri": export_uri}


def export_bento(settings: Settings, bentoml, tag: str) -> str | None:
    """Copy the bento archive to `bentos/<name>/<version>.bento` in S3 storage (once)."""
    if not settings.storage_uri.startswith("s3://"):
        return None
    from include.data.storage import ObjectExistsError, get_storage

    storage = get_storage()
    name, version = tag.split(":")
    key = f"{BENTO_PREFIX}/{name}/{version}.bento"
    if storage.exists(key):
        return storage.uri(key)
    with tempfile.TemporaryDirectory() as tmp:
        path = bentoml.export_bento(tag, str(Path(tmp) / f"{version}.bento"))
        try:
            return storage.write_bytes(key, Path(path).read_bytes(), create_only=True)
        except ObjectExistsError:
            return storage.uri(key)
