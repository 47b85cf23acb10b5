"""`make bench` (bento): what a bento carries and how fast its slot starts, before and after the
bento was cut down to the serving package and its own lock.

* before: every module of `include/` and the project's whole lock (Airflow, GX, MLflow server,
  moto, pytest, ruff: what bentos carried until the layers were split);
* after: `BENTO_INCLUDE` and `include/serving/requirements.txt`;
* after, served from a venv holding only the bento's lock: proof that the bento needs nothing
  else (the venv is installed by uv from the same lock, under the bench's state directory).

For each: the bento's size on disk and as an exported archive, its files and pinned packages, and
the cold start of a slot (`bentoml serve` until `/readyz` answers), the median of three starts.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchkit import ROOT, isolated_state, say, validate_flights_weeks

STATE = isolated_state("loop-bench-bento-", "bench-bento", LOOP_INFERENCE_LOG="0")
STARTS = 3


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cold_start(bentoml_bin: Path, tag: str, port: int, env: dict) -> float:
    """Seconds from `bentoml serve` to the first 200 from `/readyz` (polled every 50 ms)."""
    import requests

    from include.rollout.processes import Stack

    stack = Stack(STATE / "cold")
    t0 = time.monotonic()
    proc = stack.start("slot", [str(bentoml_bin), "serve", tag, "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        while time.monotonic() - t0 < 180:
            if proc.poll() is not None:
                raise RuntimeError(f"the slot exited with {proc.returncode}; see {stack.log_dir / 'slot.log'}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{tag} not ready within 180 s; see {stack.log_dir / 'slot.log'}")
    finally:
        stack.stop_one("slot")


def main() -> int:
    from include.local.stack import free_port, start_mlflow
    from include.model.packaging import BENTO_INCLUDE, SERVICE, SERVING_LOCK, import_bentoml, import_model
    from include.model.params import TrainParams
    from include.model.training import train_candidate
    from include.rollout.processes import Stack
    from include.settings import get_settings
    from include.usecases import get_usecase

    port = free_port()
    os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    settings, flights = get_settings(), get_usecase("flights")
    stack = Stack(STATE)
    results: dict = {"machine": f"{os.cpu_count()} cores", "starts": STARTS}
    try:
        say(f"setting up in {STATE}: MLflow, three validated weeks, one model version")
        start_mlflow(stack, port, STATE / "mlflow")
        validate_flights_weeks(flights, 3)
        train_candidate(flights, TrainParams(n_estimators=100), settings, dag_id="bench", dag_run_id="bento")
        bentoml = import_bentoml(settings)
        model = import_model(settings, settings.model_name, "1")
        variants = {"before": (["include/**/*.py"], "requirements.txt"), "after": (BENTO_INCLUDE, SERVING_LOCK)}
        env = {"BENTOML_HOME": str(settings.bentoml_home), "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": ""}
        project_bentoml = Path(sys.executable).parent / "bentoml"
        for name, (include, lock) in variants.items():
            bento = bentoml.bentos.build(
                SERVICE,
                name=f"bench-{name}",
                version="v1",
                include=include,
                python={"requirements_txt": lock, "lock_packages": False},
                args={"model_tag": str(model.tag), "model_version": "1", "usecase": "flights", "threshold": "0.5"},
                build_ctx=str(ROOT),
            )
            path = Path(bento.path)
            archive = Path(bentoml.export_bento(str(bento.tag), str(STATE / f"{name}.bento")))
            pins = sum(1 for line in (path / "env" / "python" / "requirements.txt").read_text().splitlines() if "==" in line)
            results[name] = {
                "bento_mb": round(du(path) / 1e6, 3),
                "archive_mb": round(archive.stat().st_size / 1e6, 3),
                "python_files": len(list((path / "src").rglob("*.py"))),
                "pinned_packages": pins,
            }
        say("a venv with only the bento's lock (uv pip sync)")
        venv = STATE / "serving-venv"
        uv = Path(sys.executable).parent / "uv"
        subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [str(uv), "pip", "sync", "--quiet", "--python", str(venv / "bin" / "python"), str(ROOT / SERVING_LOCK)], check=True
        )
        results["after_serving_only_venv"] = {
            "venv_mb": round(du(venv) / 1e6, 1),
            "project_venv_mb": round(du(Path(sys.executable).parent.parent) / 1e6, 1),
        }
        runs = {
            "before": (project_bentoml, "bench-before:v1"),
            "after": (project_bentoml, "bench-after:v1"),
            "after_serving_only_venv": (venv / "bin" / "bentoml", "bench-after:v1"),
        }
        starts: dict[str, list[float]] = {k: [] for k in runs}
        for round_ in range(STARTS):  # interleaved, so a busy moment of the machine hits every variant alike
            for name, (binary, tag) in runs.items():
                starts[name].append(cold_start(binary, tag, free_port(), env))
            say(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in starts.items()))
        for name, values in starts.items():
            results[name] |= {"cold_start_s": round(statistics.median(values), 2), "cold_starts_s": [round(v, 2) for v in values]}
        b, a = results["before"], results["after"]
        results["ratios"] = {
            "bento_size_after_over_before": round(a["bento_mb"] / b["bento_mb"], 3),
            "pinned_packages_after_over_before": round(a["pinned_packages"] / b["pinned_packages"], 3),
            "cold_start_after_over_before": round(a["cold_start_s"] / b["cold_start_s"], 3),
            "cold_start_serving_venv_over_before": round(
                results["after_serving_only_venv"]["cold_start_s"] / b["cold_start_s"], 3
            ),
        }
    finally:
        stack.stop()
    print(json.dumps(results, indent=2))
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "bento.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
