"""A week of requests and the steps of a serving worker, shared by the tests of the inference log's
writer (`tests/unit/test_serving_inference_log.py`) and its readers (`tests/unit/test_data_inference_log.py`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from include.data.inference_log import read_inference_log
from include.serving.inference_log import InferenceLog
from include.serving.schema import request_bodies, request_model

START, END = datetime(2013, 2, 4, tzinfo=UTC), datetime(2013, 2, 11, tzinfo=UTC)


def served_records(flights, df) -> list[dict]:
    """The rows of `df` as the service hands them to the log: validated, each with its own request id."""
    Record = request_model(flights)
    return [Record.model_validate(r).model_dump() | {"request_id": f"r{i}"} for i, r in enumerate(request_bodies(flights, df))]


def hand_over(sink: InferenceLog, flights, records: list[dict], size: int = 100) -> None:
    """What the service does: one `append` per request of `size` records."""
    for i in range(0, len(records), size):
        chunk = records[i : i + size]
        sink.append(chunk, flights.encode_records(chunk), [0.5] * len(chunk), [True] * len(chunk))


def logged_ids(flights, storage) -> list[str]:
    log = read_inference_log(flights, START - timedelta(days=1), END + timedelta(days=1), storage)
    return sorted(log["request_id"]) if len(log) else []


def event_days(flights, records) -> set:
    return {r[flights.contract.event_time].astimezone(UTC).date() for r in records}
