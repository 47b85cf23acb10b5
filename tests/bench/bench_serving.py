"""`make bench` (serving): throughput and latency through Traefik vs a raw FastAPI + XGBoost app,
the proxy's own overhead, and the time from the `champion` alias moving to 100% of traffic.

Everything is measured in this one run, on this machine, against real processes on loopback:

* baseline: a FastAPI app (uvicorn, 1 worker) that parses the JSON, computes the same features
  and calls XGBoost's `inplace_predict` on the same model: no validation, no logging;
* the bento slot (BentoML, 1 worker, schema validation, inference log) straight to its port;
* the same slot through Traefik, the serving entry.

The same client (the project's traffic replayer, threads with keep-alive sessions) drives all
three, single records and batches of 100. Results are ratios against the baseline of the same
run; absolute numbers depend on the machine (2 cores here: client and server share them).

The inference log's own cost is the same bento in a second slot with LOOP_INFERENCE_LOG=0: the
p99 and throughput of the slot with the log against it, and what the log did with the records
(`loop_inference_log_records_total` of the slot: written, dropped, late, failed).
`--inference-log-only` measures just that (baseline, log on, log off; no Traefik, no rollout
timing): a few minutes instead of ten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from benchkit import ROOT, isolated_state, say, validate_flights_weeks

STATE = isolated_state("loop-bench-", "bench-flights")

BASELINE_APP = """
import os
from datetime import datetime

import numpy as np
import xgboost
from fastapi import FastAPI, Request

from include.usecases import get_usecase

usecase = get_usecase("flights")
booster = xgboost.Booster(model_file=os.environ["BENCH_MODEL_FILE"])
app = FastAPI()


def score(records):
    for r in records:
        r["time_hour"] = datetime.fromisoformat(r["time_hour"])
    X = np.asarray(usecase.encode_records(records), dtype=np.float32)
    return booster.inplace_predict(X).tolist()


@app.post("/predict")
async def predict(request: Request):
    return {"probability": score([await request.json()])[0], "model_version": "baseline"}


@app.post("/predict_batch")
async def predict_batch(request: Request):
    body = await request.json()
    return [{"probability": s, "model_version": "baseline"} for s in score(body["records"])]
"""


ROUNDS = 3
"""Each target is measured in turn, three times over; the report shows medians (2 cores: noisy)."""


def measure(url: str, records: list[dict], batch: int, requests_n: int, clients: int) -> dict:
    from include.local.traffic import replay

    replay(url, records, clients=clients, batch_size=batch, limit=max(100, requests_n // 10), loop=True)  # warm-up
    t0 = time.perf_counter()
    report = replay(url, records, clients=clients, batch_size=batch, limit=requests_n, loop=True)
    wall = time.perf_counter() - t0
    s = report.summary()
    if s["failed"]:
        raise RuntimeError(f"{url}: {s['failed']} failed requests during the benchmark: {s['statuses']}")
    return {
        "records_per_s": requests_n * batch / wall,
        "requests_per_s": requests_n / wall,
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
    }


def log_counts(slot_url: str) -> dict[str, float]:
    """The slot's `loop_inference_log_records_total` by outcome (its /metrics)."""
    import requests

    prefix = 'loop_inference_log_records_total{outcome="'
    lines = requests.get(f"{slot_url}/metrics", timeout=10).text.splitlines()
    return {line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--inference-log-only", action="store_true", help="only the inference log's cost: baseline, log on, log off"
    )
    log_only = parser.parse_args().inference_log_only
    from include.data.storage import get_storage
    from include.local.stack import free_port, start_mlflow
    from include.local.traffic import replay
    from include.model.packaging import build_bento, import_model
    from include.model.params import TrainParams
    from include.model.registry import CHAMPION, connect
    from include.model.training import train_candidate
    from include.rollout.canary import canary
    from include.rollout.infra import golden_records, infra_validate
    from include.rollout.processes import Stack, wait_http
    from include.rollout.rollout import finalize, plan, start_candidate
    from include.rollout.slots import Serving
    from include.settings import get_settings
    from include.usecases import get_usecase

    ports = {name: free_port() for name in ("mlflow", "entry", "metrics", "blue", "green", "baseline")}
    os.environ.update(
        {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
            "LOOP_SERVING_PORT": str(ports["entry"]),
            "LOOP_TRAEFIK_METRICS_PORT": str(ports["metrics"]),
            "LOOP_SLOT_PORTS": f"{ports['blue']},{ports['green']}",
        }
    )
    settings = get_settings()
    flights = get_usecase("flights")
    stack = Stack(STATE)
    results: dict = {"machine": f"{os.cpu_count()} cores", "state": str(STATE)}
    try:
        versions = (1,) if log_only else (1, 2)
        say(f"setting up in {STATE}: MLflow, four validated weeks, {len(versions)} model version(s)")
        start_mlflow(stack, ports["mlflow"], STATE / "mlflow")
        validate_flights_weeks(flights, 4)
        for i in versions:
            train_candidate(
                flights, TrainParams(window_weeks=8, n_estimators=100 * i), settings, dag_id="bench", dag_run_id=f"bench_{i}"
            )
        name = settings.model_name

        bento = build_bento(settings, name, "1")
        serving = Serving(settings)
        if log_only:
            say("v1 in slot green with the inference log off, then in slot blue with it on (no rollout)")
            # green first: every `bentoml serve` empties the metrics directory the slots share, so
            # blue's log counters survive only if blue starts last
            serving.start_slot("green", bento["bento_tag"], "1", env={"LOOP_INFERENCE_LOG": "0"})
            serving.start_slot("blue", bento["bento_tag"], "1")
        else:
            say("first rollout (v1), default settings")
            step = plan(settings, name, "1")
            start_candidate(settings, name, "1", step["slot"], bento["bento_tag"])
            infra_validate(settings, flights, step["slot"], name, "1")
            canary(settings, name, "1", step["slot"])
            finalize(settings, {"model_name": name, "version": "1", "slot": step["slot"]}, bento["bento_tag"], "bench")

        model_dir = Path(import_model(settings, name, "1").path) / "mlflow_model"
        model_file = next(model_dir.glob("**/*.ubj"))
        (STATE / "bench_baseline.py").write_text(BASELINE_APP)
        baseline_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench_baseline:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports["baseline"]),
        ]
        baseline = stack.start(
            "baseline",
            [*baseline_cmd, "--workers", "1", "--no-access-log", "--log-level", "warning"],
            {"BENCH_MODEL_FILE": str(model_file), "PYTHONPATH": f"{STATE}{os.pathsep}{ROOT}"},
        )
        records = golden_records(settings, flights, 2000)
        wait_http(f"http://127.0.0.1:{ports['baseline']}/docs", 60, baseline, stack.log_dir / "baseline.log")
        # the same bento in the idle slot with the inference log off: the log's own cost
        serving.start_slot("green", bento["bento_tag"], "1", env={"LOOP_INFERENCE_LOG": "0"})
        targets = {
            "baseline (FastAPI + inplace_predict, direct)": f"http://127.0.0.1:{ports['baseline']}",
            "bento slot, direct": serving.proxy.slot_url("blue"),
            "bento slot, direct, inference log off": serving.proxy.slot_url("green"),
        }
        if not log_only:
            targets["bento slot via Traefik"] = serving.proxy.entry_url
        for mode, batch, n, clients in (("single", 1, 3000, 8), ("batch of 100", 100, 150, 4)):
            say(f"load: {mode}, {n} requests, {clients} clients, each target, {ROUNDS} interleaved rounds (medians)")
            rounds = [{label: measure(url, records, batch, n, clients) for label, url in targets.items()} for _ in range(ROUNDS)]
            results[mode] = {
                label: {k: float(np.median([r[label][k] for r in rounds])) for k in rounds[0][label]} for label in targets
            }
        results["inference_log_records"] = log_counts(serving.proxy.slot_url("blue"))
        serving.stop_slot("green")
        if log_only:
            serving.stop_slot("blue")  # a clean stop writes what the log still holds
            results["inference_log_parts"] = len(get_storage().list("inference/"))
            report(results)
            return 0

        say("rollout timing: move `champion` to v2, then build → start → infra validation → canary (default bake) → finalize")
        stop = threading.Event()
        bg = threading.Thread(
            target=lambda: replay(serving.proxy.entry_url, records, clients=2, loop=True, stop=stop, rate=50), daemon=True
        )
        bg.start()
        client = connect(settings.mlflow_tracking_uri)
        t0 = time.monotonic()
        client.set_registered_model_alias(name, CHAMPION, "2")
        steps = {}
        t = time.monotonic()
        bento = build_bento(settings, name, "2")
        steps["build"] = time.monotonic() - t
        step = plan(settings, name, "2")
        t = time.monotonic()
        start_candidate(settings, name, "2", step["slot"], bento["bento_tag"])
        steps["start slot"] = time.monotonic() - t
        t = time.monotonic()
        infra_validate(settings, flights, step["slot"], name, "2")
        steps["infra validation"] = time.monotonic() - t
        t = time.monotonic()
        canary(settings, name, "2", step["slot"])
        steps["canary"] = time.monotonic() - t
        results["alias_to_100_percent_s"] = time.monotonic() - t0
        finalize(settings, {"model_name": name, "version": "2", "slot": step["slot"]}, bento["bento_tag"], "bench")
        stop.set()
        bg.join(10)
        results["rollout_steps_s"] = steps
        results["canary_steps"] = list(settings.canary_steps)
        results["bake_s"] = settings.canary_bake_seconds
    finally:
        Serving(settings).stack.stop()
    report(results)
    return 0


def report(results: dict) -> None:
    base = "baseline (FastAPI + inplace_predict, direct)"
    lines = ["", "Serving benchmark (ratios against the baseline measured in this run)", ""]
    for mode in ("single", "batch of 100"):
        r = results[mode]
        lines.append(f"{mode}:")
        lines.append(f"  {'target':46} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'thr ratio':>10} {'p99 ratio':>10}")
        for label, m in r.items():
            lines.append(
                f"  {label:46} {m['records_per_s']:10.0f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} "
                f"{m['records_per_s'] / r[base]['records_per_s']:10.2f} {m['p99_ms'] / r[base]['p99_ms']:10.2f}"
            )
        on, off = r["bento slot, direct"], r["bento slot, direct, inference log off"]
        log_cost = {
            "inference_log_p99": on["p99_ms"] / off["p99_ms"],
            "inference_log_throughput": on["records_per_s"] / off["records_per_s"],
        }
        lines.append(
            f"  inference log: p99 {on['p99_ms']:.1f} ms on, {off['p99_ms']:.1f} ms off ({log_cost['inference_log_p99']:.2f}×); "
            f"throughput {log_cost['inference_log_throughput']:.2f}× ({'met' if log_cost['inference_log_p99'] <= 1.5 else 'MISSED'}: p99 ≤ 1.5× without)"
        )
        if "bento slot via Traefik" not in r:
            results[mode]["ratios"] = log_cost
            continue
        via, direct = r["bento slot via Traefik"], r["bento slot, direct"]
        results[mode]["ratios"] = {
            "throughput_vs_baseline": via["records_per_s"] / r[base]["records_per_s"],
            "p99_vs_baseline": via["p99_ms"] / r[base]["p99_ms"],
            "proxy_throughput": via["records_per_s"] / direct["records_per_s"],
            "proxy_p50_added_ms": via["p50_ms"] - direct["p50_ms"],
            **log_cost,
        }
        x = results[mode]["ratios"]
        lines.append(
            f"  goals: throughput ≥ 0.5× baseline: {x['throughput_vs_baseline']:.2f}× {'met' if x['throughput_vs_baseline'] >= 0.5 else 'MISSED'}; "
            f"p99 ≤ 2× baseline: {x['p99_vs_baseline']:.2f}× {'met' if x['p99_vs_baseline'] <= 2 else 'MISSED'}"
        )
        lines.append(
            f"  proxy alone: {x['proxy_throughput']:.2f}× the direct throughput, +{x['proxy_p50_added_ms']:.2f} ms at p50"
        )
    counts = results["inference_log_records"]
    lines.append(
        "inference log of the slot: "
        + (
            ", ".join(f"{k} {v:.0f}" for k, v in counts.items())
            or "counts n/a (the second slot's start emptied the metrics directory the slots share)"
        )
        + (f"; {results['inference_log_parts']} Parquet parts after its stop" if "inference_log_parts" in results else "")
    )
    if "alias_to_100_percent_s" not in results:
        emit(lines, results)
        return
    took = results["alias_to_100_percent_s"]
    lines += [
        "",
        f"champion alias moved → 100% traffic: {took:.0f}s (steps {results['canary_steps']}, bake {results['bake_s']:.0f}s each) "
        f"{'met' if took < 180 else 'MISSED'} (goal < 180s); "
        + ", ".join(f"{k} {v:.1f}s" for k, v in results["rollout_steps_s"].items()),
        "(through Airflow add the scheduler's pick-up of the asset event and task start-up: see the demo summary)",
    ]
    emit(lines, results)


def emit(lines: list[str], results: dict) -> None:
    print("\n".join(lines))
    out = ROOT / ".state" / "bench" / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    sys.exit(main())
