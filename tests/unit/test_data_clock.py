"""The data clock holds ingestion only between runs: a run that ends while `ingest_validate` is paused
leaves Airflow 3.3's scheduler counting it as active, and no next run is created until a re-parse."""

from __future__ import annotations

import time

from include.local.clock import DataClock


class Airflow:
    """The two calls the hold makes: pausing, and listing the runs. A run in flight ends after
    `ends_after` listings while the DAG is unpaused, never while it is paused: what the hold must see to."""

    def __init__(self, running: bool, ends_after: int = 2):
        self.paused, self.running, self.ends_after, self.calls = False, running, ends_after, []

    def request(self, method, path, **kwargs):
        self.paused = kwargs["json"]["is_paused"]
        self.calls.append("pause" if self.paused else "unpause")
        return type("R", (), {"raise_for_status": lambda self: None})()

    def runs(self, dag_id):
        assert dag_id == "ingest_validate"
        if self.running and not self.paused:
            self.ends_after -= 1
            self.running = self.ends_after > 0
        return [{"state": "running" if self.running else "success"}]


def clock(airflow: Airflow) -> DataClock:
    held = DataClock.__new__(DataClock)
    held.client, held.progress = airflow, lambda: None  # progress: the status line it prints while waiting
    return held


def test_with_no_run_in_flight_ingestion_is_paused_at_once():
    airflow = Airflow(running=False)
    assert clock(airflow)._hold(time.monotonic() + 5)
    assert airflow.calls == ["pause"] and airflow.paused


def test_a_run_in_flight_ends_unpaused_before_ingestion_is_held():
    airflow = Airflow(running=True)
    assert clock(airflow)._hold(time.monotonic() + 30)
    assert airflow.calls == ["pause", "unpause", "pause"] and airflow.paused and not airflow.running


def test_a_run_that_never_ends_gives_up_at_the_deadline():
    airflow = Airflow(running=True, ends_after=10**9)
    assert not clock(airflow)._hold(time.monotonic() + 1.5)
    assert airflow.calls == ["pause", "unpause"] and not airflow.paused
