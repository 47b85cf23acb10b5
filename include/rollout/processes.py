"""Local processes of a runtime: start one in its own session with a pid file and a log, find
what runs, stop a process and everything it started, wait for an HTTP endpoint.

A pid file records the process's start time next to its pid (`<pid> <start time>`). After a
reboot, or once the process is gone, the kernel hands its pid to unrelated processes; a pid file
is trusted only while a process with that pid *and* that start time exists, so `stop` never
signals a stranger that happens to have reused the pid.

The serving host runs the slots and Traefik this way (in production too); the embedded runtime
(`include.local.stack`) runs MLflow and Airflow's components the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

from include.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

SUPERVISORS = ("serving-guard",)
"""Services that restart others (`include.rollout.guard`): stopped before the rest."""


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid} {start_time(proc.pid)!r}")
        return proc

    def running(self) -> dict[str, int]:
        """Services whose recorded process still runs; a pid file whose process is gone (or whose
        pid now belongs to another process) is removed."""
        alive = {}
        for pidfile in sorted(self.run_dir.glob("*.pid")) if self.run_dir.exists() else []:
            pid = recorded_process(pidfile)
            if pid is None:
                pidfile.unlink(missing_ok=True)
            else:
                alive[pidfile.stem] = pid
        return alive

    def stop_one(self, name: str, timeout: float = 20) -> bool:
        """Stop one service and everything it started; True if it was running.

        TERM goes to the service's process group (a supervisor such as BentoML's stops its
        workers gracefully); descendants that live in process groups of their own (BentoML's
        workers do) and are still there after `timeout` get KILL, so nothing is left behind.
        Other services of this stack it started (the serving guard restarts Traefik and slots)
        are theirs, not its: they are left running."""
        return bool(self._stop([name], timeout))

    def stop(self, timeout: float = 20) -> list[str]:
        """Stop every service (as `stop_one` does): the supervisors first, so none restarts what is
        being stopped, then all the others at once (one `timeout` for all, not one each)."""
        running = self.running()
        first = [name for name in running if name in SUPERVISORS]
        return self._stop(first, timeout) + self._stop([name for name in running if name not in SUPERVISORS], timeout)

    def _stop(self, names: list[str], timeout: float) -> list[str]:
        running = self.running()
        pids = {name: running[name] for name in names if name in running}
        if not pids:
            return []
        others = {p for n, p in running.items() if n not in pids}
        theirs = others | {d.pid for p in others for d in descendants(p)}
        trees = {name: [d for d in descendants(pid) if d.pid not in theirs] for name, pid in pids.items()}
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)

        def alive(name: str) -> bool:
            return _group_alive(pids[name]) or any(_lives(p) for p in trees[name])

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(name) for name in pids):
            time.sleep(0.2)
        for name, pid in pids.items():
            kill_tree(pid, trees[name])
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        return list(pids)


def start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch, as the kernel reports it), or None."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def recorded_process(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that very process still runs: same pid and same start time."""
    try:
        fields = pidfile.read_text().split()
        pid, started = int(fields[0]), float(fields[1])
    except (OSError, ValueError, IndexError):
        log.warning("ignoring pid file %s: not `<pid> <start time>` (written by an older version, or damaged)", pidfile)
        return None
    actual = start_time(pid)
    if actual is None:
        return None
    if abs(actual - started) > 0.05:
        log.warning(
            "pid %d of %s now belongs to another process (started %.2f, recorded %.2f): not ours", pid, pidfile, actual, started
        )
        return None
    return pid


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


def _lives(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. A zombie does not: a service another process
    started (the serving host starts the guard and the slots) stays a zombie until that parent reaps
    it, and its group answers signals meanwhile; counting it made every stop wait its full timeout."""
    import psutil

    with contextlib.suppress(ChildProcessError):  # reap our own child, or it lingers as a zombie
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):  # gone meanwhile, or not ours to read
            if os.getpgid(proc.pid) == pgid and _lives(proc):
                return True
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
