"""The service's input, against a real `bentoml serve` of the service code on loopback (a small
model trained here, no MLflow server, no rollout): what it publishes in its OpenAPI document is
what it enforces, nothing a client sends gets a 5xx or takes a worker down, the body cap holds,
and the inference log loses nothing on a clean stop and counts what it keeps out.

Requests are generated from the served OpenAPI document itself (hypothesis), so a bound added to
the schema is fuzzed without touching this file.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.data.inference_log import read_inference_log
from include.data.storage import LocalStorage
from include.local.stack import free_port
from include.rollout.processes import Stack, descendants, wait_http
from include.serving.schema import request_bodies
from include.settings import PROJECT_ROOT
from tests.support.serving import poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WEEK = datetime(2013, 2, 4, tzinfo=UTC), datetime(2013, 2, 11, tzinfo=UTC)
MODEL_TAG = "flights-input-test:v1"
MODEL_SCRIPT = """
import sys
from datetime import UTC, datetime

import bentoml
import mlflow.xgboost

from include.integrity import DIGEST_LABEL, model_digest
from include.model.dataset import labelled
from include.model.engines import fit
from include.model.params import TrainParams
from include.usecases import get_usecase

usecase = get_usecase("flights")
X, y, _ = labelled(usecase, usecase.load_interval(datetime(2013, 1, 7, tzinfo=UTC), datetime(2013, 1, 14, tzinfo=UTC)))
model = fit(X, y, TrainParams(n_estimators=10, max_depth=3), usecase.categorical)
mlflow.xgboost.save_model(model, sys.argv[1])
# with the digest label packaging gives it, which the slot checks before loading
bentoml.mlflow.import_model(sys.argv[2], model_uri=sys.argv[1], labels={DIGEST_LABEL: model_digest(sys.argv[1])})
"""


class Server:
    """`bentoml serve include.serving.service:Predictor` with its own state, storage and port."""

    def __init__(self, state: Path):
        self.state = state
        self.stack = Stack(state)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env: dict[str, str] = {}
        self.storage = LocalStorage(state / "zones")

    def base_env(self) -> dict[str, str]:
        return {
            "BENTOML_HOME": str(self.state / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "LOOP_STATE_DIR": str(self.state),
            "LOOP_STORAGE_URI": str(self.state / "zones"),
            "LOOP_SLOT": "input-test",
            "PYTHONPATH": str(PROJECT_ROOT),
        }

    def ensure(self, **env: str) -> Server:
        """Serving, with `env` (LOOP_* variables) in its environment; (re)started if needed."""
        if self.stack.running().get("bento") and env == self.env:
            return self
        self.stack.stop_one("bento")
        self.env = env
        proc = self.stack.start(
            "bento",
            [
                str(Path(sys.executable).parent / "bentoml"),
                "serve",
                "include.serving.service:Predictor",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--arg",
                f"model_tag={MODEL_TAG}",
                "--arg",
                "model_version=1",
                "--arg",
                "usecase=flights",
            ],
            {**self.base_env(), **env},
        )
        wait_http(f"{self.url}/readyz", 180, proc, self.stack.log_dir / "bento.log")
        return self

    def workers(self) -> set[int]:
        return {p.pid for p in descendants(self.stack.running()["bento"])}

    def post(self, path: str, body, headers: dict | None = None) -> requests.Response:
        data = body if isinstance(body, bytes | str) else json.dumps(body, allow_nan=True)
        return requests.post(self.url + path, data=data, headers=headers or {"Content-Type": "application/json"}, timeout=30)

    def counts(self) -> dict[str, float]:
        """loop_inference_log_records_total by outcome, from /metrics."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        prefix = 'loop_inference_log_records_total{outcome="'
        return {
            line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(prefix)
        }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A small model in the server's own BentoML store (trained on a January week, saved in
    MLflow's format as the registry would hand it over); the server starts on first use."""
    state = tmp_path_factory.mktemp("serving-input")
    server = Server(state)
    model_dir = state / "mlflow_model"
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MODEL_SCRIPT), str(model_dir), MODEL_TAG],
        env={**os.environ, **server.base_env()},
        cwd=PROJECT_ROOT,
        check=True,
        timeout=600,
    )
    yield server
    server.stack.stop()
    print("\n--- bento log (tail) ---\n" + (server.stack.log_dir / "bento.log").read_text(errors="replace")[-3000:])


@pytest.fixture
def live(server):
    """The server as the module's tests use it: the log flushed every second."""
    return server.ensure(LOOP_INFERENCE_LOG_FLUSH_SECONDS="1")


@pytest.fixture(scope="module")
def records(flights):
    return request_bodies(flights, flights.load_interval(*WEEK))


@pytest.fixture(scope="module")
def openapi(server):
    """The OpenAPI document the service publishes."""
    return requests.get(f"{server.ensure(LOOP_INFERENCE_LOG_FLUSH_SECONDS='1').url}/docs.json", timeout=10).json()


def request_schema(doc: dict, path: str) -> dict:
    return resolve(doc, doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


# --- strategies generated from the published document ---------------------------------------

OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-10))])


def valid(doc: dict, schema: dict, earliest: datetime):
    """Values the document says are valid. Date-times: between the use case's first day and now
    (the document says so in words; a day of margin for the offsets)."""
    schema = resolve(doc, schema)
    if "enum" in schema:
        base = st.sampled_from([v for v in schema["enum"] if v is not None])
    elif schema.get("type") == "integer":
        base = st.integers(schema.get("minimum"), schema.get("maximum"))
    elif schema.get("type") == "number":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        base = st.floats(lo, hi, allow_nan=False, allow_infinity=False) | st.integers(
            None if lo is None else math.ceil(lo), None if hi is None else math.floor(hi)
        )
    elif schema.get("format") == "date-time":
        lo, hi = (earliest + timedelta(days=1)).replace(tzinfo=None), (datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None)
        base = st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(), st.datetimes(lo, hi), OFFSETS)
    elif schema.get("type") == "string":
        text = st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else st.text()
        base = text.filter(lambda s: len(s) <= schema.get("maxLength", math.inf))
    elif schema.get("type") == "array":
        base = st.lists(
            valid(doc, schema["items"], earliest), min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 5), 5)
        )
    elif schema.get("type") == "object":
        props = schema["properties"]
        required = set(schema.get("required", []))
        base = st.fixed_dictionaries(
            {k: valid(doc, v, earliest) for k, v in props.items() if k in required},
            optional={k: valid(doc, v, earliest) for k, v in props.items() if k not in required},
        )
    else:
        raise AssertionError(f"the fuzzer does not know this schema: {schema}")
    return base | st.none() if schema.get("nullable") else base


def broken(doc: dict, schema: dict):
    """Values the document says are invalid for `schema` (each a way a client gets it wrong)."""
    schema = resolve(doc, schema)
    options = [st.sampled_from([[], {}, [1], {"a": 1}, True])]
    if schema.get("type") != "string":
        options.append(st.text(max_size=5))
    if not schema.get("nullable"):
        options.append(st.none())
    if "enum" in schema:
        options.append(st.text(max_size=30).filter(lambda s: s not in schema["enum"]))
    if "maximum" in schema:
        big = schema["maximum"]
        options.append(st.sampled_from([big + 1, math.nextafter(big, math.inf), 10**30, 1e308, float("inf"), float("nan")]))
    if "minimum" in schema:
        small = schema["minimum"]
        options.append(st.sampled_from([small - 1, math.nextafter(small, -math.inf), -(10**30), float("-inf")]))
    if schema.get("type") == "integer":
        options.append(st.floats(allow_nan=False).filter(lambda x: x != int(x) if math.isfinite(x) else True))
    if "maxLength" in schema:
        options.append(st.text(min_size=schema["maxLength"] + 1, max_size=schema["maxLength"] + 20))
    if "pattern" in schema:
        options.append(st.sampled_from(["a b", "é", "x\n", "", "<script>"]))
    if schema.get("format") == "date-time":
        options.append(
            st.sampled_from(
                [
                    "yesterday",
                    "2013-02-04",
                    "2013-02-04T10:00:00",
                    "2013-02-30T10:00:00Z",
                    "0001-01-01T00:00:00+14:00",
                    "9999-12-31T23:00:00-12:00",
                    "1999-01-01T00:00:00Z",
                    (datetime.now(UTC) + timedelta(days=30)).isoformat(),
                    1360000000,
                ]
            )
        )
    return st.one_of(options)


def check_answer(r: requests.Response, field: str | None) -> None:
    assert r.status_code == 400, (field, r.status_code, r.text[:300])
    detail = r.json()["detail"]
    if field is not None:
        assert any(field in map(str, e["loc"]) for e in detail), (field, detail)


# --- the document is the contract ---------------------------------------------------------------


def test_the_published_document_carries_the_contracts_bounds(openapi, flights):
    """`/docs.json` states each input's range, vocabulary and nullability, and the batch size."""
    from include.serving.schema import MAX_BATCH

    record = request_schema(openapi, "/predict")
    batch = request_schema(openapi, "/predict_batch")["properties"]["records"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_BATCH)
    for schema in (record, resolve(openapi, batch["items"])):  # inline for /predict, a component for the batch
        assert schema.get("additionalProperties") is False
        assert set(schema["required"]) == {n for n in flights.serving_inputs if not flights.contract.column(n).nullable}
        for name in flights.serving_inputs:
            col, prop = flights.contract.column(name), schema["properties"][name]
            assert bool(prop.get("nullable")) == col.nullable, (name, prop)
            if col.allowed:
                assert [v for v in prop["enum"] if v is not None] == list(col.allowed), (name, prop)
            elif col.kind in ("int", "float"):
                assert (prop["minimum"], prop["maximum"]) == (col.min, col.max), (name, prop)


def test_the_service_enforces_exactly_the_published_bounds(live, openapi, records):
    """Every bound of the document, probed at its edge: the edge is served, one step past it is a
    400 naming the field."""
    schema = request_schema(openapi, "/predict")
    base = records[0]
    probes = 0
    for name, prop in schema["properties"].items():
        ok, bad = [], []
        if "maximum" in prop:
            ok.append(prop["maximum"])
            bad.append(prop["maximum"] + (1 if prop["type"] == "integer" else abs(prop["maximum"]) * 1e-9 + 1e-9))
        if "minimum" in prop:
            ok.append(prop["minimum"])
            bad.append(prop["minimum"] - (1 if prop["type"] == "integer" else abs(prop["minimum"]) * 1e-9 + 1e-9))
        if "maxLength" in prop:
            ok.append("a" * prop["maxLength"])
            bad.append("a" * (prop["maxLength"] + 1))
        if "enum" in prop:
            ok += prop["enum"]
            bad += ["ZZ", "\u00c5\U0001f600", prop["enum"][0].lower() + " "]
        (ok if prop.get("nullable") else bad).append(None)
        for value in ok:
            r = live.post("/predict", {**base, name: value})
            assert r.status_code == 200, (name, value, r.text[:300])
        for value in bad:
            check_answer(live.post("/predict", {**base, name: value}), name)
        probes += len(ok) + len(bad)
    for name in schema["required"]:
        check_answer(live.post("/predict", {k: v for k, v in base.items() if k != name}), name)
    check_answer(live.post("/predict", {**base, "unknown_field": 1}), "unknown_field")
    assert probes > 80, probes

    batch = request_schema(openapi, "/predict_batch")["properties"]["records"]
    full = live.post("/predict_batch", {"records": (records * 2)[: batch["maxItems"]]})
    assert full.status_code == 200 and len(full.json()) == batch["maxItems"]
    check_answer(live.post("/predict_batch", {"records": (records * 2)[: batch["maxItems"] + 1]}), "records")
    check_answer(live.post("/predict_batch", {"records": []}), "records")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_records_generated_from_the_document_are_served_or_refused_as_it_says(live, openapi, flights, data):
    """Property: a record the document says is valid gets a 200 with a probability; the same
    record with one field broken the document's way gets a 400 naming that field."""
    earliest = flights.calendar.start_datetime.astimezone(UTC)
    schema = request_schema(openapi, "/predict")
    record = data.draw(valid(openapi, schema, earliest))
    path = data.draw(st.sampled_from(["/predict", "/predict_batch"]))
    body = record if path == "/predict" else {"records": [record]}
    r = live.post(path, body)
    assert r.status_code == 200, (record, r.text[:300])
    answer = r.json() if path == "/predict" else r.json()[0]
    assert 0 <= answer["probability"] <= 1 and answer["model_version"] == "1"

    field = data.draw(st.sampled_from(sorted(schema["properties"])))
    bad = {**record, field: data.draw(broken(openapi, schema["properties"][field]))}
    check_answer(live.post(path, bad if path == "/predict" else {"records": [bad]}), field)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/vnd.bentoml+pickle",
        "*/*",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_nothing_a_client_sends_gets_a_5xx(live, records, data):
    """Property: any body (JSON of any shape, nested deep, NaN, huge numbers, bytes that are not
    UTF-8) under any content type is a 4xx naming the problem, never a 5xx."""
    kind = data.draw(st.sampled_from(["json", "deep", "number", "bytes", "record"]))
    if kind == "json":
        body = json.dumps(data.draw(JSON_VALUES), allow_nan=True).encode()
    elif kind == "deep":
        depth = data.draw(st.integers(100, 20_000))
        body = b"[" * depth + b"]" * data.draw(st.sampled_from([depth, 0]))
    elif kind == "number":
        body = (
            json.dumps({**data.draw(st.sampled_from(records)), "distance": 0})
            .replace(
                '"distance": 0',
                '"distance": '
                + data.draw(st.sampled_from(["1" + "0" * 5000, "1e999", "-1e999", "NaN", "Infinity", "1e-999", "0x10", "01"])),
            )
            .encode()
        )
    elif kind == "bytes":
        body = data.draw(st.binary(max_size=300))
    else:
        body = json.dumps({**data.draw(st.sampled_from(records)), "request_id": data.draw(st.text(max_size=80))}).encode()
    content_type = data.draw(CONTENT_TYPES)
    path = data.draw(st.sampled_from(["/predict", "/predict_batch"]))
    r = requests.post(
        live.url + path, data=body, headers={} if content_type is None else {"Content-Type": content_type}, timeout=30
    )
    assert r.status_code < 500, (kind, content_type, body[:200], r.status_code, r.text[:300])
    if r.status_code != 200:
        assert 400 <= r.status_code < 500 and r.json()["error"], (r.status_code, r.text[:300])


def raw_status(port: int, request: bytes) -> int:
    """Send bytes as they are (no client library to tidy them) and read the status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        line = s.recv(65536).split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), f"no HTTP answer, got {line!r}"
    return int(line.split()[1])


RAW_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\n"
MALFORMED = {
    "content-length not a number": b"Content-Type: application/json\r\nContent-Length: abc\r\n\r\n{}",
    "content-length negative": b"Content-Type: application/json\r\nContent-Length: -1\r\n\r\n{}",
    "two different content-lengths": b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "content-length and chunked": b"Content-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    "broken chunk size": b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "unsupported transfer-encoding": b"Content-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    "header without a colon": b"Content-Type application/json\r\nContent-Length: 2\r\n\r\n{}",
    "space in a header name": b"Content Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "NUL in a header value": b"Content-Type: application/json\x00\r\nContent-Length: 2\r\n\r\n{}",
    "non-ASCII content type": b"Content-Type: \xe9\xe9\r\nContent-Length: 2\r\n\r\n{}",
    "non-ASCII charset": b"Content-Type: application/json; charset=\xff\xfe\r\nContent-Length: 2\r\n\r\n{}",
    "empty content type": b"Content-Type:\r\nContent-Length: 2\r\n\r\n{}",
    "obsolete line folding": b"Content-Type: application/json\r\n  folded\r\nContent-Length: 2\r\n\r\n{}",
    "a 200 kB header": b"X-Big: " + b"a" * 200_000 + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "5000 headers": b"".join(b"X-%d: y\r\n" % i for i in range(5000))
    + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "body shorter than its content-length": b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}",
}


def test_malformed_headers_are_4xx_and_no_worker_dies(live):
    before = live.workers()
    statuses = {name: raw_status(live.port, RAW_HEAD + raw) for name, raw in MALFORMED.items()}
    statuses["not HTTP at all"] = raw_status(live.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 50)
    statuses["unknown HTTP version"] = raw_status(live.port, b"POST /predict HTTP/9.9\r\nHost: x\r\n\r\n")
    print(f"\nmalformed requests: {statuses}")
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    assert statuses["body shorter than its content-length"] == 408
    assert live.workers() == before, "a worker was replaced"
    assert requests.get(f"{live.url}/readyz", timeout=10).status_code == 200


def test_a_body_over_the_cap_is_refused_with_413_even_when_streamed(live, records):
    from include.settings import Settings

    cap = Settings.model_fields["serving_max_body_bytes"].default
    big = json.dumps({"records": records * (cap // len(json.dumps(records)) + 1)}).encode()
    assert len(big) > cap
    declared = live.post("/predict_batch", big)
    assert declared.status_code == 413 and "LOOP_SERVING_MAX_BODY_BYTES" in declared.json()["error"]
    streamed = requests.post(
        live.url + "/predict_batch",
        data=(big[i : i + 65536] for i in range(0, len(big), 65536)),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )  # a generator: chunked, no Content-Length
    assert streamed.request.headers.get("Transfer-Encoding") == "chunked" and streamed.status_code == 413
    assert live.post("/predict", records[0]).status_code == 200, "the service serves on after refusing"


def test_the_log_counts_what_it_writes_and_what_it_keeps_out(live, records, flights):
    """A record a data interval older than the newest event logged is served but not logged;
    `/metrics` counts both. (Event times near the wall clock: this worker may have logged
    anything up to yesterday before.)"""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    before = live.counts()
    assert set(before) == {"written", "dropped", "late", "failed"}
    fresh = [
        dict(r, request_id=f"fresh-{i}", time_hour=(now - timedelta(hours=1)).isoformat()) for i, r in enumerate(records[:50])
    ]
    assert live.post("/predict_batch", {"records": fresh}).status_code == 200
    poll(lambda: live.counts()["written"] >= before["written"] + 50, 30, "the fresh records to be written")
    stale = dict(records[0], request_id="stale", time_hour=(now - flights.calendar.interval - timedelta(days=2)).isoformat())
    assert live.post("/predict", stale).status_code == 200, "a stale record is still served"
    poll(lambda: live.counts()["late"] >= before["late"] + 1, 30, "the stale record to be counted late")
    log = read_inference_log(flights, now - timedelta(days=30), now + timedelta(days=1), live.storage)
    assert "stale" not in set(log["request_id"]) and {r["request_id"] for r in fresh} <= set(log["request_id"])


def test_a_clean_stop_writes_every_prediction_once(server, records, flights):
    """With a flush period longer than the test, only the shutdown flush writes: every answered
    prediction is in the log, once."""
    server.ensure(LOOP_INFERENCE_LOG_FLUSH_SECONDS="3600")
    before = server.counts()
    sent = []
    for i in range(0, 600, 100):
        batch = [dict(r, request_id=f"stop-{i + j}") for j, r in enumerate(records[i : i + 100])]
        assert server.post("/predict_batch", {"records": batch}).status_code == 200
        sent += [r["request_id"] for r in batch]
    for i, r in enumerate(records[600:650]):
        assert server.post("/predict", dict(r, request_id=f"stop-single-{i}")).status_code == 200
        sent.append(f"stop-single-{i}")
    assert server.counts()["written"] == before["written"], "nothing is written before the stop"
    server.stack.stop_one("bento")
    log = read_inference_log(flights, *WEEK, server.storage)
    mine = log[log["request_id"].str.startswith("stop-")]
    assert sorted(mine["request_id"]) == sorted(sent)
