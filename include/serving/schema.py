"""Request and response schemas of the prediction service, generated from the use case's contract.

The same contract that the GX gate enforces on landed data bounds every request field: its type,
its range, its allowed values and whether it may be null. Unknown fields are refused. A client
mistake therefore fails pydantic validation, which the service turns into a 4xx naming the field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

from include.usecases import Column, UseCase

MAX_BATCH = 1000
"""Records per batch request; a bigger batch is refused with 422 (split it)."""


def _field_type(col: Column) -> Any:
    if col.allowed:
        return Literal[col.allowed]
    if col.kind == "int":
        return Annotated[StrictInt, Field(ge=col.min, le=col.max)]
    if col.kind == "float":
        # JSON has one number type: an integer is a fine float; strings, NaN and infinity are not.
        return Annotated[StrictFloat | StrictInt, Field(ge=col.min, le=col.max, allow_inf_nan=False)]
    if col.kind == "datetime":
        return AwareDatetime
    return StrictStr


def request_model(usecase: UseCase) -> type[BaseModel]:
    """The pydantic model of one request record: the use case's serving inputs plus a request id."""
    if not usecase.serving_inputs or usecase.encode_records is None:
        raise ValueError(f"use case {usecase.name!r} defines no serving_inputs/encode_records: it cannot be served")
    fields: dict[str, Any] = {
        "request_id": (
            str | None,
            Field(None, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$", description="Echoed back and logged; generated if absent."),
        )
    }
    for name in usecase.serving_inputs:
        col = usecase.contract.column(name)
        typ = _field_type(col)
        fields[name] = (typ | None, None) if col.nullable else (typ, ...)
    return create_model(
        f"{usecase.name.title().replace('_', '')}Record",
        __config__=ConfigDict(extra="forbid", title=f"{usecase.name} record"),
        **fields,
    )


class Prediction(BaseModel):
    request_id: str
    probability: float = Field(description="Model score: the probability of the positive class.")
    decision: bool = Field(description="probability >= threshold")
    threshold: float
    model_version: str = Field(description="Registered MLflow model version that scored the record.")


def request_bodies(usecase: UseCase, df) -> list[dict]:
    """Rows of `df` as JSON-ready request bodies: the use case's serving inputs, full precision."""
    columns = df[list(usecase.serving_inputs)]
    return json.loads(columns.to_json(orient="records", date_format="iso", date_unit="us", double_precision=15))
