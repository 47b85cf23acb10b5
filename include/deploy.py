"""Blue/green rollout of a bento behind Traefik: slots, infra validation, canary, rollback.

Two slots (blue, green) each run `bentoml serve <bento>`; Traefik routes by weight (see
`include/serving/proxy.py`). A rollout of model version V:

1. `start_candidate`: the idle slot serves V's bento and answers `/readyz`; it gets no traffic.
2. `infra_validate`: a golden set straight to the slot must score exactly as the registry's
   model scores the same rows (|Δ| ≤ 1e-6) and within the latency budget.
3. `canary`: the slot gets LOOP_CANARY_STEPS percent of traffic in turn; every
   LOOP_CANARY_CHECK_SECONDS Traefik's per-slot metrics are read, and a breach (5xx rate, mean
   latency, a dead or unready slot) rolls back at once: all traffic to the old slot, the new one
   stopped, the version tagged with the reason.
4. `finalize`: the old slot is stopped after its in-flight requests drain; the deployment is
   recorded on the model version and in `<state>/serving/live.json`.

Each step is idempotent: a retried task finds its slot already running, its weights already
applied, or its tags already written. Every function takes references (model name and version,
bento tag, slot name) and returns small dicts of references.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from include.config import Settings
from include.serving.proxy import SLOTS, Proxy
from include.stack import Stack, port_in_use, wait_http

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """A rollout step failed; traffic stays on (or went back to) the previous slot."""


class _Alerted:
    alerted = True  # `reject`/`rollback` alerted already; the failure notifier does not repeat it


class InfraValidationFailed(_Alerted, DeployError):
    pass


class CanaryRolledBack(_Alerted, DeployError):
    def __init__(self, message: str, detected_at: float, restored_at: float):
        super().__init__(message)
        self.detected_at = detected_at
        self.restored_at = restored_at


def other(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


@dataclass
class Serving:
    """The serving runtime on this machine: Traefik and the two slots as local processes."""

    settings: Settings

    def __post_init__(self):
        self.proxy = Proxy(self.settings)
        self.stack = Stack(self.settings.state_dir)

    # State -------------------------------------------------------------------------------------

    @property
    def live_file(self) -> Path:
        return self.proxy.dir / "live.json"

    def live(self) -> dict | None:
        """The deployment serving 100% of traffic: slot, bento tag, model name/version, time."""
        return json.loads(self.live_file.read_text()) if self.live_file.exists() else None

    def slot_record(self, slot: str) -> dict | None:
        path = self.proxy.dir / f"slot-{slot}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _write_json(self, path: Path, doc: dict | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if doc is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)

    # Processes ---------------------------------------------------------------------------------

    def ensure_proxy(self) -> None:
        """Start Traefik unless it answers (ours, or a service of the production runtime); it
        reads the routing it had from disk."""
        if self.proxy.answers():
            return
        s = self.settings
        for port in (s.serving_port, s.traefik_metrics_port):
            if port_in_use(port):
                raise DeployError(
                    f"port {port} is taken but Traefik is not ours: stop that process or change LOOP_SERVING_PORT / LOOP_TRAEFIK_METRICS_PORT"
                )
        self.proxy.dynamic_dir.mkdir(parents=True, exist_ok=True)
        proc = self.stack.start("traefik", self.proxy.command(), {})
        wait_http(f"{self.proxy.admin_url}/ping", 30, proc, self.stack.log_dir / "traefik.log")

    def resume(self) -> dict | None:
        """After a restart of the machine or the runtime: Traefik up, and the live deployment's
        slot serving again (from its bento, as recorded in `live.json`)."""
        live = self.live()
        if live is None:
            return None
        self.ensure_proxy()
        self.start_slot(live["slot"], live["bento_tag"], live["model_version"])
        self.proxy.set_weights({live["slot"]: 100})
        return live

    def slot_running(self, slot: str) -> bool:
        return f"slot-{slot}" in self.stack.running()

    def start_slot(
        self, slot: str, bento_tag: str, model_version: str, env: dict[str, str] | None = None, timeout: float = 180
    ) -> dict:
        """Serve `bento_tag` in `slot` and wait for `/readyz`; a slot already serving it is reused.
        `env` adds variables to the slot's environment (the tests inject faults this way)."""
        record = self.slot_record(slot)
        same = record is not None and record["bento_tag"] == bento_tag and record.get("env") == (env or {})
        if same and self.slot_running(slot) and _ready(self.proxy.slot_url(slot)):
            return record
        self.stop_slot(slot)
        port = self.settings.slot_ports[SLOTS.index(slot)]
        if port_in_use(port):
            raise DeployError(f"slot {slot}: port {port} is taken by another process; free it or change LOOP_SLOT_PORTS")
        cmd = [
            str(Path(sys.executable).parent / "bentoml"),
            "serve",
            bento_tag,
            "--host",
            self.settings.slot_host,
            "--port",
            str(port),
        ]
        proc_env = {
            **(env or {}),
            "LOOP_SLOT": slot,
            "BENTOML_HOME": str(self.settings.bentoml_home),
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONPATH": "",  # the bento's own copy of the code, not the checkout's
        }
        proc = self.stack.start(f"slot-{slot}", cmd, proc_env)
        record = {
            "slot": slot,
            "bento_tag": bento_tag,
            "model_version": str(model_version),
            "pid": proc.pid,
            "env": env or {},
            "started_at": datetime.now(UTC).isoformat(),
        }
        self._write_json(self.proxy.dir / f"slot-{slot}.json", record)
        try:
            wait_http(f"{self.proxy.slot_url(slot)}/readyz", timeout, proc, self.stack.log_dir / f"slot-{slot}.log")
        except (TimeoutError, RuntimeError) as exc:
            self.stop_slot(slot)
            raise InfraValidationFailed(f"slot {slot} serving {bento_tag} never became ready: {exc}") from exc
        return record

    def stop_slot(self, slot: str, drain_seconds: float = 0) -> None:
        """Stop the slot's whole process group (BentoML's supervisor and its workers)."""
        if drain_seconds:
            time.sleep(drain_seconds)
        self.stack.stop_one(f"slot-{slot}")
        self._write_json(self.proxy.dir / f"slot-{slot}.json", None)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


# Rollout steps -----------------------------------------------------------------------------------


def plan(settings: Settings, model_name: str, version: str) -> dict:
    """What a rollout of `version` has to do: nothing if it already serves all traffic."""
    serving = Serving(settings)
    live = serving.live()
    serves = live is not None and (live["model_name"], live["model_version"]) == (model_name, str(version))
    if serves and serving.slot_running(live["slot"]) and serving.proxy.weights() == {live["slot"]: 100}:
        return {"action": "noop", "slot": live["slot"], "reason": f"version {version} already serves 100% from {live['slot']}"}
    target = other(live["slot"]) if live else SLOTS[0]
    return {"action": "rollout", "slot": target, "previous": live}


def plan_rollout(settings: Settings, usecase, version: str | None) -> dict | None:
    """References for a rollout of `version` (default: the champion) into the idle slot, or None
    when that version already serves all traffic."""
    ref = resolve(settings, usecase, version)
    step = plan(settings, ref["model_name"], ref["version"])
    log.info("plan for %s v%s: %s", ref["model_name"], ref["version"], step)
    return None if step["action"] == "noop" else {**ref, "slot": step["slot"]}


def start_candidate(
    settings: Settings, model_name: str, version: str, slot: str, bento_tag: str, env: dict | None = None, timeout: float = 180
) -> dict:
    """Serve the candidate's bento in the idle `slot`, with no traffic, until `/readyz` answers."""
    serving = Serving(settings)
    serving.ensure_proxy()
    live = serving.live()
    if live and live["slot"] == slot:
        raise DeployError(f"slot {slot} is live ({live['bento_tag']}); a candidate goes to the idle slot")
    try:
        return serving.start_slot(slot, bento_tag, version, env, timeout=timeout)
    except InfraValidationFailed as exc:
        reject(settings, model_name, version, str(exc), {"slot": slot, "bento_tag": bento_tag})
        raise


def reject(settings: Settings, model_name: str, version: str, reason: str, details: dict) -> None:
    """Tag the version `deploy.rejected` with the reason and alert; it never got traffic."""
    from include.alerts import send_alert

    _tag(settings, model_name, version, {"deploy.rejected": reason[:4000], "deploy.rejected_at": _now()})
    send_alert(settings, "infra_validation_failed", f"{model_name} v{version} rejected before any traffic: {reason}", details)


def golden_records(settings: Settings, usecase, rows: int) -> list[dict]:
    """Real records for infra validation: a fixed sample of the newest validated partition."""
    from include.data import list_validated, read_validated
    from include.traffic import request_bodies

    records = list_validated(usecase.name)
    if not records:
        raise DeployError("no validated partition to draw a golden set from")
    df = read_validated(records[-1:])
    return request_bodies(usecase, df.sample(min(rows, len(df)), random_state=0).sort_index())


def reference_scores(settings: Settings, usecase, model_name: str, version: str, records: list[dict]) -> list[float]:
    """The registry model's own scores for `records`, through MLflow and `build_features`."""
    import mlflow
    import pandas as pd

    from include.registry import connect

    connect(settings.mlflow_tracking_uri)
    model = mlflow.xgboost.load_model(f"models:/{model_name}/{version}")
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


def canary(
    settings: Settings,
    model_name: str,
    version: str,
    slot: str,
    steps: tuple[int, ...] | None = None,
    bake_seconds: float | None = None,
) -> dict:
    """Shift traffic to `slot` step by step (LOOP_CANARY_STEPS unless `steps`), baking and watching
    each step; roll back on the first breach. With no live slot to fall back on (the first
    deployment) traffic goes straight to 100% and is watched for one short bake."""
    serving = Serving(settings)
    serving.ensure_proxy()
    previous = other(slot)
    live = serving.live()
    fallback = live is not None and live["slot"] == previous and serving.slot_running(previous)
    steps = (steps or settings.canary_steps) if fallback else (100,)
    bake = settings.canary_bake_seconds if bake_seconds is None else bake_seconds
    watcher = SlotWatcher(serving.proxy, slot, settings)
    history = []
    for pct in steps:
        # At 100% the old slot leaves the routing but keeps running until `finalize`: a breach
        # while baking at 100% can still send everything back to it.
        serving.proxy.set_weights({slot: pct, previous: 100 - pct} if pct < 100 else {slot: 100})
        log.info("canary: slot %s (version %s) gets %d%% of traffic; baking %.0fs", slot, version, pct, bake)
        breach = watcher.bake(bake)
        history.append({"percent": pct, **watcher.totals})
        if breach:
            detected_at = time.time()
            restored_at = rollback(settings, model_name, version, slot, breach, restore=previous if fallback else None)
            message = f"{model_name} version {version} rolled back at {pct}% traffic: {breach}"
            raise CanaryRolledBack(message, detected_at, restored_at)
        log.info("canary: %d%% step passed (%s)", pct, watcher.totals)
    return {"slot": slot, "steps": history}


def rollback(settings: Settings, model_name: str, version: str, slot: str, reason: str, restore: str | None) -> float:
    """All traffic back to `restore`, `slot` stopped, the version tagged, an alert sent.
    Returns the time Traefik confirmed the old routing."""
    serving = Serving(settings)
    if restore:
        serving.proxy.set_weights({restore: 100})
    restored_at = time.time()
    serving.stop_slot(slot, drain_seconds=1)
    _tag(settings, model_name, version, {"deploy.rolled_back": reason[:4000], "deploy.rolled_back_at": _now()})
    from include.alerts import send_alert

    send_alert(
        settings,
        "rollback",
        f"{model_name} v{version} rolled back from slot {slot}: {reason}",
        {"slot": slot, "restored": restore},
    )
    return restored_at


def finalize(settings: Settings, model_name: str, version: str, slot: str, bento_tag: str, dag_run_id: str) -> dict:
    """Stop the old slot once drained; record the deployment on the version and on disk."""
    serving = Serving(settings)
    previous = other(slot)
    if serving.proxy.weights() != {slot: 100}:
        serving.proxy.set_weights({slot: 100})
    if serving.slot_running(previous):
        serving.stop_slot(previous, drain_seconds=2)
    deployed_at = _now()
    live = {
        "slot": slot,
        "bento_tag": bento_tag,
        "model_name": model_name,
        "model_version": str(version),
        "deployed_at": deployed_at,
        "dag_run_id": dag_run_id,
    }
    serving._write_json(serving.live_file, live)
    _tag(
        settings,
        model_name,
        version,
        {"deploy.bento_tag": bento_tag, "deploy.slot": slot, "deploy.deployed_at": deployed_at, "deploy.dag_run_id": dag_run_id},
    )
    return live


def _tag(settings: Settings, model_name: str, version: str, tags: dict) -> None:
    from include.registry import connect, tag_version

    tag_version(connect(settings.mlflow_tracking_uri), model_name, version, tags)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


SCORING_ENDPOINTS = ("/predict", "/predict_batch")


def _families(text: str):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        yield from family.samples


def traefik_counters(text: str, slot: str) -> dict[str, float]:
    """Requests, 5xx answers and seconds spent, as Traefik saw them for `slot` (cumulative)."""
    out = {"requests": 0.0, "errors": 0.0, "seconds": 0.0}
    for sample in _families(text):
        if sample.labels.get("service") != f"{slot}@file":
            continue
        if sample.name == "traefik_service_requests_total":
            out["requests"] += sample.value
            out["errors"] += sample.value if sample.labels.get("code", "").startswith("5") else 0
        elif sample.name == "traefik_service_request_duration_seconds_sum":
            out["seconds"] += sample.value
    return out


def bentoml_counters(text: str) -> dict[str, float]:
    """The same, from the slot's own BentoML metrics (scoring endpoints only, cumulative)."""
    out = {"requests": 0.0, "errors": 0.0, "seconds": 0.0}
    for sample in _families(text):
        if not sample.name.endswith("request_duration_seconds_count") and not sample.name.endswith(
            "request_duration_seconds_sum"
        ):
            continue
        if sample.labels.get("endpoint") not in SCORING_ENDPOINTS:
            continue
        if sample.name.endswith("_sum"):
            out["seconds"] += sample.value
        else:
            out["requests"] += sample.value
            out["errors"] += sample.value if sample.labels.get("http_response_code", "").startswith("5") else 0
    return out


def judge(deltas: dict[str, dict[str, float]], settings: Settings) -> str | None:
    """The breach in one check interval, from each source's counter deltas (`traefik`: what
    clients saw; `bentoml`: what the slot measured itself), or None."""
    for source, d in deltas.items():
        if d["requests"] >= settings.canary_min_requests:
            rate = d["errors"] / d["requests"]
            if rate > settings.canary_max_error_rate:
                return f"5xx rate {rate:.1%} over {d['requests']:.0f} requests ({source}) > {settings.canary_max_error_rate:.1%}"
        if d["requests"] >= min(5, settings.canary_min_requests):
            mean_ms = d["seconds"] / d["requests"] * 1000
            if mean_ms > settings.canary_max_latency_ms:
                return f"mean latency {mean_ms:.0f} ms over {d['requests']:.0f} requests ({source}) > {settings.canary_max_latency_ms:g} ms"
    return None


class SlotWatcher:
    """Watches one slot during the bake: its readiness, and per check interval the 5xx rate and
    latency from Traefik's per-service metrics and from the slot's own BentoML metrics."""

    def __init__(self, proxy: Proxy, slot: str, settings: Settings):
        self.proxy, self.slot, self.settings = proxy, slot, settings
        self.last = self._read()
        self.totals = {"requests": 0, "errors": 0}

    def _read(self) -> dict[str, dict[str, float]]:
        counters = {"traefik": traefik_counters(self.proxy.metrics_text(), self.slot)}
        with contextlib.suppress(requests.RequestException):
            text = requests.get(f"{self.proxy.slot_url(self.slot)}/metrics", timeout=2).text
            counters["bentoml"] = bentoml_counters(text)
        return counters

    def check(self) -> str | None:
        """One check: the breach found since the previous check, or None."""
        if not _ready(self.proxy.slot_url(self.slot)):
            return f"slot {self.slot} is down or not ready"
        now = self._read()
        deltas = {src: {k: now[src][k] - self.last[src][k] for k in now[src]} for src in now if src in self.last}
        self.last = now
        self.totals["requests"] += int(deltas["traefik"]["requests"])
        self.totals["errors"] += int(deltas["traefik"]["errors"])
        return judge(deltas, self.settings)

    def bake(self, seconds: float) -> str | None:
        deadline = time.monotonic() + seconds
        while True:
            time.sleep(min(self.settings.canary_check_seconds, max(deadline - time.monotonic(), 0)))
            breach = self.check()
            if breach or time.monotonic() >= deadline:
                return breach


def resolve(settings: Settings, usecase, version: str | None = None) -> dict:
    """The model version to roll out: `version` if given, else the current `champion`."""
    from include.registry import CHAMPION, alias_version, connect

    model_name = settings.model_name or usecase.model_name
    client = connect(settings.mlflow_tracking_uri)
    if version:
        mv = client.get_model_version(model_name, str(version))
    else:
        mv = alias_version(client, model_name, CHAMPION)
        if mv is None:
            raise DeployError(f"model {model_name} has no `{CHAMPION}` alias yet: nothing to deploy")
    return {"model_name": model_name, "version": str(mv.version), "run_id": mv.run_id}


@contextlib.contextmanager
def fail_fast():
    """Inside an Airflow task: a rejected or rolled-back version fails the task without retries
    (retrying cannot make a bad model good); other errors keep the task's retries."""
    try:
        yield
    except (InfraValidationFailed, CanaryRolledBack) as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc


def restore_version(settings: Settings, usecase, ref: dict, reason: str, dag_run_id: str) -> dict:
    """Manual rollback of `ref` (model name, version, target slot): build or reuse its bento,
    start and validate it in the idle slot, switch all traffic at once, move `champion` to it."""
    from include.package import build_bento
    from include.registry import CHAMPION, connect, tag_version

    name, version, slot = ref["model_name"], ref["version"], ref["slot"]
    bento = build_bento(settings, name, version)
    start_candidate(settings, name, version, slot, bento["bento_tag"])
    infra_validate(settings, usecase, slot, name, version)
    canary(settings, name, version, slot, steps=(100,), bake_seconds=min(settings.canary_bake_seconds, 10))
    live = finalize(settings, name, version, slot, bento["bento_tag"], dag_run_id)
    client = connect(settings.mlflow_tracking_uri)
    client.set_registered_model_alias(name, CHAMPION, version)
    tag_version(client, name, version, {"rollback.reason": reason or "manual rollback", "rollback.dag_run_id": dag_run_id})
    return live
