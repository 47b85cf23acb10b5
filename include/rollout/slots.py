"""The serving runtime on one host: Traefik and the blue and green slots as local processes.

What is live is read from the model registry (`records.read_live`), where every worker and host
can read it; what runs on this host is `<state>/serving/slot-<colour>.json`. In the embedded
runtime the processes are started by the tasks; in production they run on the serving host's
worker (LOOP_SERVING_QUEUE), with the same code, and `resume` brings them back when the host
(re)starts (`python -m include.rollout.host`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from include.data.storage import atomic_write
from include.outcomes import FailNow
from include.rollout.processes import Stack, port_in_use, wait_http
from include.rollout.proxy import SLOTS, Proxy
from include.rollout.records import read_live
from include.settings import Settings
from include.usecases import registered_model_name

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """A rollout step failed; traffic stays on (or went back to) the previous slot."""


class InfraValidationFailed(FailNow, DeployError):
    """The candidate never became ready, or scored differently: it never gets traffic."""

    alerted = True  # `reject` alerted already; the failure notifier does not repeat it


def other(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


@dataclass
class Serving:
    """The serving runtime on this machine: Traefik and the two slots as local processes."""

    settings: Settings

    def __post_init__(self):
        self.proxy = Proxy(self.settings)
        self.stack = Stack(self.settings.state_dir)
        self.model_name = registered_model_name(self.settings)

    # State -------------------------------------------------------------------------------------

    def live(self) -> dict | None:
        """The deployment serving 100% of traffic, from the registry: slot, bento tag, model
        name/version, time, DAG run."""
        return read_live(self.settings, self.model_name)

    def slot_record(self, slot: str) -> dict | None:
        path = self.proxy.dir / f"slot-{slot}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, path: Path, doc: dict | None) -> None:
        if doc is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, json.dumps(doc, indent=2).encode())

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

    def resume(self, live: dict | None = None) -> dict | None:
        """After a restart of the host or the runtime: Traefik up, and the live deployment's slot
        serving again with all traffic, as the registry records it (or as `live`, a record read
        earlier); its bento is rebuilt from the registered version when this host's store lost it.
        Idempotent: a slot already serving it is kept."""
        from include.model.packaging import build_bento

        live = live or self.live()
        if live is None:
            return None
        self.ensure_proxy()
        build_bento(self.settings, live["model_name"], live["model_version"])  # finds it, or rebuilds it
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
        if same and self.slot_running(slot) and ready(self.proxy.slot_url(slot)):
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
            "BENTOML_HOME": str(self.slot_home(slot)),
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONPATH": "",  # the bento's own copy of the code, not the checkout's
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",  # the slot reads XGBoost's file, never a pickle
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
        self.write_json(self.proxy.dir / f"slot-{slot}.json", record)
        try:
            wait_http(f"{self.proxy.slot_url(slot)}/readyz", timeout, proc, self.stack.log_dir / f"slot-{slot}.log")
        except (TimeoutError, RuntimeError) as exc:
            self.stop_slot(slot)
            raise InfraValidationFailed(f"slot {slot} serving {bento_tag} never became ready: {exc}") from exc
        return record

    def slot_home(self, slot: str) -> Path:
        """The slot's own BENTOML_HOME: the shared bento and model stores linked in, and its own
        Prometheus multiprocess directory (BentoML empties that directory when a server starts,
        and sums every file in it: a shared one would wipe the live slot's counters when a
        candidate starts, and make each slot report both)."""
        home = self.proxy.dir / f"bentoml-{slot}"
        home.mkdir(parents=True, exist_ok=True)
        for store in ("bentos", "models"):
            shared = self.settings.bentoml_home / store
            shared.mkdir(parents=True, exist_ok=True)
            link = home / store
            if not link.is_symlink():
                link.symlink_to(shared, target_is_directory=True)
        return home

    def stop_slot(self, slot: str, drain_seconds: float = 0) -> None:
        """Stop the slot's whole process group (BentoML's supervisor and its workers)."""
        if drain_seconds:
            time.sleep(drain_seconds)
        self.stack.stop_one(f"slot-{slot}")
        self.write_json(self.proxy.dir / f"slot-{slot}.json", None)


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
