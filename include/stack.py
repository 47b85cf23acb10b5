"""The embedded runtime: a loopback MLflow server and Airflow's components as local processes.

Used by `make demo` / `make up` / `make stop` and by the integration tests (which start their own
MLflow on a free port). Each service runs in its own session so that stopping it reaches its
workers too; pid files and logs live under the state directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from include.config import PROJECT_ROOT, Settings

BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port for a service started later, chosen below the kernel's ephemeral range
    (32768+): a port from that range can be handed to an outgoing connection (or a TCP
    self-connect) before the service binds it, which then looks like someone else's listener."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port between 20000 and 32000")


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Ports:
    airflow: int = field(default_factory=lambda: int(os.environ.get("LOOP_AIRFLOW_PORT", "8080")))
    mlflow: int = field(default_factory=lambda: int(os.environ.get("LOOP_MLFLOW_PORT", "5000")))


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


def airflow_env(settings: Settings, ports: Ports) -> dict[str, str]:
    """Airflow configuration of the embedded runtime, as AIRFLOW__ variables."""
    home = settings.state_dir / "airflow"
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
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "15",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports.mlflow}",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "LOOP_STATE_DIR": str(settings.state_dir),
        "LOOP_WEBHOOK_TOKEN": webhook_token(settings),
        "NO_PROXY": "127.0.0.1,localhost",
    }


def webhook_token(settings: Settings) -> str:
    """The alert webhook's bearer token: LOOP_WEBHOOK_TOKEN if set, else one generated for this
    state directory (`<state>/airflow/webhook-token`, mode 0600), never a shipped default."""
    if settings.webhook_token:
        return settings.webhook_token
    path = settings.state_dir / "airflow" / "webhook-token"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class Stack:
    """Start, check and stop the local services; state under `<state_dir>/run`."""

    def __init__(self, state_dir: Path):
        self.run_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        full_env = {**os.environ, **env}
        if full_env.get("PYTHONPATH") == "":
            del full_env["PYTHONPATH"]
        proc = subprocess.Popen(
            cmd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=PROJECT_ROOT,
        )
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def running(self) -> dict[str, int]:
        alive = {}
        for pidfile in sorted(self.run_dir.glob("*.pid")) if self.run_dir.exists() else []:
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, 0)
                alive[pidfile.stem] = pid
            except ProcessLookupError:
                pidfile.unlink()
        return alive

    def stop_one(self, name: str, timeout: float = 20) -> bool:
        """Stop one service and everything it started; True if it was running.

        TERM goes to the service's process group (a supervisor such as BentoML's stops its
        workers gracefully); descendants that live in process groups of their own (BentoML's
        workers do) and are still there after `timeout` get KILL, so nothing is left behind."""
        pid = self.running().get(name)
        if pid is None:
            return False
        tree = descendants(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (_group_alive(pid) or any(p.is_running() and p.status() != "zombie" for p in tree)):
            time.sleep(0.2)
        kill_tree(pid, tree)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        return True

    def stop(self, timeout: float = 20) -> list[str]:
        """Stop every service (see `stop_one`)."""
        return [name for name in list(self.running()) if self.stop_one(name, timeout)]


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, tree: list | None = None) -> None:
    """SIGKILL a process group and every process in `tree` (default: the descendants of `pid`)."""
    import psutil

    tree = descendants(pid) if tree is None else tree
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(tree, timeout=5)
    _group_alive(pid)  # reaps our own child


def _group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # reap our own child, or it lingers as a zombie
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> float:
    """Wait until `url` answers 2xx; fail early, with the log's tail, if `proc` exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode} before answering:\n{tail}")
        try:
            if requests.get(url, timeout=3).ok:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def start_mlflow(stack: Stack, port: int, store: Path, name: str = "mlflow") -> subprocess.Popen:
    store.mkdir(parents=True, exist_ok=True)
    if port_in_use(port):
        raise RuntimeError(f"port {port} is taken: stop what listens there or set LOOP_MLFLOW_PORT")
    proc = stack.start(name, mlflow_command(port, store), mlflow_env())
    wait_http(f"http://127.0.0.1:{port}/health", 240, proc, stack.log_dir / f"{name}.log")
    return proc


def _cli(argv: list[str]) -> int:
    from include.config import get_settings

    stack = Stack(get_settings().state_dir)
    if argv[:1] == ["stop"]:
        stopped = stack.stop()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    if argv[:1] == ["status"]:
        running = stack.running()
        print("\n".join(f"{k}: pid {v}" for k, v in running.items()) or "nothing is running")
        return 0
    print("usage: python -m include.stack stop|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
