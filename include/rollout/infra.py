"""Infra validation: a golden set of real records sent straight to the candidate slot, before any
traffic, must score exactly as the MLflow registry's model scores the same rows (|Δ| ≤ 1e-6),
one at a time and as one batch, within the latency budget."""

from __future__ import annotations

import time

import requests

from include.data.partitions import list_validated, read_validated
from include.model.registry import connect, load_judged_model
from include.rollout.records import reject
from include.rollout.slots import DeployError, InfraValidationFailed, Serving
from include.serving.schema import request_bodies
from include.settings import Settings


def golden_records(settings: Settings, usecase, rows: int) -> list[dict]:
    """Real records for infra validation: a fixed sample of the newest validated partition."""
    records = list_validated(usecase.name)
    if not records:
        raise DeployError("no validated partition to draw a golden set from")
    df = read_validated(records[-1:])
    return request_bodies(usecase, df.sample(min(rows, len(df)), random_state=0).sort_index())


def reference_scores(settings: Settings, usecase, model_name: str, version: str, records: list[dict]) -> list[float]:
    """The registry model's own scores for `records` (its files checked against the digest
    training recorded), through `build_features`."""
    import pandas as pd

    model = load_judged_model(connect(settings.mlflow_tracking_uri), model_name, version)
    df = pd.DataFrame.from_records(records)
    df[usecase.contract.event_time] = pd.to_datetime(df[usecase.contract.event_time], utc=True)
    return model.predict_proba(usecase.build_features(df))[:, 1].tolist()


def infra_validate(settings: Settings, usecase, slot: str, model_name: str, version: str, tolerance: float = 1e-6) -> dict:
    """Golden set straight to the slot: same scores as the registry model, within the latency
    budget. On failure the slot is stopped and the version tagged `deploy.rejected`."""
    import numpy as np

    serving = Serving(settings)
    url = serving.proxy.slot_url(slot)
    records = golden_records(settings, usecase, settings.golden_rows)
    expected = np.asarray(reference_scores(settings, usecase, model_name, version, records))
    got, latencies, problems = [], [], []
    with requests.Session() as http:
        for rec in records:
            t0 = time.perf_counter()
            try:
                r = http.post(f"{url}/predict", json=rec, timeout=10)
            except requests.RequestException as exc:
                problems.append(f"request failed: {exc}")
                break
            latencies.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                problems.append(f"HTTP {r.status_code}: {r.text[:200]}")
                break
            body = r.json()
            if body["model_version"] != str(version):
                problems.append(f"slot answers as version {body['model_version']}, expected {version}")
                break
            got.append(body["probability"])
        batch = http.post(f"{url}/predict_batch", json={"records": records}, timeout=30) if not problems else None
    if batch is not None:
        if batch.status_code != 200:
            problems.append(f"batch: HTTP {batch.status_code}: {batch.text[:200]}")
        else:
            batch_scores = np.asarray([p["probability"] for p in batch.json()])
            diff = float(np.max(np.abs(batch_scores - expected)))
            if diff > tolerance:
                problems.append(f"batch scores differ from the registry model by up to {diff:.2e} (tolerance {tolerance:g})")
    report = {"slot": slot, "golden_rows": len(records), "model_version": str(version)}
    if got and len(got) == len(records):
        diff = float(np.max(np.abs(np.asarray(got) - expected)))
        report["max_abs_diff"] = diff
        if diff > tolerance:
            problems.append(f"scores differ from the registry model by up to {diff:.2e} (tolerance {tolerance:g})")
    if latencies:
        report["p50_ms"] = float(np.percentile(latencies, 50))
        report["p99_ms"] = float(np.percentile(latencies, 99))
        if report["p99_ms"] > settings.golden_latency_ms:
            problems.append(f"p99 latency {report['p99_ms']:.1f} ms is over the budget {settings.golden_latency_ms:g} ms")
    if problems:
        serving.stop_slot(slot)
        reason = "; ".join(problems)
        reject(settings, model_name, version, reason, report)
        raise InfraValidationFailed(f"{model_name} version {version} failed infra validation in slot {slot}: {reason}")
    return report
