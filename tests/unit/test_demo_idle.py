"""The demo ends once the loop is quiet (issue 19): the monitor's periodic check, which runs every
LOOP_MONITOR_EVERY_MINUTES for as long as the stack does, is not work outstanding; a training it
asks for is."""

from __future__ import annotations

from include.local.clock import Progress, is_periodic, outstanding
from include.local.demo import wait_until_idle

DAGS = ("ingest_validate", "train", "deploy", "monitor", "rollback", "revalidate")


class Clock:
    """Airflow as the REST API shows it, one tick of data time per `runs` call of ingest_validate:
    every interval ingested, and the periodic monitor check starting every `every` ticks and running
    for `busy` ticks, as the demo's 30-second check runs 11-12 s of every 30."""

    def __init__(self, every: int = 6, busy: int = 3, train_requests: dict[int, int] | None = None, intervals: int = 3):
        self.tick, self.every, self.busy, self.intervals = 0, every, busy, intervals
        self.train_requests = train_requests or {}  # tick → ticks the requested training runs

    def _monitor(self) -> list[dict]:
        runs = []
        for start in range(0, self.tick + 1, self.every):
            state = "running" if self.tick < start + self.busy else "success"
            runs.append({"run_type": "scheduled", "state": state})
        return runs

    def _train(self) -> list[dict]:
        return [
            {"run_type": "manual", "state": "running" if self.tick < at + ticks else "success"}
            for at, ticks in self.train_requests.items()
            if self.tick >= at
        ]

    def runs(self, dag_id: str) -> list[dict]:
        if dag_id == "ingest_validate":
            self.tick += 1
            return [{"run_type": "scheduled", "state": "success"}] * self.intervals
        return {"monitor": self._monitor, "train": self._train}.get(dag_id, list)()

    def get(self, path: str) -> dict:
        return {"queued_events": []}


def test_the_periodic_check_is_not_outstanding_but_an_asset_triggered_check_is():
    periodic = {"run_type": "scheduled", "state": "running"}
    labelled = {"run_type": "asset_triggered", "state": "running"}
    assert is_periodic("monitor", periodic) and not is_periodic("monitor", labelled)
    assert not is_periodic("train", periodic), "a scheduled training is work"
    assert outstanding({"monitor": [periodic]}, 0) == 0
    assert outstanding({"monitor": [periodic, labelled], "train": [periodic]}, 0) == 2
    assert outstanding({"monitor": [], "ingest_validate": [periodic]}, 2) == 2, (
        "queued asset events are work; ingestion is counted apart"
    )


def test_the_demo_ends_while_the_periodic_check_keeps_running():
    """The hang of issue 19: the periodic check was under way on one of every two polls."""
    clock = Clock(every=2, busy=1)
    assert wait_until_idle(clock, 3, timeout=5, poll=0, progress=Progress(clock, 3))
    assert clock.tick <= 3, f"idle should be seen on the first two polls, took {clock.tick}"


def test_a_training_the_periodic_check_requests_keeps_the_demo_waiting_until_it_ends():
    clock = Clock(every=2, busy=1, train_requests={1: 6})
    assert wait_until_idle(clock, 3, timeout=5, poll=0, progress=Progress(clock, 3))
    assert clock.tick >= 8, f"the demo ended at tick {clock.tick}, while the requested training ran until tick 7"


def test_the_demo_does_not_end_before_every_interval_is_ingested():
    clock = Clock(intervals=2)
    assert not wait_until_idle(clock, 3, timeout=0.2, poll=0.01, progress=Progress(clock, 3))
