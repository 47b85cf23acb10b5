"""The embedded runtime: a loopback MLflow server and Airflow's components as local processes.

Used by `make demo` / `make up` / `make stop` and by the integration tests and benchmarks (which
start their own MLflow, and a Dask cluster for distributed training, on free ports). Each service
runs in its own session so that stopping it reaches its workers too; pid files and logs live under
the state directory.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from include.local.airflow_api import ADMIN_USER, PASSWORDS_FILE
from include.rollout.processes import Stack, port_in_use, wait_http
from include.settings import PROJECT_ROOT, Settings, get_settings

BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()
FREE_PORTS = range(20000, 32000)
"""Where `free_port` draws from. Processes that pick ports at the same time (parallel test workers)
each take a slice of their own: a port handed out but not yet bound looks free to the others."""


def free_port() -> int:
    """A free loopback port for a service started later, chosen below the kernel's ephemeral range
    (32768+): a port from that range can be handed to an outgoing connection (or a TCP
    self-connect) before the service binds it, which then looks like someone else's listener."""
    for _ in range(500):
        port = random.choice(FREE_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {FREE_PORTS.start} and {FREE_PORTS.stop - 1}")


@dataclass(frozen=True)
class Ports:
    airflow: int = field(default_factory=lambda: get_settings().airflow_port)
    mlflow: int = field(default_factory=lambda: get_settings().mlflow_port)


def mlflow_command(port: int, store: Path) -> list[str]:
    """A tracking server on loopback: SQLite backend, local artifacts served through it."""
    return [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--workers",
        "1",
    ]


def mlflow_env() -> dict[str, str]:
    # The job runner (huey consumers) is for GenAI features we do not use; it costs processes.
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


TASK_PRELOAD = "airflow.sdk.execution_time.task_runner,mlflow,xgboost,great_expectations"
"""The modules every Airflow worker process imports before it runs tasks: the task runner and the
libraries the tasks import (the DAG files themselves import none of them)."""


def airflow_env(settings: Settings, ports: Ports) -> dict[str, str]:
    """Airflow configuration of the embedded runtime, as AIRFLOW__ variables. Writes the admin's
    password file first (`admin_password_file`)."""
    home = settings.state_dir / "airflow"
    passwords = admin_password_file(settings)
    return {
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": str(PROJECT_ROOT),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # 2 cores: two task processes at a time, not Airflow's default of 32.
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__PORT": str(ports.airflow),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{ports.airflow}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{ports.airflow}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "15",
        # An edited DAG file is parsed at once anyway (Airflow re-queues modified files); the unchanged
        # ones every 5 minutes, not every 30 s (each parse is a process: 20 CPU-s per 5 minutes).
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "300",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # The LocalExecutor's workers start from a forkserver that has imported the tasks' heavy
        # libraries once; each task process forks from a worker and inherits them, instead of paying
        # 4-8 CPU-s of imports per task (Airflow 3.3's documented mp_forkserver_preload).
        "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
        "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": TASK_PRELOAD,
        # A task whose process died (a killed scheduler takes the LocalExecutor's with it) is
        # retried after this long without a heartbeat, not Airflow's default 5 minutes.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        # A restarted scheduler resets the tasks a dead one had queued or running (orphans) only once
        # the dead one's job misses its health check (30 s), at this check, not Airflow's default 300 s.
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "15",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports.mlflow}",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # The loop's models are XGBoost's native files: a pickled one is refused, never run.
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "LOOP_STATE_DIR": str(settings.state_dir),
        "LOOP_WEBHOOK_TOKEN": webhook_token(settings),
        "NO_PROXY": "127.0.0.1,localhost",
    }


def airflow_command(component: str, *args: str) -> list[str]:
    """The command line of an Airflow component of the embedded runtime. The scheduler runs without
    its worker log server: Airflow 3.3 binds that to every interface (port 8793, no host option),
    and the API server reads the LocalExecutor's task logs from the same local folder anyway."""
    command = [str(BIN / "airflow"), component, *args]
    if component == "scheduler":
        command.append("--skip-serve-logs")
    return command


def admin_password_file(settings: Settings) -> Path:
    """The simple auth manager's password file (`{user: password}`), written before Airflow starts:
    mode 0600, the admin's password generated here, never a default. Airflow finds its user in it
    and so neither generates a password nor prints one into the API server's log. A file from an
    earlier start keeps its password (and is made private if Airflow wrote it 0644)."""
    path = settings.state_dir / "airflow" / PASSWORDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    passwords = {}
    if path.exists():
        try:
            passwords = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{path} is not JSON ({exc}): delete it and a new admin password is generated") from None
    if not passwords.get(ADMIN_USER):
        passwords[ADMIN_USER] = secrets.token_urlsafe(18)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(passwords) + "\n")
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return path


def webhook_token(settings: Settings) -> str:
    """The alert webhook's bearer token: LOOP_WEBHOOK_TOKEN if set, else one generated for this
    state directory (`<state>/airflow/webhook-token`, mode 0600), never a shipped default."""
    if settings.webhook_token:
        return settings.webhook_token
    path = settings.state_dir / "airflow" / "webhook-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def start_mlflow(stack: Stack, port: int, store: Path, name: str = "mlflow") -> subprocess.Popen:
    store.mkdir(parents=True, exist_ok=True)
    if port_in_use(port):
        raise RuntimeError(f"port {port} is taken: stop what listens there or set LOOP_MLFLOW_PORT")
    proc = stack.start(name, mlflow_command(port, store), mlflow_env())
    wait_http(f"http://127.0.0.1:{port}/health", 240, proc, stack.log_dir / f"{name}.log")
    return proc


def start_dask(stack: Stack, workers: int = 2, nthreads: int = 1) -> str:
    """A Dask scheduler and `workers` worker processes on loopback (`dask-scheduler`,
    `dask-worker-<i>` in `stack`), as LOOP_DASK_ADDRESS would name a real cluster; returns its
    address once every worker has joined. Separate processes, not a LocalCluster: its spawned
    workers would re-import whatever module started them."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    stack.start(
        "dask-scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], {}
    )
    for i in range(1, workers + 1):
        name = f"dask-worker-{i}"
        cmd = [str(BIN / "dask"), "worker", address, "--name", name, "--host", "127.0.0.1", "--nthreads", str(nthreads)]
        stack.start(name, [*cmd, "--no-dashboard", "--local-directory", str(stack.run_dir / name)], {})
    try:
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)
    except (OSError, TimeoutError) as exc:
        raise RuntimeError(f"the Dask cluster at {address} did not come up with {workers} workers: see {stack.log_dir}") from exc
    return address


def serving_problems(settings: Settings, running: dict[str, int]) -> list[str]:
    """What is wrong with serving, as a client or the guard would see it: the live deployment's
    slot down, the entry not answering, the guard not running. [] when all is well, or when
    nothing has been deployed yet."""
    import requests

    from include.rollout.slots import Serving, ready

    serving = Serving(settings)
    if not serving.proxy.routing_file.exists():
        return []
    problems = []
    if "serving-guard" not in running:
        problems.append("the serving guard is not running: nothing restarts a dead slot (make demo starts it)")
    try:
        entry = requests.get(f"{serving.proxy.entry_url}/readyz", timeout=3)
        if entry.status_code != 200:
            problems.append(f"the serving entry {serving.proxy.entry_url} answers {entry.status_code}: {entry.text.strip()[:80]}")
    except requests.RequestException as exc:
        problems.append(f"the serving entry {serving.proxy.entry_url} does not answer: {type(exc).__name__}")
    try:
        live = serving.live()
    except Exception as exc:
        return [*problems, f"cannot read the live deployment from MLflow ({settings.mlflow_tracking_uri}): {type(exc).__name__}"]
    if live and not ready(serving.proxy.slot_url(live["slot"])):
        problems.append(f"live slot {live['slot']} ({live['model_name']} v{live['model_version']}) is not ready")
    return problems


def health(settings: Settings, ports: Ports, running: dict[str, int]) -> tuple[list[str], list[str]]:
    """`make status`: each service's health as (lines, problems). The scheduler's and the
    dag-processor's heartbeats from the API server's health endpoint, MLflow's, serving as a client
    and the guard see it (`serving_problems`); then the live version and the monitor's last
    decision. A problem is a service down; `make status` exits non-zero on any."""
    import requests

    lines, problems = [], []
    airflow = f"http://127.0.0.1:{ports.airflow}"
    try:
        doc = requests.get(f"{airflow}/api/v2/monitor/health", timeout=5).json()
        lines.append(f"api server: {airflow} answers")
        for part in ("metadatabase", "scheduler", "dag_processor", "triggerer"):
            info = doc.get(part) or {}
            status, beat = info.get("status"), info.get(f"latest_{part}_heartbeat") or info.get("latest_scheduler_heartbeat")
            if part == "triggerer" and status is None:
                continue  # no deferrable task here: the embedded runtime starts no triggerer
            lines.append(f"{part}: {status}" + (f" (heartbeat {beat})" if beat else ""))
            if status != "healthy":
                problems.append(f"{part} is {status or 'unknown'}: see {settings.state_dir / 'logs'}")
    except (requests.RequestException, ValueError) as exc:
        problems.append(f"the Airflow API server at {airflow} does not answer ({type(exc).__name__}): `make demo` starts it")
    try:
        ok = requests.get(f"{settings.mlflow_tracking_uri.rstrip('/')}/health", timeout=5).status_code == 200
        lines.append(f"mlflow: {settings.mlflow_tracking_uri} {'answers' if ok else 'is unhealthy'}")
        if not ok:
            problems.append(f"MLflow at {settings.mlflow_tracking_uri} is unhealthy")
    except requests.RequestException as exc:
        problems.append(f"MLflow at {settings.mlflow_tracking_uri} does not answer ({type(exc).__name__})")
        return lines, problems
    problems += serving_problems(settings, running)
    lines += _live_and_last_decision(settings)
    return lines, problems


def _live_and_last_decision(settings: Settings) -> list[str]:
    from include.model.registry import connect
    from include.monitoring.monitor import monitoring_experiment
    from include.rollout.records import read_live
    from include.usecases import registered_model_name

    name = registered_model_name(settings)
    try:
        live = read_live(settings, name)
        client = connect(settings.mlflow_tracking_uri, attempts=1)
        exp = client.get_experiment_by_name(monitoring_experiment(name))
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    except Exception as exc:  # a status report never fails on what it reports
        return [f"live version / last decision: unreadable ({type(exc).__name__})"]
    out = [
        f"live: {name} v{live['model_version']} in slot {live['slot']} since {live.get('deployed_at', '?')}"
        if live
        else "live: nothing deployed yet"
    ]
    if not runs:
        out.append("last monitor decision: none yet")
    else:
        t = runs[0].data.tags
        out.append(
            f"last monitor decision: {t.get('decision.action')} for {t.get('monitor.window_start', '?')[:10]}…"
            f"{t.get('monitor.window_end', '?')[:10]} ({t.get('decision.reason', '')[:100]})"
        )
    return out


def _cli(argv: list[str]) -> int:
    stack = Stack(get_settings().state_dir)
    if argv[:1] == ["stop"]:
        stopped = stack.stop()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    if argv[:1] == ["status"]:
        running = stack.running()
        print("\n".join(f"{k}: pid {v}" for k, v in running.items()) or "no process of `make demo` is running here")
        lines, problems = health(get_settings(), Ports(), running)
        print("\n".join(lines))
        for problem in problems:
            print(f"DOWN: {problem}")
        return 1 if problems else 0
    print("usage: python -m include.local.stack stop|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
