"""A pid file is trusted only while its process (same pid, same start time) runs: after a reboot,
or once the process is gone, its pid may belong to an unrelated process, which a stop must never
signal. Real processes, no server: runs in `make test-fast` too."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.rollout.processes import Stack, _group_alive, start_time


@pytest.fixture
def stranger():
    """An unrelated process: not started by the stack."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait(10)


def test_a_reused_pid_is_not_ours_and_is_never_signalled(tmp_path, stranger):
    stack = Stack(tmp_path)
    stack.run_dir.mkdir(parents=True)
    # what a pid file looks like after a reboot: its pid now runs something else, started later
    (stack.run_dir / "slot-blue.pid").write_text(f"{stranger.pid} {start_time(stranger.pid) - 3600!r}")
    assert stack.running() == {}
    assert not (stack.run_dir / "slot-blue.pid").exists(), "a stale pid file is removed"
    (stack.run_dir / "slot-blue.pid").write_text(f"{stranger.pid} {start_time(stranger.pid) - 3600!r}")
    assert stack.stop_one("slot-blue", timeout=1) is False
    assert stranger.poll() is None, "the stranger must still run"


def test_an_old_style_pid_file_is_ignored_not_trusted(tmp_path, stranger):
    stack = Stack(tmp_path)
    stack.run_dir.mkdir(parents=True)
    (stack.run_dir / "mlflow.pid").write_text(str(stranger.pid))  # no start time: cannot be checked
    assert stack.stop() == []
    assert stranger.poll() is None


def test_our_own_process_is_found_and_stopped(tmp_path):
    stack = Stack(tmp_path)
    proc = stack.start("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], {})
    pid, started = (stack.run_dir / "sleeper.pid").read_text().split()
    assert int(pid) == proc.pid and float(started) == start_time(proc.pid)
    assert stack.running() == {"sleeper": proc.pid}
    assert stack.stop_one("sleeper", timeout=5)
    assert proc.wait(10) is not None and stack.running() == {}


def start_parent_and_child(stack: Stack, tmp_path: Path) -> int:
    """A service `parent` that starts a service `child` of the same stack, as the serving host
    starts the guard and the slots, then sleeps without reaping it; returns the child's pid."""
    from include.settings import PROJECT_ROOT

    launcher = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from include.rollout.processes import Stack;"
        "Stack(Path(sys.argv[2])).start('child', [sys.executable, '-c', 'import time; time.sleep(120)'], {});"
        "time.sleep(120)"
    )
    stack.start("parent", [sys.executable, "-c", launcher, str(PROJECT_ROOT), str(tmp_path)], {})
    deadline = time.monotonic() + 30
    while "child" not in stack.running():
        assert time.monotonic() < deadline, "the parent never started its child service"
        time.sleep(0.1)
    return stack.running()["child"]


def test_stopping_a_service_leaves_the_services_it_started_running(tmp_path):
    """The serving guard starts Traefik and slots as services of the same stack: stopping the
    guard must not take them down with it."""
    stack = Stack(tmp_path)
    child = start_parent_and_child(stack, tmp_path)
    assert stack.stop_one("parent", timeout=5)
    assert stack.running() == {"child": child}, "the child service keeps running"
    assert stack.stop() == ["child"]


def test_a_service_another_process_started_is_dead_once_it_is_a_zombie(tmp_path):
    """The serving host starts the guard and the slots; a stop from elsewhere sees them exit as
    zombies their parent has not reaped yet. A zombie does not run: the stop must not wait for it
    (it used to wait its full timeout, 20 s per stop, for the guard and again for the slots)."""
    import os
    import signal

    import psutil

    stack = Stack(tmp_path)
    child = start_parent_and_child(stack, tmp_path)  # the parent never reaps it
    deadline = time.monotonic() + 30
    assert _group_alive(child), "a running service's group is alive"
    os.kill(child, signal.SIGKILL)
    while psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the killed child never became a zombie"
        time.sleep(0.05)
    assert not _group_alive(child), "a group of zombies runs nothing"
    assert sorted(stack.stop()) == ["child", "parent"] and stack.running() == {}


def test_stopping_the_stack_asks_every_service_at_once(tmp_path):
    """`stop` sends TERM to all services before it waits for any: services slow to stop (a Celery
    worker finishing a task, an API server draining) stop side by side, not one after another.
    Each service here notes when TERM came, then takes a while to exit."""
    slow = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    open(sys.argv[1], 'w').write(repr(time.time())); time.sleep(2); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "open(sys.argv[1] + '.ready', 'w').close()\n"
        "time.sleep(120)\n"
    )
    stack = Stack(tmp_path)
    notes = {name: tmp_path / f"{name}.term" for name in ("one", "two", "three")}
    for name, note in notes.items():
        stack.start(name, [sys.executable, "-c", slow, str(note)], {})
    deadline = time.monotonic() + 30
    while not all(Path(f"{note}.ready").exists() for note in notes.values()):
        assert time.monotonic() < deadline, "the services never set up their TERM handlers"
        time.sleep(0.05)
    assert sorted(stack.stop(timeout=30)) == sorted(notes)
    termed = sorted(float(note.read_text()) for note in notes.values())
    # one after another, each TERM would come only after the previous service's 2 s exit
    assert termed[-1] - termed[0] < 2, termed
    assert stack.running() == {}
