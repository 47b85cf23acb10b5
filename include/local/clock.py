"""The demo's clock and clients: production data arrives an interval at a time, after an interval
of predictions; the replay imitates that instead of letting Airflow catch up a whole quarter at once."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime

import requests

from include.local.airflow_api import AirflowAPI
from include.settings import Settings

INTERVAL_SECONDS = 15  # once a model serves: wall-clock seconds of traffic per data interval, before its check
TRAFFIC_RATE = 20  # requests/s of background traffic once a model serves: the canary watches it
SERVED_CHECK_WAIT = 180  # s the clock waits, per interval, for the check of its served traffic


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loop_status(client: AirflowAPI, expected: int) -> tuple[str, int, int]:
    """One progress line, the ingest intervals done, and the runs still active or queued."""
    runs = {dag: client.runs(dag) for dag in ("ingest_validate", "train", "deploy", "monitor", "rollback", "revalidate")}
    n = {
        dag: {s: sum(r["state"] == s for r in rs) for s in ("success", "failed", "running", "queued")} for dag, rs in runs.items()
    }
    ingest, train, deploy = n["ingest_validate"], n["train"], n["deploy"]
    done = ingest["success"] + ingest["failed"]
    line = (
        f"ingest_validate {done}/{expected} done ({ingest['success']} passed, {ingest['failed']} quarantined, "
        f"{ingest['running']} running) · train {len(runs['train'])} runs ({train['success']} done, "
        f"{train['running'] + train['queued']} active) · deploy {len(runs['deploy'])} runs "
        f"({deploy['success']} done, {deploy['failed']} failed, {deploy['running'] + deploy['queued']} active)"
        f" · monitor {len(runs['monitor'])} runs"
    )
    queued = [
        e
        for dag in ("train", "deploy", "monitor")
        for e in client.get(f"dags/{dag}/assets/queuedEvents").get("queued_events", [])
    ]
    return line, done, outstanding(runs, len(queued))


def is_periodic(dag_id: str, run: dict) -> bool:
    """The monitor's periodic check of served traffic: it runs on the wall clock for as long as the
    stack does, so it is never work outstanding. A retraining it asks for is a `train` run, which is."""
    return dag_id == "monitor" and run["run_type"] == "scheduled"


def outstanding(runs: dict[str, list[dict]], queued_events: int) -> int:
    """Runs of the loop still to finish besides ingestion (queued or running, periodic checks aside),
    plus asset events waiting to start a run."""
    return queued_events + sum(
        r["state"] in ("running", "queued")
        for dag, rs in runs.items()
        if dag != "ingest_validate"
        for r in rs
        if not is_periodic(dag, r)
    )


class Progress:
    """Prints the loop's status line when it changes."""

    def __init__(self, client: AirflowAPI, expected: int):
        self.client, self.expected, self.last = client, expected, ""

    def __call__(self) -> tuple[int, int]:
        line, done, active = loop_status(self.client, self.expected)
        if line != self.last:
            say(line)
            self.last = line
        return done, active


class DataClock:
    """The replay's clock. Airflow would catch up the whole window at once, but production data
    arrives an interval at a time, after an interval of predictions. So once enough partitions are
    in for a first model, ingestion pauses until that model serves; then it advances one interval
    per INTERVAL_SECONDS while the clients send that interval's records (by pausing and unpausing
    `ingest_validate`, as an operator would), and once the monitor's check of served traffic
    (triggered by the clock, as the periodic clock or an alert would) has seen that traffic, before
    its labels land."""

    def __init__(self, client: AirflowAPI, settings: Settings, expected: int):
        self.client, self.settings, self.expected = client, settings, expected
        self.progress = Progress(client, expected)

    def _ingest(self, paused: bool) -> None:
        self.client.request("PATCH", "dags/ingest_validate", json={"is_paused": paused}).raise_for_status()

    def _in_flight(self) -> bool:
        return any(r["state"] == "running" for r in self.client.runs("ingest_validate"))

    def _hold(self, deadline: float) -> bool:
        """Pause ingestion with no run of it in flight (a queued one stays queued). Airflow 3.3's
        scheduler finishes the runs of a paused DAG without recounting its active runs, so a run that
        ends while `ingest_validate` is paused leaves it marked at `max_active_runs`, and no run is
        created until the dag-processor next parses the file (up to 5 minutes here). False: the
        deadline passed."""
        while True:
            self._ingest(paused=True)
            if not self._in_flight():
                return True
            self._ingest(paused=False)  # let the run in flight end while the DAG is unpaused, then pause again
            if not self._wait(lambda: not self._in_flight(), deadline, poll=1):
                return False

    def _wait(self, until: Callable[[], bool], deadline: float, poll: float = 3) -> bool:
        last = 0.0
        while not until():
            if time.monotonic() > deadline:
                return False
            if time.monotonic() - last > 15:
                self.progress()
                last = time.monotonic()
            time.sleep(poll)
        return True

    def _check_served_traffic(self) -> bool:
        """Trigger the monitor's check of served traffic (a run with no dates, as its periodic clock
        starts) and wait until it has finished: each interval's traffic is checked once, at once,
        instead of whenever the periodic clock next ticks."""
        run_id = f"data_clock__{time.time_ns()}"
        r = self.client.trigger("monitor", {}, run_id=run_id)
        if r.status_code != 409:  # 409: an earlier attempt of this call created it
            r.raise_for_status()
        finished = lambda: self.client.get(f"dags/monitor/dagRuns/{run_id}")["state"] in ("success", "failed")  # noqa: E731
        return self._wait(finished, time.monotonic() + SERVED_CHECK_WAIT, poll=1)

    def run(self, timeout: float) -> bool:
        from include.data.partitions import list_validated
        from include.rollout.slots import Serving
        from include.usecases import get_usecase

        deadline, usecase = time.monotonic() + timeout, get_usecase()
        need = self.settings.min_train_partitions

        def done() -> int:  # ingest intervals landed: one REST call, polled every second or so
            return sum(r["state"] in ("success", "failed") for r in self.client.runs("ingest_validate"))

        if not self._wait(lambda: len(list_validated(usecase.name)) >= need or done() >= self.expected, deadline):
            return False
        if done() < self.expected:
            if not self._hold(deadline):
                return False
            say(f"data clock: {need} partitions validated; ingestion waits until a first model serves")
        if not self._wait(lambda: Serving(self.settings).live() is not None or self.progress() == (self.expected, 0), deadline):
            return False
        while (before := done()) < self.expected:
            say(f"data clock: the clients send the current interval's {usecase.wording.records} for {INTERVAL_SECONDS} s")
            time.sleep(INTERVAL_SECONDS)
            # The check of served traffic sees this interval's predictions before their labels land.
            if not self._check_served_traffic():
                say(f"data clock: the check of served traffic did not finish within {SERVED_CHECK_WAIT} s; moving on")
            # Unpaused until the next interval has landed. The scheduler may already have created
            # the run after it; that one waits (a paused DAG's new runs do not start) for the next tick.
            self._ingest(paused=False)
            arrived = self._wait(lambda: done() > before, deadline, poll=1) and self._hold(deadline)  # noqa: B023
            if not arrived:
                return False
        self._ingest(paused=False)
        return True


class BackgroundTraffic(threading.Thread):
    """Clients of the serving entry during the demo. Once a model serves, they send, at
    TRAFFIC_RATE requests/s, the records of the current interval in data time: the one after the
    newest partition that has landed (validated or quarantined). Its labels arrive with the next
    partition, and the monitor then checks those predictions. Every canary bakes under real
    traffic."""

    def __init__(self, settings: Settings):
        super().__init__(daemon=True, name="demo-traffic")
        self.settings = settings
        self.stop = threading.Event()
        self.report = None

    def run(self):
        from include.data.partitions import list_validated, quarantined_batches
        from include.local.traffic import Report, interval_records, replay
        from include.usecases import get_usecase

        url = f"http://{self.settings.serving_host}:{self.settings.serving_port}"
        while not self.stop.wait(5):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/readyz", timeout=2).ok:
                    break
        if self.stop.is_set():
            return
        say(f"a model serves on {url}: clients send it {TRAFFIC_RATE} requests/s")
        self.report = Report()
        usecase, current, records, pos = get_usecase(), None, [], 0
        while not self.stop.is_set():
            landed = list_validated(usecase.name) + quarantined_batches(usecase.name)  # passed or not, labels landed
            start = max((datetime.fromisoformat(r["interval_end"]) for r in landed), default=usecase.calendar.start_datetime)
            if start != current:
                current, pos = start, 0
                records = interval_records(usecase, start, start + usecase.calendar.interval)
                random.Random(start.toordinal()).shuffle(records)  # the whole interval, not its first day
                words = usecase.wording.records
                say(f"clients now send the {words} of the interval from {start.date()} ({len(records):,} {words})")
            pos = 0 if pos >= len(records) else pos
            chunk = records[pos : pos + TRAFFIC_RATE * 5]
            pos += len(chunk)
            if not chunk:
                self.stop.wait(5)
                continue
            self.report.outcomes += replay(url, chunk, clients=2, stop=self.stop, rate=TRAFFIC_RATE).outcomes

    def finish(self):
        self.stop.set()
        self.join(30)
        return self.report
