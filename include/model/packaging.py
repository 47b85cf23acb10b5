"""Package a registered model version as a bento: the model in BentoML's store, the service, the lock.

One bento per model version, tagged `<model name>-service:v<version>`: building a version that
already has a bento reuses it. A bento carries the serving code only (`BENTO_INCLUDE`) with its
own lock (`include/serving/requirements.txt`, about 100 packages instead of the project's 270). The model is imported from the MLflow registry
(`bentoml.mlflow.import_model`, which keeps the MLflow model directory and so XGBoost's native
`.ubj` file; nothing is pickled). BentoML's own locking is off, so a build never runs a resolver
against the index. Labels carry
the lineage back to MLflow and the data.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from include.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import bentoml

log = logging.getLogger(__name__)

SERVICE = "include.serving.service:Predictor"
BENTO_PREFIX = "bentos"
BENTO_INCLUDE = [
    "include/__init__.py",
    "include/settings.py",
    "include/usecases/*.py",
    "include/serving/*.py",
    "include/data/__init__.py",
    "include/data/storage.py",
]
"""What a bento carries: the serving package and what it imports (the use cases, the settings, the
storage layer for the inference log), nothing of training, monitoring, rollout or Airflow; a test
checks this against the service's import closure."""
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
    """The registry version in the BentoML model store (imported once, then reused)."""
    from include.model.registry import connect

    bentoml = import_bentoml(settings)
    tag = model_tag(model_name, version)
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        pass
    client = connect(settings.mlflow_tracking_uri)
    mv = client.get_model_version(model_name, version)
    log.info("importing models:/%s/%s (run %s) into the BentoML model store as %s", model_name, version, mv.run_id, tag)
    return bentoml.mlflow.import_model(
        tag,
        model_uri=f"models:/{model_name}/{version}",
        labels={"model_name": model_name, "model_version": str(version), "mlflow_run_id": mv.run_id},
        metadata={"mlflow_source": mv.source},
    )


def lineage_labels(settings: Settings, model_name: str, version: str) -> dict[str, str]:
    from include.model.registry import connect

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
    try:
        bento = bentoml.bentos.get(tag)
        reused = True
    except bentoml.exceptions.NotFound:
        model = import_model(settings, model_name, version)
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
