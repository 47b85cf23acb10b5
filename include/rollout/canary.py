"""The canary: traffic shifted to the new slot step by step, each step baked and watched.

Every LOOP_CANARY_CHECK_SECONDS the watcher reads the new slot's counters from Traefik's
per-service metrics (what clients saw) and from the slot's own BentoML metrics, and checks its
`/readyz`. `judge` is the pure rule: a 5xx rate over the limit (with enough requests), a mean
latency over the limit, or a dead or unready slot is a breach, and a breach rolls back at once.
"""

from __future__ import annotations

import contextlib
import logging
import time

import requests

from include.outcomes import FailNow
from include.rollout import lease
from include.rollout.proxy import Proxy
from include.rollout.records import rolled_back
from include.rollout.slots import DeployError, Serving, other, ready
from include.settings import Settings

log = logging.getLogger(__name__)


class CanaryRolledBack(FailNow, DeployError):
    """A breach during the bake: traffic went back to the previous slot."""

    alerted = True  # `rollback` alerted already; the failure notifier does not repeat it

    def __init__(self, message: str, detected_at: float, restored_at: float):
        super().__init__(message)
        self.detected_at = detected_at
        self.restored_at = restored_at


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
        if not ready(self.proxy.slot_url(self.slot)):
            return f"slot {self.slot} is down or not ready"
        now = self._read()
        deltas = {src: {k: now[src][k] - self.last[src][k] for k in now[src]} for src in now if src in self.last}
        self.last = now
        self.totals["requests"] += int(deltas["traefik"]["requests"])
        self.totals["errors"] += int(deltas["traefik"]["errors"])
        return judge(deltas, self.settings)

    def bake(self, seconds: float, on_check=None) -> str | None:
        deadline = time.monotonic() + seconds
        while True:
            time.sleep(min(self.settings.canary_check_seconds, max(deadline - time.monotonic(), 0)))
            if on_check:
                on_check()
            breach = self.check()
            if breach or time.monotonic() >= deadline:
                return breach


def canary(
    settings: Settings,
    model_name: str,
    version: str,
    slot: str,
    steps: tuple[int, ...] | None = None,
    bake_seconds: float | None = None,
    owner: str | None = None,
) -> dict:
    """Shift traffic to `slot` step by step (LOOP_CANARY_STEPS unless `steps`), baking and watching
    each step; roll back on the first breach. With no live slot to fall back on (the first
    deployment) traffic goes straight to 100% and is watched for one short bake.

    `owner`, the rollout holding the lease, heartbeats at every check while traffic is split (the
    serving guard takes traffic back from a canary that falls silent) and marks the shift
    `complete` at the end; a rollback releases the lease, since the run ends there."""
    serving = Serving(settings)
    serving.ensure_proxy()
    previous = other(slot)
    live = serving.live()
    fallback = live is not None and live["slot"] == previous and serving.slot_running(previous)
    steps = (steps or settings.canary_steps) if fallback else (100,)
    bake = settings.canary_bake_seconds if bake_seconds is None else bake_seconds
    watcher = SlotWatcher(serving.proxy, slot, settings)
    history = []

    def heartbeat():
        lease.beat(settings, owner, lease.SHIFTING)

    for pct in steps:
        heartbeat()
        # At 100% the old slot leaves the routing but keeps running until `finalize`: a breach
        # while baking at 100% can still send everything back to it.
        serving.proxy.set_weights({slot: pct, previous: 100 - pct} if pct < 100 else {slot: 100})
        log.info("canary: slot %s (version %s) gets %d%% of traffic; baking %.0fs", slot, version, pct, bake)
        breach = watcher.bake(bake, on_check=heartbeat)
        history.append({"percent": pct, **watcher.totals})
        if breach:
            detected_at = time.time()
            restored_at = rollback(settings, model_name, version, slot, breach, restore=previous if fallback else None)
            lease.release(settings, owner)
            message = f"{model_name} version {version} rolled back at {pct}% traffic: {breach}"
            raise CanaryRolledBack(message, detected_at, restored_at)
        log.info("canary: %d%% step passed (%s)", pct, watcher.totals)
    lease.beat(settings, owner, lease.COMPLETE)
    return {"slot": slot, "steps": history}


def rollback(settings: Settings, model_name: str, version: str, slot: str, reason: str, restore: str | None) -> float:
    """All traffic back to `restore`, `slot` stopped, the version tagged, an alert sent.
    Returns the time Traefik confirmed the old routing."""
    serving = Serving(settings)
    if restore:
        serving.proxy.set_weights({restore: 100})
    restored_at = time.time()
    serving.stop_slot(slot, drain_seconds=1)
    rolled_back(settings, model_name, version, slot, reason, restore)
    return restored_at
