"""`make demo`: the loop's first half on the embedded runtime, end to end.

Starts a loopback MLflow server and Airflow (scheduler, dag-processor, API server; SQLite,
LocalExecutor), plants two realistic faults in the landing zone, lets the scheduler catch up on
the first months of 2013, shows progress, and prints a summary. The services keep running;
`make stop` stops them. Run it again and it resumes from the state in `.state/`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import requests

DEMO_END_DATE = "2013-03-31"
DEMO_FAULTS = {  # week index → fault planted in the landing zone before the scheduler runs
    4: "truncated",
    8: "distance_in_km",
}


class AirflowAPI:
    """The few calls of Airflow's REST API (v2) the demo needs, with a token from the simple auth manager."""

    def __init__(self, base: str, home):
        self.base = base.rstrip("/")
        self.home = home
        self.session = requests.Session()

    def password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]

    def login(self) -> None:
        r = self.session.post(f"{self.base}/auth/token", json={"username": "admin", "password": self.password()}, timeout=10)
        r.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def get(self, path: str, **params) -> dict:
        r = self.session.get(f"{self.base}/api/v2/{path}", params=params, timeout=20)
        if r.status_code == 401:
            self.login()
            r = self.session.get(f"{self.base}/api/v2/{path}", params=params, timeout=20)
        r.raise_for_status()
        return r.json()

    def patch(self, path: str, body: dict) -> dict:
        r = self.session.patch(f"{self.base}/api/v2/{path}", json=body, timeout=20)
        r.raise_for_status()
        return r.json()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"dags/{dag_id}/dagRuns", limit=500, order_by="run_after")["dag_runs"]


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _intervals(settings) -> int:
    n, start = 0, settings.start_datetime
    while start <= settings.end_datetime:
        n, start = n + 1, start + timedelta(weeks=1)
    return n


def main() -> int:
    os.environ.setdefault("LOOP_END_DATE", DEMO_END_DATE)

    from include.config import get_settings
    from include.data import Partition
    from include.faults import plant_fault
    from include.stack import BIN, Ports, Stack, airflow_env, port_in_use, start_mlflow, wait_http
    from include.storage import get_storage
    from include.usecases import get_usecase

    settings, ports = get_settings(), Ports()
    stack = Stack(settings.state_dir)
    if stack.running():
        _say(f"stopping the services left running: {', '.join(stack.stop())}")
    for port in (ports.airflow, ports.mlflow):
        if port_in_use(port):
            _say(f"port {port} is in use by another program: free it or set LOOP_AIRFLOW_PORT / LOOP_MLFLOW_PORT")
            return 2
    env = airflow_env(settings, ports)
    os.environ.update(env)
    home = settings.state_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)

    _say(f"state in {settings.state_dir}; replaying {settings.start_date} … {settings.end_date} weekly")
    _say(f"starting MLflow on 127.0.0.1:{ports.mlflow} and migrating Airflow's SQLite database")
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    with open(stack.log_dir / "airflow-db-migrate.log", "ab") as migrate_log:
        migrate = subprocess.Popen(
            [str(BIN / "airflow"), "db", "migrate"], env=os.environ, stdout=migrate_log, stderr=subprocess.STDOUT
        )
    start_mlflow(stack, ports.mlflow, settings.state_dir / "mlflow")
    if migrate.wait() != 0:
        _say(f"`airflow db migrate` failed: see {stack.log_dir / 'airflow-db-migrate.log'}")
        return 1

    usecase, storage = get_usecase(), get_storage()
    for week, fault in DEMO_FAULTS.items():
        start = settings.start_datetime + timedelta(weeks=week)
        partition = Partition(usecase.name, start, start + timedelta(weeks=1))
        if not storage.exists(partition.landing_key):
            plant_fault(usecase, partition, fault, storage)
            _say(f"planted fault '{fault}' in landing partition {partition.id}")

    _say(f"starting Airflow (scheduler, dag-processor, API server on 127.0.0.1:{ports.airflow})")
    for name in ("scheduler", "dag-processor"):
        stack.start(f"airflow-{name}", [str(BIN / "airflow"), name], {})
    api = stack.start("airflow-api-server", [str(BIN / "airflow"), "api-server", "--port", str(ports.airflow)], {})
    wait_http(f"http://127.0.0.1:{ports.airflow}/api/v2/monitor/health", 180, api, stack.log_dir / "airflow-api-server.log")
    client = AirflowAPI(f"http://127.0.0.1:{ports.airflow}", home)
    client.login()

    dag_ids = ("ingest_validate", "train")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        known = {d["dag_id"] for d in client.get("dags", limit=100)["dags"]}
        if set(dag_ids) <= known:
            break
        time.sleep(3)
    else:
        _say(f"the DAGs were not parsed within 5 minutes: see {stack.log_dir / 'airflow-dag-processor.log'}")
        return 1
    errors = client.get("importErrors")["import_errors"]
    if errors:
        _say(f"DAG import errors: {errors}")
        return 1
    for dag_id in dag_ids:
        client.patch(f"dags/{dag_id}", {"is_paused": False})
    expected = _intervals(settings)
    _say(f"DAGs unpaused; the scheduler now catches up {expected} weekly intervals (progress every 15 s)")

    last, stable, deadline = "", 0, time.monotonic() + 45 * 60
    while time.monotonic() < deadline:
        ingest, train = client.runs("ingest_validate"), client.runs("train")
        count = lambda runs, state: sum(r["state"] == state for r in runs)  # noqa: E731
        line = (
            f"ingest_validate {count(ingest, 'success') + count(ingest, 'failed')}/{expected} done "
            f"({count(ingest, 'success')} passed, {count(ingest, 'failed')} quarantined, {count(ingest, 'running')} running) · "
            f"train {len(train)} runs ({count(train, 'success')} ok, {count(train, 'running') + count(train, 'queued')} active)"
        )
        if line != last:
            _say(line)
            last = line
        queued = client.get("dags/train/assets/queuedEvents").get("queued_events", []) if train or ingest else []
        idle = (
            count(ingest, "success") + count(ingest, "failed") >= expected
            and not any(r["state"] in ("running", "queued") for r in train)
            and not queued
        )
        stable = stable + 1 if idle else 0
        if stable >= 2:
            break
        time.sleep(15)
    else:
        _say("the catch-up did not finish within 45 minutes; the summary shows where it stands")

    from include.summary import summarize

    print(summarize(settings, ports, client))
    return 0


if __name__ == "__main__":
    sys.exit(main())
