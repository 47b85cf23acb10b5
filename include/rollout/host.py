"""The serving host's start: bring back what the registry says serves, then run the host's worker.

    python -m include.rollout.host [--wait SECONDS] [-- COMMAND ...]

On a (re)start of the serving host (its container, or the machine), the slots it ran are gone.
This starts Traefik unless one answers (production runs it as its own service), rebuilds the live
version's bento if this host's store lost it, starts the live slot and routes all traffic to it:
`Serving.resume`, from the registry's `live` record. MLflow may still be starting, so it retries
until `--wait` seconds have passed; then it replaces itself with COMMAND (production: the
`serving` queue's Celery worker), which starts even when nothing could be resumed, so that the
next deploy can. Before that it starts the serving guard beside it (`include.rollout.guard`:
restarts a dead live slot, takes traffic back from a dead canary) unless `--no-guard`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from include.outcomes import FailNow
from include.rollout.processes import Stack
from include.rollout.slots import Serving
from include.settings import get_settings

log = logging.getLogger("include.rollout.host")


def resume(wait_seconds: float, pause: float = 5) -> dict | None:
    """`Serving.resume`, retried until it succeeds or `wait_seconds` have passed (then it raises);
    a FailNow (the live model's files are not the judged ones) raises at once."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return Serving(get_settings()).resume()
        except FailNow:
            raise
        except Exception as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("resume failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc, pause)
            time.sleep(pause)


def start_guard() -> None:
    """The serving guard (`include.rollout.guard`) as its own process beside the worker, unless one runs."""
    stack = Stack(get_settings().state_dir)
    if "serving-guard" not in stack.running():
        proc = stack.start("serving-guard", [sys.executable, "-m", "include.rollout.guard"], {})
        log.info("serving guard started (pid %d); its log: %s", proc.pid, stack.log_dir / "serving-guard.log")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.rollout.host", description=__doc__.split("\n")[0])
    parser.add_argument("--wait", type=float, default=300, help="seconds to keep retrying while MLflow is unreachable")
    parser.add_argument("--no-guard", dest="guard", action="store_false", help="do not start the serving guard")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    status = 0
    try:
        live = resume(args.wait)
        if live:
            log.info(
                "resumed: %s v%s in slot %s (%s)", live["model_name"], live["model_version"], live["slot"], live["bento_tag"]
            )
        else:
            log.info("nothing to resume: the registry records no live deployment")
    except Exception as exc:
        log.error("could not resume serving: %s: %s", type(exc).__name__, exc)
        status = 1
    if args.guard:
        start_guard()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        sys.stdout.flush()
        os.execvp(command[0], command)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
