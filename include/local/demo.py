"""`make demo`: the loop on the embedded runtime, end to end, through deployment.

Starts a loopback MLflow server and Airflow (scheduler, dag-processor, API server; SQLite,
LocalExecutor), plants realistic faults in the landing zone, and lets the scheduler catch up on
the first months of 2013: validation, training, the champion gate, and a blue/green rollout
behind Traefik for every new champion. Once a model serves, background clients replay the
flights against the serving entry. It shows progress and ends with a summary and a sample
`curl`. The services keep running; `make stop` stops them. Run it again and it resumes from the
state in `.state/`.

The end-to-end test drives the same functions on free ports and a shorter window.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import requests

from include.local.airflow_api import AirflowAPI
from include.local.stack import BIN, Ports, airflow_env, port_in_use, start_mlflow
from include.rollout.processes import Stack, wait_http
from include.settings import Settings

DEMO_END_DATE = "2013-03-31"
# Week index → fault planted before the scheduler runs: two whole-batch rejections and one batch
# that passes with a handful of impossible rows quarantined.
DEMO_FAULTS = {4: "truncated", 8: "distance_in_km", 10: "some_bad_rows"}
DAG_IDS = ("ingest_validate", "train", "deploy", "rollback", "monitor", "revalidate")
# The demo's retraining follows the monitor: new data trains the first model only, then drift or
# decay asks for retraining, at most once per two weeks of data time (the rest is "suppressed").
DEMO_POLICY = {"LOOP_RETRAIN_ON": "drift", "LOOP_RETRAIN_COOLDOWN_HOURS": "336", "LOOP_INGEST_MAX_ACTIVE_RUNS": "1"}
WEEK_SECONDS = 25  # once a model serves: wall-clock seconds of traffic per week of data time
TRAFFIC_RATE = 20  # requests/s of background traffic once a model serves: the canary watches it


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def plant_faults(settings: Settings, faults: dict[int, str]) -> None:
    from include.data.partitions import Partition
    from include.data.storage import get_storage
    from include.local.faults import plant_fault
    from include.usecases import get_usecase

    usecase, storage = get_usecase(), get_storage()
    for week, fault in faults.items():
        start = settings.start_datetime + timedelta(weeks=week)
        partition = Partition(usecase.name, start, start + timedelta(weeks=1))
        if not storage.exists(partition.landing_key):
            plant_fault(usecase, partition, fault, storage)
            say(f"planted fault '{fault}' in landing partition {partition.id}")


def start_stack(
    settings: Settings, ports: Ports, stack: Stack, before_scheduler: Callable[[], None] = lambda: None
) -> AirflowAPI:
    """Start MLflow and Airflow's components, wait until the DAGs are parsed, unpause them."""
    for port in (ports.airflow, ports.mlflow):
        if port_in_use(port):
            raise RuntimeError(f"port {port} is in use by another program: free it or set LOOP_AIRFLOW_PORT / LOOP_MLFLOW_PORT")
    env = airflow_env(settings, ports)
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    stack.log_dir.mkdir(parents=True, exist_ok=True)

    say(f"starting MLflow on 127.0.0.1:{ports.mlflow} and migrating Airflow's SQLite database")
    with open(stack.log_dir / "airflow-db-migrate.log", "ab") as log:
        migrate = subprocess.Popen(
            [str(BIN / "airflow"), "db", "migrate"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    start_mlflow(stack, ports.mlflow, settings.state_dir / "mlflow")
    if migrate.wait() != 0:
        raise RuntimeError(f"`airflow db migrate` failed: see {stack.log_dir / 'airflow-db-migrate.log'}")
    before_scheduler()

    say(f"starting Airflow: scheduler, dag-processor, API server on 127.0.0.1:{ports.airflow}")
    for name in ("scheduler", "dag-processor"):
        stack.start(f"airflow-{name}", [str(BIN / "airflow"), name], env)
    api = stack.start("airflow-api-server", [str(BIN / "airflow"), "api-server", "--port", str(ports.airflow)], env)
    wait_http(f"http://127.0.0.1:{ports.airflow}/api/v2/monitor/health", 180, api, stack.log_dir / "airflow-api-server.log")
    client = AirflowAPI(f"http://127.0.0.1:{ports.airflow}", home)
    client.login()

    deadline = time.monotonic() + 300
    while {d["dag_id"] for d in client.get("dags", limit=100)["dags"]} < set(DAG_IDS):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the DAGs were not parsed within 5 minutes: see {stack.log_dir / 'airflow-dag-processor.log'}")
        time.sleep(3)
    errors = client.get("importErrors")["import_errors"]
    if errors:
        raise RuntimeError(f"DAG import errors: {errors}")
    for dag_id in DAG_IDS:
        client.request("PATCH", f"dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    return client


def count_intervals(settings: Settings) -> int:
    n, start = 0, settings.start_datetime
    while start <= settings.end_datetime:
        n, start = n + 1, start + timedelta(weeks=1)
    return n


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
    active = sum(n[dag]["running"] + n[dag]["queued"] for dag in n if dag != "ingest_validate") + len(queued)
    return line, done, active


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


def wait_until_idle(
    client: AirflowAPI, expected: int, timeout: float, poll: float = 15, progress: Progress | None = None
) -> bool:
    """Print progress until every ingest interval has run and nothing is left to do."""
    progress, idle_polls, deadline = progress or Progress(client, expected), 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, active = progress()
        idle_polls = idle_polls + 1 if done >= expected and not active else 0
        if idle_polls >= 2:
            return True
        time.sleep(poll)
    return False


class DataClock:
    """The replay's clock. Airflow would catch up all of 2013 at once, but production data arrives
    a week at a time, after a week of predictions. So once enough weeks are in for a first model,
    ingestion pauses until that model serves; then it advances one week per WEEK_SECONDS while the
    clients send that week's flights (by pausing and unpausing `ingest_validate`, as an operator
    would)."""

    def __init__(self, client: AirflowAPI, settings: Settings, expected: int):
        self.client, self.settings, self.expected = client, settings, expected
        self.progress = Progress(client, expected)

    def _ingest(self, paused: bool) -> None:
        self.client.request("PATCH", "dags/ingest_validate", json={"is_paused": paused}).raise_for_status()

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
            self._ingest(paused=True)
            say(f"data clock: {need} weeks validated; ingestion waits until a first model serves")
        if not self._wait(lambda: Serving(self.settings).live() is not None or self.progress() == (self.expected, 0), deadline):
            return False
        while (before := done()) < self.expected:
            say(f"data clock: the clients send the current week's flights for {WEEK_SECONDS} s")
            time.sleep(WEEK_SECONDS)
            # Unpaused until the next interval has landed. The scheduler may already have created
            # the run after it; that one waits (a paused DAG's new runs do not start) for the next tick.
            self._ingest(paused=False)
            arrived = self._wait(lambda: done() > before, deadline, poll=1)  # noqa: B023
            self._ingest(paused=True)
            if not arrived:
                return False
        self._ingest(paused=False)
        return True


class BackgroundTraffic(threading.Thread):
    """Clients of the serving entry during the demo. Once a model serves, they send, at
    TRAFFIC_RATE requests/s, the flights of "this week" in data time: the week after the newest
    partition that has landed (validated or quarantined). Its labels arrive with the next
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
            week = max((datetime.fromisoformat(r["interval_end"]) for r in landed), default=self.settings.start_datetime)
            if week != current:
                current, pos = week, 0
                records = interval_records(usecase, week, week + timedelta(weeks=1))
                random.Random(week.toordinal()).shuffle(records)  # the whole week, not its first day
                say(f"clients now send the flights of the week from {week.date()} ({len(records):,} flights)")
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


def main() -> int:
    os.environ.setdefault("LOOP_END_DATE", DEMO_END_DATE)
    for key, value in DEMO_POLICY.items():
        os.environ.setdefault(key, value)

    from include.local.summary import summarize
    from include.settings import get_settings

    settings, ports = get_settings(), Ports()
    stack = Stack(settings.state_dir)
    if stack.running():
        say(f"stopping the services left running: {', '.join(stack.stop())}")
    say(f"state in {settings.state_dir}; replaying {settings.start_date} … {settings.end_date} weekly")
    try:
        client = start_stack(settings, ports, stack, before_scheduler=lambda: plant_faults(settings, DEMO_FAULTS))
    except (RuntimeError, TimeoutError) as exc:
        say(str(exc))
        return 1
    from include.rollout.slots import Serving

    live = Serving(settings).resume()
    if live:
        say(f"serving resumed: v{live['model_version']} in slot {live['slot']} behind Traefik on port {settings.serving_port}")
    expected = count_intervals(settings)
    say(f"DAGs unpaused; {expected} weekly intervals to replay, a week per {WEEK_SECONDS} s once a model serves")
    traffic = BackgroundTraffic(settings)
    traffic.start()
    clock = DataClock(client, settings, expected)
    if not clock.run(timeout=40 * 60):
        say("the data clock did not finish within 40 minutes; the summary shows where it stands")
    if not wait_until_idle(client, expected, timeout=45 * 60, progress=clock.progress):
        say("the catch-up did not finish within 45 minutes; the summary shows where it stands")
    report = traffic.finish()
    os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{ports.mlflow}"
    get_settings.cache_clear()
    print(summarize(get_settings(), ports, client, traffic=report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
