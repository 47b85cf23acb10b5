"""The demo's REST client rides out the embedded runtime's transient server errors (SQLite answers
500 when a write waits for its lock too long) without ever sending a non-idempotent call twice."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from include.local.airflow_api import AirflowAPI


@pytest.fixture
def airflow():
    """A loopback stand-in for the API server: each path answers from its own queue of statuses
    (then 200), and every call is recorded."""
    calls: list[tuple[str, str, dict]] = []
    answers: dict[str, list[int]] = {}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            calls.append((self.command, self.path, body))
            queue = answers.get(self.path, [])
            status = queue.pop(0) if queue else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"dag_run_id": body.get("dag_run_id", "made-by-server")}).encode())

        do_GET = do_PATCH = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = AirflowAPI(f"http://127.0.0.1:{server.server_address[1]}", home=None, password="unused")
    yield client, answers, calls
    server.shutdown()


def test_an_idempotent_call_is_retried_after_a_server_error(airflow):
    client, answers, calls = airflow
    answers["/api/v2/dags/ingest_validate"] = [500, 503]
    r = client.request("PATCH", "dags/ingest_validate", json={"is_paused": True})
    assert r.status_code == 200
    assert [c[0] for c in calls] == ["PATCH"] * 3


def test_a_server_error_that_persists_is_returned_after_the_retries(airflow):
    client, answers, calls = airflow
    answers["/api/v2/dags/ingest_validate"] = [500] * 5
    assert client.request("PATCH", "dags/ingest_validate", retries=1, json={"is_paused": True}).status_code == 500
    assert len(calls) == 2


def test_a_trigger_without_a_run_id_is_sent_once(airflow):
    client, answers, calls = airflow
    answers["/api/v2/dags/train/dagRuns"] = [500]
    assert client.trigger("train", {"reason": "x"}).status_code == 500
    assert len(calls) == 1, "a POST that may have created a run is not repeated"


def test_a_trigger_with_a_run_id_is_retried_with_the_same_id(airflow):
    client, answers, calls = airflow
    answers["/api/v2/dags/monitor/dagRuns"] = [500, 409]
    assert client.trigger("monitor", {}, run_id="data_clock__1").status_code == 409
    assert [c[2]["dag_run_id"] for c in calls] == ["data_clock__1", "data_clock__1"]
