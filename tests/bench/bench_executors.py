"""`make bench` (executors): task instances per minute through the CeleryExecutor (the production
configuration: PostgreSQL, Redis, two Celery workers, as tests/production starts it) against the
LocalExecutor (the embedded runtime: SQLite), on the same DAG and the same data.

The DAG is `ingest_validate` over the same eight weeks of 2013 (land, then the GX gate), with up
to four intervals at once; nothing else is unpaused. Throughput is the number of successful task
instances divided by the span from the first task's start to the last one's end, as Airflow
recorded them, so start-up and parsing are not counted. Both runs share the same two cores: the
ratio says what the executor costs or gains here, not what more machines would give.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from benchkit import ROOT, isolated_state, say

from tests.production.native import wait_for

STATE = isolated_state("loop-bench-executors-", "bench-executors")
WINDOW = {
    "LOOP_START_DATE": "2013-05-07",
    "LOOP_END_DATE": "2013-07-02",
    "LOOP_INGEST_MAX_ACTIVE_RUNS": "4",
    "LOOP_RETRAIN_ON": "drift",
}
DAG = "ingest_validate"


def throughput(client, expected_runs: int, timeout: float = 1800) -> dict:
    def finished():
        runs = client.get(f"dags/{DAG}/dagRuns", limit=100)["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return done if len(done) >= expected_runs else None

    done = wait_for(finished, timeout, f"{expected_runs} {DAG} runs to finish", poll=3)
    tis = client.get(f"dags/{DAG}/dagRuns/~/taskInstances", limit=1000)["task_instances"]
    ok = [t for t in tis if t["state"] == "success"]
    start = min(datetime.fromisoformat(t["start_date"]) for t in ok)
    end = max(datetime.fromisoformat(t["end_date"]) for t in ok)
    minutes = (end - start).total_seconds() / 60
    return {"runs": len(done), "tasks": len(ok), "minutes": round(minutes, 3), "tasks_per_minute": round(len(ok) / minutes, 2)}


def local() -> dict:
    import os

    from include.local.demo import start_stack
    from include.local.stack import Ports, free_port
    from include.rollout.processes import Stack
    from include.settings import get_settings
    from include.usecases import get_calendar

    os.environ.update({**WINDOW, "LOOP_STATE_DIR": str(STATE / "local"), "LOOP_STORAGE_URI": str(STATE / "local" / "data")})
    get_settings.cache_clear()
    stack = Stack(get_settings().state_dir)
    try:
        client = start_stack(get_settings(), Ports(airflow=free_port(), mlflow=free_port()), stack, dag_ids=(DAG,))
        return throughput(client, len(get_calendar().intervals()))
    finally:
        stack.stop()


def celery() -> dict:
    from include.local.demo import unpause_when_parsed
    from include.usecases import get_calendar
    from tests.production.native import NativeProduction

    native = NativeProduction(STATE / "celery", overrides=WINDOW)
    try:
        client = native.start()
        unpause_when_parsed(client, (DAG,), native.stack.log_dir / "airflow-dag-processor.log")
        with native.as_current():
            expected = len(get_calendar().intervals())
        return throughput(client, expected)
    finally:
        native.stop()


def main() -> int:
    results = {}
    for name, run in (("local", local), ("celery", celery)):
        say(f"{DAG} over eight weeks on the {name} executor")
        results[name] = run()
        say(f"{name}: {results[name]}")
    ratio = results["celery"]["tasks_per_minute"] / results["local"]["tasks_per_minute"]
    results["celery_vs_local"] = round(ratio, 3)
    out = ROOT / "bench-results" / "executors.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    say(f"CeleryExecutor / LocalExecutor task throughput: {ratio:.2f}x (written to {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
