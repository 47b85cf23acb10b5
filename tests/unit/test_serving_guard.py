"""The request guard (an ASGI middleware) driven directly: what it refuses before the service
parses anything, and that what it lets through reaches the service byte for byte."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from include.serving.guard import BENTOML_HTTP_LOGGER, DRAIN_FACTOR, ClientErrorsInOneLine, RequestGuard
from include.settings import Settings

LIMIT = 1000


class Echo:
    """The app behind the guard: records whether it was called and the body it read."""

    def __init__(self):
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(method="POST", headers: dict[str, str] | None = None, chunks=(b"{}",), limit: int = LIMIT, stall: bool = False):
    """One request through the guard: (status, JSON or text body, the bodies the app read, the
    number of chunks the guard pulled). `stall`: after the chunks, the client sends nothing more."""
    app = Echo()
    pulled = 0
    pending = list(chunks)

    async def receive():
        nonlocal pulled
        if not pending:
            if stall:
                await asyncio.Event().wait()
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": pending.pop(0), "more_body": stall or bool(pending)}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    asyncio.run(
        RequestGuard(app, max_body_bytes=limit, body_seconds=0.2)(
            {"type": "http", "method": method, "path": "/predict", "headers": raw}, receive, send
        )
    )
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, (json.loads(body) if status != 200 else body), app.bodies, pulled


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/vnd.bentoml+pickle",
        "application/jsonx",
        "json",
    ],
)
def test_a_body_that_is_not_json_is_refused_with_415_before_the_service_sees_it(content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, answer, seen, _ = call(headers=headers)
    assert status == 415 and not seen
    assert "application/json" in answer["error"]


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON", "application/json; charset=utf-8"])
def test_json_of_any_spelling_goes_through_unchanged(content_type):
    body = json.dumps({"x": "é" * 10}).encode()
    status, _, seen, _ = call(headers={"Content-Type": content_type}, chunks=[body[:5], body[5:]])
    assert status == 200 and seen == [body]


def test_a_declared_length_over_the_limit_is_refused_and_the_body_dropped_not_kept():
    """The service never sees it; the guard reads the rest of it only to drop it, so the client
    (or a proxy still writing it) gets the 413 instead of a reset connection."""
    chunks = [b"x" * 400] * 4
    status, answer, seen, pulled = call(headers={**JSON, "Content-Length": str(LIMIT + 1)}, chunks=chunks)
    assert status == 413 and not seen and pulled == len(chunks)
    assert str(LIMIT) in answer["error"] and "LOOP_SERVING_MAX_BODY_BYTES" in answer["error"]


def test_a_declared_length_far_over_the_limit_is_refused_unread():
    declared = DRAIN_FACTOR * LIMIT + 1
    status, _, seen, pulled = call(headers={**JSON, "Content-Length": str(declared)}, chunks=[b"x" * 400] * 4)
    assert status == 413 and not seen and pulled == 0


@pytest.mark.parametrize("declared", [None, "10"], ids=["chunked", "lying content-length"])
def test_a_streamed_body_is_cut_off_at_the_limit_whatever_the_header_says(declared):
    headers = JSON if declared is None else {**JSON, "Content-Length": declared}
    chunks = [b"x" * 400] * 10  # 4000 bytes in 400-byte chunks
    status, _, seen, pulled = call(headers=headers, chunks=chunks)
    assert status == 413 and not seen
    assert pulled == len(chunks), "past the limit the rest is read to be dropped"


def test_dropping_a_body_over_the_limit_stops_after_the_drain_bound():
    chunk = b"x" * LIMIT
    status, _, seen, pulled = call(headers=JSON, chunks=[chunk] * (DRAIN_FACTOR + 5))
    assert status == 413 and not seen
    assert pulled == DRAIN_FACTOR + 1, "no more than DRAIN_FACTOR times the limit is read"


def test_a_body_of_exactly_the_limit_passes():
    status, _, seen, _ = call(headers=JSON, chunks=[b"x" * LIMIT])
    assert status == 200 and seen == [b"x" * LIMIT]


def test_a_body_that_stops_arriving_is_a_408_not_a_timeout_of_the_service():
    status, answer, seen, _ = call(headers={**JSON, "Content-Length": "100"}, chunks=[b'{"a": 1'], stall=True)
    assert status == 408 and not seen
    assert "did not arrive within 0.2 s (7 bytes came)" in answer["error"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_requests_without_a_body_are_not_touched(method):
    status, _, seen, _ = call(method=method, headers={})
    assert status == 200 and seen == [b"{}"]


def test_the_default_limit_admits_a_full_batch_of_the_largest_records(flights):
    """A batch of MAX_BATCH records, every field set at full precision and a 64-character request
    id, stays well under LOOP_SERVING_MAX_BODY_BYTES' default: the cap only cuts what the schema
    would refuse anyway."""
    from datetime import UTC, datetime

    from include.serving.schema import MAX_BATCH, request_bodies

    df = flights.load_interval(datetime(2013, 2, 4, tzinfo=UTC), datetime(2013, 2, 5, tzinfo=UTC)).dropna()
    widest = max(request_bodies(flights, df), key=lambda r: len(json.dumps(r)))
    body = json.dumps({"records": [{**widest, "request_id": "r" * 64}] * MAX_BATCH}, indent=1)
    limit = Settings.model_fields["serving_max_body_bytes"].default
    assert len(body.encode()) < limit / 2, (len(body), limit)


def _logged(exc: BaseException, caplog) -> logging.LogRecord:
    """What BentoML's `log_exception` writes for `exc`, through the filter the service installs."""
    from bentoml._internal.server.http_app import log_exception

    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    quiet = ClientErrorsInOneLine()
    logger.addFilter(quiet)
    request = type("Request", (), {"url": type("URL", (), {"path": "/predict_batch"})(), "method": "POST"})()
    try:
        with caplog.at_level(logging.INFO, logger=BENTOML_HTTP_LOGGER):
            try:
                raise exc
            except BaseException:
                log_exception(request)
    finally:
        logger.removeFilter(quiet)
    [record] = [r for r in caplog.records if r.name == BENTOML_HTTP_LOGGER]
    return record


def test_a_refused_request_is_logged_in_one_line_without_its_traceback(caplog):
    from pydantic import BaseModel, ValidationError

    class Input(BaseModel):
        records: list[int]

    try:
        Input.model_validate({"records": ["a", "b"]})
    except ValidationError as exc:
        record = _logged(exc, caplog)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "refused /predict_batch [POST] with 400: 2 validation error(s) for Input"


def test_a_real_failure_keeps_its_traceback(caplog):
    record = _logged(RuntimeError("the model file is gone"), caplog)
    assert record.levelno == logging.ERROR and record.exc_info[0] is RuntimeError
    assert record.getMessage() == "Exception on /predict_batch [POST]"
