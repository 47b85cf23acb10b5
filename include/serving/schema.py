"""Request and response schemas of the prediction service, generated from the use case's contract.

The same contract that the GX gate enforces on landed data bounds every request field: its type,
its range, its allowed values and whether it may be null. Unknown fields are refused. A client
mistake therefore fails pydantic validation, which the service turns into a 400 naming the field.

The published OpenAPI document (`/docs.json`, OpenAPI 3.0) is generated from these same models, so
it carries every bound the service enforces: `minimum`/`maximum` of numbers, the `enum` of each
categorical, `maxLength` of text, `maxItems` of a batch, and `nullable` of optional inputs.

Event time: a datetime input (the contract's event time, e.g. `time_hour`) must carry a UTC offset
and lie between the start of the use case's calendar (no model and no monitoring window covers
anything earlier) and `LOOP_SERVING_MAX_LEAD_HOURS` after the serving host's clock. The lower
bound is not "now minus something": the demo replays 2013 at today's wall clock, so the service
cannot tell a replayed record from a stale one by the clock. Stale records are instead kept out
of the inference log (see `include/serving/service.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from include.usecases import Column, UseCase

MAX_BATCH = 1000
"""Records per batch request; a bigger batch is refused with 400 naming `records` (split it)."""
MAX_TEXT = 200
"""Characters of a free-text input (an input with a fixed vocabulary is an enum instead)."""


@dataclass(frozen=True)
class EventWindow:
    """The datetimes a request may carry: from `earliest` to `max_lead` after the serving clock."""

    earliest: datetime
    max_lead: timedelta

    def check(self, value: datetime) -> datetime:
        try:
            utc = value.astimezone(UTC)
        except OverflowError:  # year 1 at +14:00 is year 0 in UTC
            raise ValueError("is out of the range of datetimes") from None
        if utc < self.earliest:
            raise ValueError(f"is before {self.earliest.isoformat()}, the start of the use case's data")
        latest = datetime.now(UTC) + self.max_lead
        if utc > latest:
            raise ValueError(
                f"is more than {self.max_lead.total_seconds() / 3600:g} h after the serving clock "
                f"({latest - self.max_lead:%Y-%m-%dT%H:%M}Z; LOOP_SERVING_MAX_LEAD_HOURS)"
            )
        return value

    def describe(self) -> str:
        return (
            f"ISO 8601 date-time with a UTC offset, from {self.earliest.isoformat()} "
            f"to {self.max_lead.total_seconds() / 3600:g} h after the serving host's clock."
        )


def _iso_text(value: Any) -> Any:
    # pydantic would take a number as Unix time; the document says a date-time string
    if isinstance(value, int | float):
        raise ValueError("must be an ISO 8601 date-time string, not a number")
    return value


def _field_type(col: Column, window: EventWindow) -> Any:
    if col.allowed:
        return Literal[col.allowed]
    if col.kind == "int":
        return Annotated[int, Field(strict=True, ge=col.min, le=col.max)]
    if col.kind == "float":
        # JSON has one number type: an integer is a fine float; strings, NaN and infinity are not.
        return Annotated[float, Field(strict=True, ge=col.min, le=col.max, allow_inf_nan=False)]
    if col.kind == "datetime":
        return Annotated[
            AwareDatetime, BeforeValidator(_iso_text), AfterValidator(window.check), Field(description=window.describe())
        ]
    return Annotated[str, Field(strict=True, max_length=MAX_TEXT)]


def _nullable_as_openapi30(schema: dict[str, Any]) -> None:
    """OpenAPI 3.0 (what BentoML publishes) has no null type: pydantic's `anyOf: [X, {type: null}]`
    becomes X with `nullable: true`. BentoML's inline request schema keeps only the first member
    of an `anyOf`, so without this the document would say that optional inputs cannot be null."""
    for prop in schema.get("properties", {}).values():
        members = prop.get("anyOf", [])
        rest = [m for m in members if m != {"type": "null"}]
        if len(members) == 2 and len(rest) == 1:
            del prop["anyOf"]
            prop.update(rest[0], nullable=True)
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]


def request_model(usecase: UseCase, max_lead_hours: float | None = None) -> type[BaseModel]:
    """The pydantic model of one request record: the use case's serving inputs plus a request id.
    Datetimes may lie up to `max_lead_hours` (default: LOOP_SERVING_MAX_LEAD_HOURS) ahead of now."""
    if not usecase.serving_inputs or usecase.encode_records is None:
        raise ValueError(f"use case {usecase.name!r} defines no serving_inputs/encode_records: it cannot be served")
    if max_lead_hours is None:
        from include.settings import get_settings

        max_lead_hours = get_settings().serving_max_lead_hours
    window = EventWindow(usecase.calendar.start_datetime.astimezone(UTC), timedelta(hours=max_lead_hours))
    fields: dict[str, Any] = {
        "request_id": (
            str | None,
            Field(None, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$", description="Echoed back and logged; generated if absent."),
        )
    }
    for name in usecase.serving_inputs:
        col = usecase.contract.column(name)
        typ = _field_type(col, window)
        fields[name] = (typ | None, None) if col.nullable else (typ, ...)
    return create_model(
        f"{usecase.name.title().replace('_', '')}Record",
        __config__=ConfigDict(extra="forbid", title=f"{usecase.name} record", json_schema_extra=_nullable_as_openapi30),
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
