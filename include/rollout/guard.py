"""The serving guard: keeps the live deployment serving on this host without a person.

    python -m include.rollout.guard

Runs beside the slots (the embedded runtime starts it with the demo; in production the serving
host starts it before its worker, `include.rollout.host`). Every LOOP_GUARD_INTERVAL_SECONDS it
checks, in this order:

1. **Traefik** (when it runs on this host and has routed before): not answering → started again; it reads the routing
   file, so it comes back with the last routing. Alert `proxy_restarted`.
2. **An abandoned canary**: the rollout lease says traffic is `shifting` but the canary's
   heartbeat stopped LOOP_GUARD_CANARY_STALE_SECONDS ago (its task was killed between steps).
   All traffic goes back to the live slot; the candidate keeps running without traffic, so the
   canary's retry can resume. Alert `canary_abandoned`.
3. **The live slot**, when no rollout holds the lease: its process gone, or not ready for
   LOOP_GUARD_UNREADY_SECONDS → restarted from the live record (the bento is rebuilt if this host
   lost it) and given all traffic again. Alert `serving_restarted` naming the slot, the version,
   what was wrong and how long serving took to come back; `serving_down` if it cannot.
   Routing that does not send everything to the live slot is put back too (`routing_restored`).

While a rollout holds the lease the guard leaves the slots to it (a deploy stops and starts them
on purpose); while the guard restarts a slot it holds the lease itself, so a deploy waits. What is live comes from the registry (`Serving.live`), re-read every
LIVE_REFRESH_SECONDS; when MLflow is unreachable the last record read is used, so serving heals
while MLflow is down too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field

from include.alerting.alerts import send_alert
from include.rollout import lease
from include.rollout.slots import Serving, ready
from include.settings import Settings, get_settings

log = logging.getLogger("include.rollout.guard")

LIVE_REFRESH_SECONDS = 15
GUARD_OWNER = "serving-guard"
GUARD_LEASE_SECONDS = 300
"""The guard's hold on the slots while it restarts one: short, in case the guard itself dies."""
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class Guard:
    settings: Settings
    live: dict | None = None
    live_read_at: float = float("-inf")
    unready_since: float | None = None
    down_since: float | None = None
    down_alerted: bool = False
    actions: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.serving = Serving(self.settings)

    # One check ---------------------------------------------------------------------------------

    def tick(self) -> list[dict]:
        """One round of checks; returns what it did (also kept in `actions`)."""
        done = []
        self._refresh_live()
        if self._proxy_is_local() and not self.serving.proxy.answers():
            done.append(self._restart_proxy())
        held = lease.current(self.settings)
        traffic = (held or {}).get("traffic") or {}
        if held and traffic.get("state") == lease.SHIFTING:
            silent = time.time() - traffic["heartbeat"]
            if silent > self.settings.guard_canary_stale_seconds:
                done.append(self._take_back_traffic(held, silent))
        elif held is None or traffic.get("state") == lease.ABANDONED:
            done.extend(self._heal_live())
        done = [d for d in done if d]
        self.actions.extend(done)
        return done

    def _refresh_live(self, force: bool = False) -> None:
        """Re-read the live record every LIVE_REFRESH_SECONDS, and always (`force`) before a
        repair: a deploy that just finished moved it, and healing from a stale record would bring
        the old slot back."""
        if not force and time.monotonic() - self.live_read_at < LIVE_REFRESH_SECONDS:
            return
        try:
            self.live = self.serving.live()
            self.live_read_at = time.monotonic()
        except Exception as exc:  # MLflow down: keep serving what was last recorded
            log.warning("cannot read the live record (%s: %s); using the last one read", type(exc).__name__, exc)

    def _proxy_is_local(self) -> bool:
        """Traefik is this host's to restart: it listens here and has routed before (before the
        first rollout there is nothing to route)."""
        return self.settings.serving_host in LOCAL_HOSTS and self.serving.proxy.routing_file.exists()

    def _alert(self, kind: str, message: str, details: dict) -> dict:
        log.warning("%s: %s", kind, message)
        send_alert(self.settings, kind, message, details)
        return {"action": kind, "message": message, **details}

    # Repairs -----------------------------------------------------------------------------------

    def _restart_proxy(self) -> dict | None:
        started = time.monotonic()
        try:
            self.serving.ensure_proxy()
        except Exception as exc:
            log.error("Traefik is down and could not be started: %s", exc)
            return None
        weights = self.serving.proxy.weights()
        return self._alert(
            "proxy_restarted",
            f"Traefik at {self.serving.proxy.entry_url} was down; restarted with its last routing {weights} "
            f"in {time.monotonic() - started:.1f}s",
            {"weights": weights},
        )

    def _take_back_traffic(self, held: dict, silent: float) -> dict | None:
        self._refresh_live(force=True)
        live = self.live
        if live is None or not (self.serving.slot_running(live["slot"]) and ready(self.serving.proxy.slot_url(live["slot"]))):
            log.error("rollout %s stopped mid-canary and there is no healthy live slot to send traffic back to", held["owner"])
            return None
        before = self.serving.proxy.weights()
        self.serving.proxy.set_weights({live["slot"]: 100})
        lease.mark_abandoned(self.settings, held["owner"])
        return self._alert(
            "canary_abandoned",
            f"rollout {held['owner']} stopped moving traffic {silent:.0f}s ago at {before}; all traffic is back on "
            f"{live['model_name']} v{live['model_version']} in slot {live['slot']}",
            {"owner": held["owner"], "weights_before": before, "slot": live["slot"], "model_version": live["model_version"]},
        )

    def _heal_live(self) -> list[dict]:
        if self.live is None:
            return []
        problem = self._slot_problem(self.live["slot"])
        if problem is not None or self.serving.proxy.weights() != {self.live["slot"]: 100}:
            self._refresh_live(force=True)
            if self.live is None:
                return []
            problem = self._slot_problem(self.live["slot"])
        live = self.live
        slot = live["slot"]
        if problem is None:
            self._recovered()
            if self.serving.proxy.weights() != {slot: 100}:
                before = self.serving.proxy.weights()
                self.serving.proxy.set_weights({slot: 100})
                return [
                    self._alert("routing_restored", f"routing was {before}; all traffic back on live slot {slot}", {"slot": slot})
                ]
            return []
        self.down_since = self.down_since or time.monotonic()
        # The guard holds the lease while it repairs, so a deploy starting meanwhile waits for it.
        if lease.try_acquire(self.settings, GUARD_OWNER, ttl=GUARD_LEASE_SECONDS) is None:
            return []  # a rollout has just taken the slots
        log.warning("live slot %s (%s v%s): %s; restarting it", slot, live["model_name"], live["model_version"], problem)
        try:
            self.serving.resume(live)
        except Exception as exc:
            if not self.down_alerted:
                self.down_alerted = True
                return [
                    self._alert(
                        "serving_down",
                        f"live slot {slot} ({live['model_name']} v{live['model_version']}) {problem} and could not be restarted: "
                        f"{type(exc).__name__}: {exc}; the guard keeps trying",
                        {"slot": slot, "model_version": live["model_version"]},
                    )
                ]
            return []
        finally:
            lease.release(self.settings, GUARD_OWNER)
        took = time.monotonic() - self.down_since
        self._recovered()
        self.unready_since = None
        return [
            self._alert(
                "serving_restarted",
                f"live slot {slot} ({live['model_name']} v{live['model_version']}) {problem}; the serving guard restarted it, "
                f"serving again {took:.1f}s after it was found down",
                {"slot": slot, "model_version": live["model_version"], "problem": problem, "recovery_seconds": round(took, 1)},
            )
        ]

    def _slot_problem(self, slot: str) -> str | None:
        if not self.serving.slot_running(slot):
            self.unready_since = None
            return "was not running (its process was gone)"
        if ready(self.serving.proxy.slot_url(slot)):
            self.unready_since = None
            return None
        self.unready_since = self.unready_since or time.monotonic()
        unready = time.monotonic() - self.unready_since
        if unready < self.settings.guard_unready_seconds:
            return None
        return f"did not answer /readyz for {unready:.0f}s"

    def _recovered(self) -> None:
        self.down_since, self.down_alerted = None, False


def run(settings: Settings) -> None:
    """Check forever, every LOOP_GUARD_INTERVAL_SECONDS; a failed round is logged, not fatal."""
    guard = Guard(settings)
    log.info("serving guard: checking every %.0fs (state %s)", settings.guard_interval_seconds, settings.state_dir)
    first = True
    while True:
        try:
            guard.tick()
            if first:
                first = False
                live = guard.live
                what = f"live slot {live['slot']} ({live['model_name']} v{live['model_version']})" if live else "nothing live yet"
                log.info("serving guard: watching %s", what)
        except Exception:
            log.exception("serving guard: this round failed; next in %.0fs", settings.guard_interval_seconds)
        time.sleep(settings.guard_interval_seconds)


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="python -m include.rollout.guard", description=__doc__.split("\n")[0]).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(get_settings())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
