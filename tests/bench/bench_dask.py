"""`make bench` (dask): training on the full year of 2013's flights in one process against
`xgboost.dask` on a local cluster of two worker processes, and the peak memory of each at 1× and
4× the rows (4×: the year's frame concatenated four times).

* The same two cores either way: the single process trains with two threads (`fit`, as the train
  DAG does), the cluster has two workers of one thread each (`fit_on_dask`); the form's default
  hyperparameters.
* Each measurement runs in a fresh process that loads the features from Parquet, and each Dask
  measurement gets a fresh cluster, so the peaks compare like with like. At 1× the two engines
  alternate for three rounds and the medians are reported (the machine is shared); 4× runs once.
* Memory is RSS sampled every 50 ms: the training process (for Dask, the client) above its RSS
  with the data loaded, and the worker processes (nannies included) above their RSS once idle with
  XGBoost imported (absolute numbers in the JSON).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchkit import ROOT, isolated_state, say

STATE = isolated_state("loop-bench-dask-", "bench-dask")
WORKERS = 2
ROUNDS = {1: 3, 4: 1}  # copies of the year → rounds

RUNNER = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
engine, path, copies, address = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
worker_pids = [int(p) for p in sys.argv[6].split(",") if p]
import dask.dataframe, distributed, pandas as pd, psutil, xgboost, xgboost.dask  # imports are not timed
from include.model.params import TrainParams
from include.model.engines import fit, fit_on_dask
from include.usecases import get_usecase

frame = pd.read_parquet(path)
frame = pd.concat([frame] * copies, ignore_index=True)
X, y = frame.drop(columns="_label"), frame["_label"]
del frame
categorical = get_usecase("flights").categorical

if address:  # the workers' imports are a fixed cost, not training's: done before the baseline
    with distributed.Client(address) as client:
        client.run(lambda: __import__("xgboost.dask") and __import__("pandas") and None)
me = psutil.Process()
def workers_rss():
    total = 0
    for pid in worker_pids:
        try:
            nanny = psutil.Process(pid)
            total += sum(p.memory_info().rss for p in (nanny, *nanny.children(recursive=True)))
        except psutil.NoSuchProcess:
            pass
    return total
base = {"trainer": me.memory_info().rss, "workers": workers_rss()}
peak = dict(base)
done = threading.Event()
def sample():
    while not done.wait(0.05):
        peak["trainer"] = max(peak["trainer"], me.memory_info().rss)
        peak["workers"] = max(peak["workers"], workers_rss())
sampler = threading.Thread(target=sample)
sampler.start()
t0 = time.perf_counter()
if engine == "dask":
    model, workers = fit_on_dask(X, y, TrainParams(), categorical, address)
else:
    model, workers = fit(X, y, TrainParams(), categorical), 1
seconds = time.perf_counter() - t0
done.set()
sampler.join()
mb = lambda b: b / 2**20
print(json.dumps({
    "seconds": seconds, "rows": len(X), "workers": workers, "trees": model.get_booster().num_boosted_rounds(),
    "trainer_loaded_mb": mb(base["trainer"]), "trainer_peak_above_loaded_mb": mb(peak["trainer"] - base["trainer"]),
    "workers_idle_mb": mb(base["workers"]), "workers_peak_above_idle_mb": mb(peak["workers"] - base["workers"]),
}))
"""


def year_of_flights(path: Path) -> tuple[int, int]:
    """The labelled features of every 2013 flight, saved as Parquet with the label as `_label`."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from include.model.dataset import labelled
    from include.usecases import get_usecase

    flights = get_usecase("flights")
    ny = ZoneInfo("America/New_York")
    X, y, _ = labelled(flights, flights.load_interval(datetime(2013, 1, 1, tzinfo=ny), datetime(2014, 1, 1, tzinfo=ny)))
    X.assign(_label=y).to_parquet(path)
    return X.shape


def measure(runner: Path, engine: str, data: Path, copies: int) -> dict:
    from include.local.stack import start_dask
    from include.rollout.processes import Stack

    stack = Stack(STATE / f"dask-{engine}-{copies}")
    try:
        address, pids = "", ""
        if engine == "dask":
            address = start_dask(stack, workers=WORKERS)
            pids = ",".join(str(pid) for name, pid in stack.running().items() if name.startswith("dask-worker-"))
        out = subprocess.run(
            [sys.executable, str(runner), str(ROOT), engine, str(data), str(copies), address, pids],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    finally:
        stack.stop()
    if out.returncode:
        raise RuntimeError(f"{engine} ×{copies} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": runs}


def main() -> int:
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="loop-dask-bench-") as tmp:
        data, runner = Path(tmp) / "year.parquet", Path(tmp) / "runner.py"
        runner.write_text(RUNNER)
        rows, features = year_of_flights(data)
        say(f"dask benchmark: the full year of 2013, {rows:,} labelled flights × {features} features")
        for copies, rounds in ROUNDS.items():
            runs: dict[str, list[dict]] = {"single": [], "dask": []}
            for i in range(rounds):
                for engine in runs:
                    say(f"  {engine} at {copies}× ({copies * rows:,} rows), round {i + 1}/{rounds} …")
                    runs[engine].append(measure(runner, engine, data, copies))
            results |= {f"{engine}_{copies}x": median_of(r) for engine, r in runs.items()}
    lines = [
        "",
        f"Training XGBoost ({results['single_1x']['trees']} trees) on 2013's flights      seconds   peak MB above loaded/idle:",
        "                                                             trainer   workers     total",
    ]
    for copies in ROUNDS:
        for engine, label in (("single", "one process, 2 threads"), ("dask", f"Dask, {WORKERS} workers × 1 thread")):
            r = results[f"{engine}_{copies}x"]
            trainer, workers = r["trainer_peak_above_loaded_mb"], r["workers_peak_above_idle_mb"]
            lines.append(
                f"  {copies}× {r['rows']:>9,} rows  {label:<30} {r['seconds']:8.1f}  {trainer:8.0f}  {workers:8.0f}  {trainer + workers:8.0f}"
            )
    for copies in ROUNDS:
        s, d = results[f"single_{copies}x"], results[f"dask_{copies}x"]
        spread = "; ".join(
            f"{e}: " + ", ".join(f"{r['seconds']:.1f}" for r in x["runs"]) + " s" for e, x in (("single", s), ("Dask", d))
        )
        lines.append(f"  at {copies}×: Dask takes {d['seconds'] / s['seconds']:.2f}× the single process's time ({spread})")
    print("\n".join(lines))
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "dask.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out / 'dask.json'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
