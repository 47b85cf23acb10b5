"""`make demo`: the loop on the embedded runtime, end to end, through deployment.

Starts a loopback MLflow server, Airflow (scheduler, dag-processor, API server; SQLite,
LocalExecutor) and the serving guard (`include.rollout.guard`), plants realistic faults in the landing zone, and lets the scheduler catch up on
the use case's demo window (January to March 2013 for the flights): validation, training, the champion gate, and a blue/green rollout
behind Traefik for every new champion. Once a model serves, background clients replay the
records against the serving entry. It shows progress and ends with a summary and a sample
`curl`. The services keep running; `make stop` stops them. Run it again and it resumes from the
state in `.state/`.

The end-to-end test drives the same functions on free ports and a shorter window.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from include.local.airflow_api import AirflowAPI
from include.local.clock import INTERVAL_SECONDS, BackgroundTraffic, DataClock, Progress, say
from include.local.stack import BIN, Ports, airflow_command, airflow_env, port_in_use, start_mlflow
from include.rollout.processes import Stack, wait_http
from include.settings import DEMO_SETTINGS, Settings
from include.usecases import Calendar, UseCase

DAG_IDS = ("ingest_validate", "train", "deploy", "rollback", "monitor", "revalidate")


def plant_faults(usecase: UseCase, faults: dict[int, str]) -> None:
    """Land `faults` (interval index → fault) before the scheduler reaches those intervals."""
    from include.data.partitions import Partition
    from include.data.storage import get_storage
    from include.local.faults import plant_fault

    storage, intervals = get_storage(), usecase.calendar.intervals()
    for index, fault in faults.items():
        partition = Partition(usecase.name, *intervals[index])
        if not storage.exists(partition.landing_key):
            plant_fault(usecase, partition, fault, storage)
            say(f"planted fault '{fault}' in landing partition {partition.id}")


def start_stack(
    settings: Settings,
    ports: Ports,
    stack: Stack,
    before_scheduler: Callable[[], None] = lambda: None,
    dag_ids: tuple[str, ...] = DAG_IDS,
) -> AirflowAPI:
    """Start MLflow and Airflow's components, wait until the DAGs are parsed, unpause `dag_ids`."""
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
        stack.start(f"airflow-{name}", airflow_command(name), env)
    api = stack.start("airflow-api-server", airflow_command("api-server", "--port", str(ports.airflow)), env)
    wait_http(f"http://127.0.0.1:{ports.airflow}/api/v2/monitor/health", 180, api, stack.log_dir / "airflow-api-server.log")
    client = AirflowAPI(f"http://127.0.0.1:{ports.airflow}", home)
    client.login()
    unpause_when_parsed(client, dag_ids, stack.log_dir / "airflow-dag-processor.log")
    say("starting the serving guard: it restarts a dead live slot, Traefik, and takes traffic back from a dead canary")
    stack.start("serving-guard", [str(BIN / "python"), "-m", "include.rollout.guard"], env)
    return client


def unpause_when_parsed(client: AirflowAPI, dag_ids: tuple[str, ...], log: Path, timeout: float = 300) -> None:
    """Wait until the dag-processor has parsed the loop's DAGs without import errors, then unpause
    `dag_ids` (new DAGs start paused: Airflow's default). `log` is where to look if it never does."""
    deadline = time.monotonic() + timeout
    while {d["dag_id"] for d in client.get("dags", limit=100)["dags"]} < set(DAG_IDS):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the DAGs were not parsed within {timeout:.0f} s: see {log}")
        time.sleep(3)
    errors = client.get("importErrors")["import_errors"]
    if errors:
        raise RuntimeError(f"DAG import errors: {errors}")
    for dag_id in dag_ids:
        client.request("PATCH", f"dags/{dag_id}", json={"is_paused": False}).raise_for_status()


def count_intervals(calendar: Calendar) -> int:
    return len(calendar.intervals())


def wait_until_idle(
    client: AirflowAPI, expected: int, timeout: float, poll: float = 15, progress: Progress | None = None
) -> bool:
    """Print progress until every ingest interval has run and nothing is left to do on two polls in a
    row, `poll` s apart. The monitor's periodic check does not count: on a 30-second clock (the demo's once)
    a run of it was nearly always under way, and the demo never ended."""
    progress, idle_polls, deadline = progress or Progress(client, expected), 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, active = progress()
        idle_polls = idle_polls + 1 if done >= expected and not active else 0
        if idle_polls >= 2:
            return True
        time.sleep(poll)
    return False


def main() -> int:
    from include.local.summary import summarize
    from include.settings import get_settings
    from include.usecases import get_usecase, load_usecase

    for key, value in DEMO_SETTINGS.items():
        os.environ.setdefault(key, value)
    demo = load_usecase(get_settings().usecase).demo
    if demo is not None:
        os.environ.setdefault("LOOP_END_DATE", demo.end.isoformat())
    get_settings.cache_clear()
    settings, ports, usecase = get_settings(), Ports(), get_usecase()
    calendar = usecase.calendar
    stack = Stack(settings.state_dir)
    if stack.running():
        say(f"stopping the services left running: {', '.join(stack.stop())}")
    say(f"state in {settings.state_dir}; replaying {usecase.name} {calendar.start} … {calendar.end}, {calendar.cadence}")
    faults = demo.faults if demo is not None else {}
    try:
        client = start_stack(settings, ports, stack, before_scheduler=lambda: plant_faults(usecase, faults))
    except (RuntimeError, TimeoutError) as exc:
        say(str(exc))
        return 1
    from include.rollout.slots import Serving

    live = Serving(settings).resume()
    if live:
        say(f"serving resumed: v{live['model_version']} in slot {live['slot']} behind Traefik on port {settings.serving_port}")
    expected = count_intervals(calendar)
    say(f"DAGs unpaused; {expected} {calendar.cadence} intervals to replay, one per {INTERVAL_SECONDS} s once a model serves")
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
