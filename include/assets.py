"""Every Asset of the loop, declared once; producers and consumers import these objects.

validated data ──► train ──► champion model ──► deploy ──► deployment (serving)
"""

from __future__ import annotations

from airflow.sdk import Asset

from include.config import get_settings

_usecase = get_settings().usecase

VALIDATED_DATA = Asset(name=f"{_usecase}.validated_data", uri=f"loop://{_usecase}/validated", group="data")
"""A partition passed the gate; event extra: partition id, interval, validated URI and hash."""

CHAMPION_MODEL = Asset(name=f"{_usecase}.champion_model", uri=f"loop://{_usecase}/champion", group="model")
"""The `champion` alias moved; event extra: model name, version, MLflow run id."""

DEPLOYMENT = Asset(name=f"{_usecase}.deployment", uri=f"loop://{_usecase}/serving", group="serving")
"""A model version took 100% of traffic on the serving entry; event extra: version, bento tag, slot."""
