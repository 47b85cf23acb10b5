"""The model-health view's answer time with a year of history, against the floor of one MLflow
search in the same run.

A real `mlflow server` (SQLite, local artifacts) holds 40 registered versions with the tags the loop
writes, and 159 monitoring checks (53 weekly windows, each checked three times: served, labelled and
once more) with their metrics and tags. `snapshot` (what `/model-health/api` returns, and the page's
input) and `render` are timed over `RUNS` runs; the baseline is one `search_runs` of the monitoring
experiment, which `snapshot` makes too.

    .venv/bin/python tests/bench/bench_health.py
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.benchkit import isolated_state, say  # noqa: E402

VERSIONS, WINDOWS, RUNS = 40, 53, 15
FEATURES = ("dep_hour", "distance", "temp", "dewp", "humid", "wind_speed", "precip", "visib", "carrier", "origin", "month")


def seed(settings) -> None:
    """40 versions and 159 checks, written through MLflow's client as the loop writes them."""
    import mlflow

    from include.model.registry import CHAMPION, connect
    from include.monitoring.monitor import monitoring_experiment

    client = connect(settings.mlflow_tracking_uri)
    name = settings.model_name
    exp = client.create_experiment(name)
    client.create_registered_model(name)
    start = datetime(2013, 1, 1, 5, tzinfo=UTC)
    for i in range(VERSIONS):
        run = client.create_run(exp, tags={"airflow.dag_id": "train", "airflow.dag_run_id": f"scheduled__{i}"})
        client.log_text(run.info.run_id, "model", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        tags = {
            "airflow.dag_id": "train",
            "airflow.dag_run_id": f"scheduled__{i}",
            "loop.data_window": f"{start + timedelta(weeks=i)} … {start + timedelta(weeks=i + 8)}",
            "gate.decision": "promote",
            "gate.reason": "ROC AUC 0.69 vs 0.68",
            "gate.interval": "-0.004 0.012",
            "gate.champion_version": str(i) if i else "",
            "gate.promoted_at": (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=i)).isoformat(),
            "deploy.deployed_at": (datetime(2026, 1, 1, 1, tzinfo=UTC) + timedelta(days=i)).isoformat(),
            "deploy.slot": "blue" if i % 2 else "green",
        }
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id, tags=tags)
    client.set_registered_model_alias(name, CHAMPION, str(VERSIONS))
    monitoring = client.create_experiment(monitoring_experiment(name))
    for w in range(WINDOWS):
        for kind in ("served", "labelled", "labelled"):  # a labelled window checked twice: the view keeps the newest
            window_start = start + timedelta(weeks=w)
            tags = {
                "monitor.window_start": window_start.isoformat(),
                "monitor.window_end": (window_start + timedelta(weeks=1)).isoformat(),
                "monitor.kind": kind,
                "monitor.model_version": str(1 + w * VERSIONS // WINDOWS),
                "decision.action": "none",
                "decision.reason": "no drift carrying the model",
                "airflow.dag_id": "monitor",
                "airflow.dag_run_id": f"scheduled__{w}_{kind}",
            }
            run = client.create_run(monitoring, tags=tags)
            metrics = {"estimated.roc_auc": 0.68, "drift.share": 0.1, **{f"psi.{f}": 0.05 * (w % 7) for f in FEATURES}}
            if kind == "labelled":
                metrics["live.roc_auc"] = 0.67
            client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in metrics.items()])
            client.set_terminated(run.info.run_id)


def timed(fn, runs: int = RUNS) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    state = isolated_state("bench-health-", "bench-health", MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
    from include.local.stack import free_port, start_mlflow
    from include.rollout.processes import Stack

    stack = Stack(state)
    port = free_port()
    start_mlflow(stack, port, state / "mlflow")
    import os

    os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    try:
        from include.health.page import render
        from include.health.snapshot import snapshot
        from include.model.registry import connect
        from include.monitoring.monitor import monitoring_experiment
        from include.settings import get_settings
        from include.usecases import get_usecase

        settings, usecase = get_settings(), get_usecase()
        say(f"seeding {VERSIONS} versions and {WINDOWS * 3} monitoring checks into MLflow at {settings.mlflow_tracking_uri}")
        seed(settings)
        doc = snapshot(settings, usecase)
        assert len(doc["versions"]) == VERSIONS and len(doc["windows"]) == WINDOWS * 2, (
            len(doc["versions"]),
            len(doc["windows"]),
        )
        client = connect(settings.mlflow_tracking_uri)
        exp = client.get_experiment_by_name(monitoring_experiment(settings.model_name)).experiment_id
        base = timed(lambda: client.search_runs([exp], max_results=5000))
        view = timed(lambda: snapshot(settings, usecase))
        page = timed(lambda: render(snapshot(settings, usecase)))
        for label, xs in (
            ("one search_runs (baseline)", base),
            ("snapshot (/model-health/api)", view),
            ("snapshot + render (the page)", page),
        ):
            say(f"{label}: median {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms over {len(xs)} runs")
        say(
            f"ratio page / baseline (medians): {statistics.median(page) / statistics.median(base):.1f}x; goal: the page under 1 s"
        )
        return 0 if max(page) < 1.0 else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
