"""The serving entry: Traefik in front of two slots, routed by a file the deploy code rewrites.

Traefik's static configuration (entry points, file provider, metrics) is its command line; its
dynamic configuration (a weighted service over the slots, health checks, a retry middleware) is
`<state>/serving/dynamic/routing.yaml`. Weights change by replacing that file atomically (write a
temporary file, rename it over the old one): Traefik's file watcher applies the change without a
restart and without dropping a connection, and because the file is the routing state, a restarted
Traefik comes back with the same routing.

Traefik's API (read-only, used to confirm a change was applied), ping and Prometheus metrics
listen on their own entry point (LOOP_TRAEFIK_METRICS_PORT, 8082), never on Airflow's port.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from include.data.storage import atomic_write
from include.settings import Settings

SLOTS = ("blue", "green")
SERVICE = "predictor"
ROUTING_FILE = "routing.yaml"
ENTRY_RULE = "PathPrefix(`/`) && !PathPrefix(`/metrics`)"
"""What the serving entry routes to the slots: everything but their Prometheus metrics."""


class RoutingNotApplied(TimeoutError):
    """Traefik did not pick up a routing change in time."""


@dataclass(frozen=True)
class Proxy:
    settings: Settings

    @property
    def dir(self) -> Path:
        return self.settings.state_dir / "serving"

    @property
    def dynamic_dir(self) -> Path:
        return self.dir / "dynamic"

    @property
    def routing_file(self) -> Path:
        return self.dynamic_dir / ROUTING_FILE

    @property
    def history_file(self) -> Path:
        """Every routing change, appended: time, the process that made it, the weights."""
        return self.dir / "routing-history.jsonl"

    @property
    def entry_url(self) -> str:
        return f"http://{self.settings.serving_host}:{self.settings.serving_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.settings.serving_host}:{self.settings.traefik_metrics_port}"

    def slot_url(self, slot: str) -> str:
        return f"http://{self.settings.slot_host}:{self.settings.slot_ports[SLOTS.index(slot)]}"

    def command(self) -> list[str]:
        s = self.settings
        return [
            str(Path(sys.executable).parent / "traefik"),
            f"--entryPoints.web.address={s.serving_host}:{s.serving_port}",
            # Long enough for a batch of 1000 on a busy slot; Traefik's default is no limit at all.
            "--entryPoints.web.transport.respondingTimeouts.readTimeout=60s",
            # Below the slots' keep-alive (uvicorn: 5 s): Traefik never reuses a connection the slot
            # is closing, which would fail a POST with 502 (Go retries only idempotent requests).
            "--serversTransport.forwardingTimeouts.idleConnTimeout=3s",
            f"--entryPoints.traefik.address={s.serving_host}:{s.traefik_metrics_port}",
            f"--providers.file.directory={self.dynamic_dir}",
            "--providers.file.watch=true",
            "--api.insecure=true",
            "--api.dashboard=false",
            "--ping=true",
            "--ping.entryPoint=traefik",
            "--metrics.prometheus=true",
            "--metrics.prometheus.entryPoint=traefik",
            "--metrics.prometheus.addServicesLabels=true",
            "--metrics.prometheus.addEntryPointsLabels=true",
            "--log.level=WARN",
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
        ]

    # Routing ---------------------------------------------------------------------------------

    def weights(self) -> dict[str, int]:
        """Current weights per slot from the routing file ({} when nothing is routed yet)."""
        if not self.routing_file.exists():
            return {}
        doc = json.loads(self.routing_file.read_text())
        return {s["name"]: s["weight"] for s in doc["http"]["services"][SERVICE]["weighted"]["services"]}

    def set_weights(self, weights: dict[str, int], wait: float = 15) -> None:
        """Route by `weights` (slot → weight; slots at 0 are left out) and wait until Traefik has
        applied it. Idempotent: the same weights rewrite the same file."""
        doc = routing_config(weights, {slot: self.slot_url(slot) for slot in weights})
        # YAML is a superset of JSON: Traefik reads this file as YAML. The temporary file stays
        # outside the watched directory.
        atomic_write(self.routing_file, json.dumps(doc, indent=2).encode(), tmp_dir=self.dir)
        with open(self.history_file, "a") as f:  # who changed the routing when: one short line each
            f.write(json.dumps({"at": time.time(), "pid": os.getpid(), "weights": weights}) + "\n")
        if wait:
            self.wait_applied(weights, wait)

    def applied_weights(self) -> dict[str, int] | None:
        try:
            r = requests.get(f"{self.admin_url}/api/http/services/{SERVICE}@file", timeout=2)
        except requests.RequestException:
            return None
        if r.status_code != 200:
            return None
        return {s["name"].split("@")[0]: s["weight"] for s in r.json().get("weighted", {}).get("services", [])}

    def wait_applied(self, weights: dict[str, int], timeout: float = 15) -> None:
        want = {k: v for k, v in weights.items() if v > 0}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.applied_weights() == want:
                return
            time.sleep(0.1)
        raise RoutingNotApplied(
            f"Traefik at {self.admin_url} did not apply weights {want} from {self.routing_file} within {timeout:.0f}s "
            f"(it reports {self.applied_weights()}); see {self.settings.state_dir / 'logs' / 'traefik.log'}"
        )

    def answers(self) -> bool:
        try:
            return requests.get(f"{self.admin_url}/ping", timeout=2).ok
        except requests.RequestException:
            return False

    def metrics_text(self) -> str:
        return requests.get(f"{self.admin_url}/metrics", timeout=5).text


def routing_config(weights: dict[str, int], urls: dict[str, str]) -> dict:
    """Traefik dynamic configuration: one router to a weighted service over the slots with a
    positive weight; each slot actively health-checked on `/readyz`; retries on connection errors
    (a request that reached a slot and failed there is not retried: predictions are idempotent,
    but a 5xx is a signal the canary must see)."""
    live = {slot: w for slot, w in weights.items() if w > 0}
    if not live:
        raise ValueError(f"at least one slot needs a positive weight, got {weights}")
    if unknown := set(weights) - set(SLOTS):
        raise ValueError(f"unknown slots {sorted(unknown)}; slots are {SLOTS}")
    services: dict = {
        SERVICE: {
            "weighted": {
                "services": [{"name": slot, "weight": w} for slot, w in live.items()],
                "healthCheck": {},
            }
        }
    }
    for slot in live:
        services[slot] = {
            "loadBalancer": {
                "servers": [{"url": urls[slot]}],
                "healthCheck": {"path": "/readyz", "interval": "1s", "timeout": "1s"},
                "passHostHeader": True,
            }
        }
    return {
        "http": {
            "routers": {
                # Clients get the API; the slots' /metrics stay for the scraper, on the slots' own ports.
                SERVICE: {"entryPoints": ["web"], "rule": ENTRY_RULE, "service": SERVICE, "middlewares": ["retry"]}
            },
            "middlewares": {"retry": {"retry": {"attempts": 5, "initialInterval": "50ms"}}},
            "services": services,
        }
    }
