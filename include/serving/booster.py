"""The booster a slot serves, read from XGBoost's native file once the model directory is shown to
be the one packaging checked against the registry.

The BentoML model (imported by `include/model/packaging.py`) keeps the MLflow model directory as
`mlflow_model/`, its digest as the label `model_sha256` and its manifest as the metadata
`model_files` (`include/integrity.py`). Nothing in the directory decides what code runs: the class
is fixed here, MLmodel is not read and nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from include.integrity import DIGEST_LABEL, FILES_METADATA, NATIVE_MODEL_FILE, ModelTampered, parse_manifest, verify

if TYPE_CHECKING:
    import bentoml
    import xgboost

MLFLOW_DIR = "mlflow_model"
"""Where `bentoml.mlflow.import_model` keeps the MLflow model in a BentoML model."""
MODEL_FILE = NATIVE_MODEL_FILE


def load_booster(model: bentoml.Model) -> xgboost.Booster:
    """The booster of `model` (a BentoML model from the store), its directory verified first
    against the digest label; ModelTampered, naming the model and the files, if it differs."""
    import xgboost

    what = f"BentoML model {model.tag}"
    expected = model.info.labels.get(DIGEST_LABEL)
    if not expected:
        raise ModelTampered(
            f"{what} has no {DIGEST_LABEL} label, so nothing says its files are the ones the gate judged: "
            "it was not imported by include.model.packaging, or by a release before digests. Deploy the version again: "
            "the deploy DAG's build_bento imports and checks it afresh"
        )
    directory = Path(model.path_of(MLFLOW_DIR))
    verify(directory, expected, what, parse_manifest(model.info.metadata.get(FILES_METADATA)))
    classifier = xgboost.XGBClassifier()  # what training fitted; the sklearn wrapper's settings load with it
    classifier.load_model(directory / MODEL_FILE)
    return classifier.get_booster()
