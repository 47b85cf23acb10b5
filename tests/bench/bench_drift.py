"""`make bench` (drift): the monitor's drift computation on 1M rows × 20 features against one numpy
histogram pass over the same data, and against Evidently's data-drift preset, with peak memory.

The data is real: the model features of 2013's flights (a reference of January–March, a current
window of June–August), resampled to 1,000,000 rows each and saved once as Parquet. Each method
runs in a fresh process that loads the Parquet files, so peak memory (max RSS above the RSS after
loading) compares like with like:

* numpy: one `np.histogram` per column on the reference's bin edges: the floor for any binned
  drift statistic;
* ours: `DriftAccumulator` fed in ten partitions (as the monitor streams the inference log), then
  `report()` (PSI for every feature, JS for categoricals);
* Evidently 0.7 `DataDriftPreset` in its own venv (it needs pandas < 3), created on first use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = 1_000_000
FEATURES = 20
EVIDENTLY_VENV = ROOT / ".state" / "bench" / "evidently-venv"

RUNNER = r"""
import json, resource, sys, time
import numpy as np, pandas as pd
method, ref_path, cur_path = sys.argv[1:4]
# Imports first: the comparison is of computation, not of import time.
if method == "ours":
    sys.path.insert(0, sys.argv[4])
    import scipy.spatial.distance, scipy.stats
    from include.monitoring.drift import DriftAccumulator
    from include.monitoring.profile import build_profile
elif method == "evidently":
    from evidently import Report
    from evidently.presets import DataDriftPreset
ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if method == "numpy":
    for c in cur.columns:
        edges = np.quantile(ref[c].dropna(), np.linspace(0, 1, 11))
        np.histogram(cur[c].to_numpy(), bins=np.unique(edges))
elif method == "ours":
    profile = build_profile(ref, np.zeros(len(ref)), np.zeros(len(ref)), tuple(sys.argv[5].split(",")))
    acc = DriftAccumulator(profile)
    step = len(cur) // 10
    for start in range(0, len(cur), step):
        acc.update(cur.iloc[start : start + step])
    report = acc.report()
else:
    Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref).dict()
seconds = time.perf_counter() - t0
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"seconds": seconds, "peak_mb_above_loaded": peak}))
"""


def say(msg: str) -> None:
    print(msg, flush=True)


def data(tmp: Path) -> tuple[Path, Path, list[str]]:
    from datetime import UTC, datetime

    import pandas as pd

    from include.usecases import get_usecase

    flights = get_usecase("flights")

    def window(a: int, b: int) -> pd.DataFrame:
        df = flights.load_interval(datetime(2013, a, 1, tzinfo=UTC), datetime(2013, b, 1, tzinfo=UTC))
        return flights.build_features(df).iloc[:, :FEATURES]

    ref, cur = window(1, 4), window(6, 9)
    ref = ref.sample(ROWS, replace=True, random_state=0).reset_index(drop=True)
    cur = cur.sample(ROWS, replace=True, random_state=1).reset_index(drop=True)
    ref.to_parquet(tmp / "ref.parquet")
    cur.to_parquet(tmp / "cur.parquet")
    categorical = [c for c in flights.categorical if c in ref.columns]
    return tmp / "ref.parquet", tmp / "cur.parquet", categorical


def evidently_python() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        say(f"creating {EVIDENTLY_VENV} for Evidently 0.7 (pandas < 3)")
        uv = Path(sys.executable).parent / "uv"
        subprocess.run([str(uv), "venv", "-q", "-p", "3.11", str(EVIDENTLY_VENV)], check=True)
        subprocess.run(
            [str(uv), "pip", "install", "-q", "--python", str(python), "evidently>=0.7,<0.8", "pandas<3", "pyarrow"], check=True
        )
    return python


def run(python: Path, method: str, ref: Path, cur: Path, categorical: list[str], runner: Path) -> dict:
    out = subprocess.run(
        [str(python), str(runner), method, str(ref), str(cur), str(ROOT), ",".join(categorical)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if out.returncode:
        raise RuntimeError(f"{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="loop-drift-bench-") as tmp:
        tmp = Path(tmp)
        say(f"drift benchmark: {ROWS:,} rows × {FEATURES} features of real flights (Jan–Mar reference, Jun–Aug current)")
        ref, cur, categorical = data(tmp)
        runner = tmp / "runner.py"
        runner.write_text(RUNNER)
        results = {}
        for method, python in (
            ("numpy", Path(sys.executable)),
            ("ours", Path(sys.executable)),
            ("evidently", evidently_python()),
        ):
            say(f"  running {method} …")
            results[method] = run(python, method, ref, cur, categorical, runner)
    ours, base, ev = results["ours"], results["numpy"], results["evidently"]
    lines = [
        "",
        f"Drift on {ROWS:,} rows × {FEATURES} features          seconds   peak MB above loaded data",
        f"  one numpy histogram pass per column        {base['seconds']:8.2f}   {base['peak_mb_above_loaded']:8.0f}",
        f"  ours (DriftAccumulator, 10 partitions)     {ours['seconds']:8.2f}   {ours['peak_mb_above_loaded']:8.0f}",
        f"  Evidently 0.7 DataDriftPreset               {ev['seconds']:8.2f}   {ev['peak_mb_above_loaded']:8.0f}",
        f"  ours vs numpy: {ours['seconds'] / base['seconds']:.2f}× the time (goal ≤ 3×) "
        f"{'met' if ours['seconds'] <= 3 * base['seconds'] else 'MISSED'}",
        f"  Evidently vs ours: {ev['seconds'] / ours['seconds']:.1f}× slower (goal ≥ 10×) "
        f"{'met' if ev['seconds'] >= 10 * ours['seconds'] else 'MISSED'}",
    ]
    print("\n".join(lines))
    out = ROOT / ".state" / "bench" / "drift.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
