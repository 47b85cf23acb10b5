"""One rollout at a time on the serving host: the rollout lease.

`deploy` and `rollback` both move traffic between the same two slots. Without a lock a rollback
started during a canary would pick the idle slot, which is the one the canary is baking in, and
their weight changes would interleave. So every rollout holds the lease from its plan to its
end: the plan step waits for it (LOOP_ROLLOUT_LOCK_WAIT_SECONDS), every later step checks that it
still holds it and renews it, and `finalize` (or a rollback, or the failure of the run) releases
it. A lease whose holder vanished without releasing it expires after LOOP_ROLLOUT_LEASE_SECONDS.

The lease also says what traffic is doing, for the serving guard (`guard.py`): `shifting` while
the canary moves weights, with a heartbeat at every check; `complete` once the canary has put all
traffic on the new slot (finalize is pending). A `shifting` lease whose heartbeat stopped means
the canary task died between steps: the guard sends traffic back to the live slot.

The lease is a JSON file next to the routing (`<state>/serving/rollout-lease.json`), changed
under an exclusive `flock`, so the host's tasks and its guard see one state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from include.data.storage import atomic_write
from include.rollout.slots import DeployError
from include.settings import Settings

log = logging.getLogger(__name__)

SHIFTING, COMPLETE, ABANDONED = "shifting", "complete", "abandoned"


class RolloutBusy(DeployError):
    """Another rollout holds the lease for longer than this one may wait."""


class LeaseLost(DeployError):
    """This rollout no longer holds the lease (it expired and another rollout took it)."""


def lease_path(settings: Settings) -> Path:
    return settings.state_dir / "serving" / "rollout-lease.json"


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    path = lease_path(settings).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(settings: Settings) -> dict | None:
    path = lease_path(settings)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("rollout lease %s is damaged; treating it as free", path)
        return None


def _write(settings: Settings, lease: dict | None) -> None:
    path = lease_path(settings)
    if lease is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, json.dumps(lease, indent=2).encode())


def current(settings: Settings, at: float | None = None) -> dict | None:
    """The lease in force (None when free or expired)."""
    lease = _read(settings)
    if lease is None or lease["expires_at"] <= (time.time() if at is None else at):
        return None
    return lease


def try_acquire(settings: Settings, owner: str, take_from: str | None = None, ttl: float | None = None) -> dict | None:
    """Take the lease for `owner` (or renew it if `owner` holds it); None if another holds it.
    `take_from`: the holder whose run has ended without releasing it; taken over if it still holds it.
    `ttl`: seconds until it expires unless renewed (default LOOP_ROLLOUT_LEASE_SECONDS)."""
    with _locked(settings):
        lease = current(settings)
        if lease is not None and lease["owner"] not in (owner, take_from):
            return None
        if lease is not None and lease["owner"] == take_from:
            log.warning("rollout %s ended without releasing the serving lease; %s takes it over", take_from, owner)
            lease = None
        now = time.time()
        lease = {
            "owner": owner,
            "acquired_at": lease["acquired_at"] if lease else now,
            "expires_at": now + (settings.rollout_lease_seconds if ttl is None else ttl),
            "traffic": (lease or {}).get("traffic"),
        }
        _write(settings, lease)
        return lease


def claim(settings: Settings, owner: str, holder_ended: Callable[[str], bool] | None = None) -> dict | None:
    """One attempt of `acquire`: the lease, or None while another live rollout holds it (the
    deploy and rollback DAGs poke this from a sensor in reschedule mode, holding no worker slot)."""
    lease = try_acquire(settings, owner)
    if lease is not None:
        return lease
    holder = current(settings)
    if holder and holder_ended and holder_ended(holder["owner"]):
        return try_acquire(settings, owner, take_from=holder["owner"])
    if holder:
        log.info("the serving slots are busy: %s holds the rollout lease", holder["owner"])
    return None


def acquire(
    settings: Settings,
    owner: str,
    wait: float | None = None,
    holder_ended: Callable[[str], bool] | None = None,
    poll: float = 1.0,
) -> dict:
    """Take the lease for `owner`, waiting up to `wait` seconds (LOOP_ROLLOUT_LOCK_WAIT_SECONDS)
    while another rollout holds it; raises `RolloutBusy` naming the holder after that.
    `holder_ended(owner)` tells whether a holder's run has ended (the Airflow glue asks Airflow):
    the lease of a run that ended without releasing it (its worker was lost) is taken over."""
    wait = settings.rollout_lock_wait_seconds if wait is None else wait
    deadline = time.monotonic() + wait
    next_report = 0.0
    while True:
        lease = claim(settings, owner, holder_ended)
        if lease is not None:
            return lease
        holder = current(settings)
        if time.monotonic() >= deadline:
            who = holder["owner"] if holder else "another rollout"
            raise RolloutBusy(
                f"the serving slots are busy: {who} holds the rollout lease ({lease_path(settings)}); waited {wait:.0f}s"
            )
        if time.monotonic() >= next_report and holder:
            log.info(
                "waiting for the rollout lease held by %s (expires in %.0fs)", holder["owner"], holder["expires_at"] - time.time()
            )
            next_report = time.monotonic() + 30
        time.sleep(poll)


def hold(settings: Settings, owner: str | None) -> None:
    """Check that `owner` still holds the lease and renew it; a step without an owner (a direct
    call outside the DAGs) is not checked."""
    if owner is None:
        return
    if try_acquire(settings, owner) is None:
        raise LeaseLost(f"rollout {owner} lost the serving lease to {current(settings)['owner']}; its steps stop here")


def beat(settings: Settings, owner: str | None, state: str) -> None:
    """Record what traffic is doing (`shifting`, `complete`) with a heartbeat, renewing the lease."""
    if owner is None:
        return
    with _locked(settings):
        lease = current(settings)
        if lease is None or lease["owner"] != owner:
            raise LeaseLost(f"rollout {owner} does not hold the serving lease; it must not move traffic")
        lease["traffic"] = {"state": state, "heartbeat": time.time()}
        lease["expires_at"] = time.time() + settings.rollout_lease_seconds
        _write(settings, lease)


def mark_abandoned(settings: Settings, owner: str) -> None:
    """The guard took traffic back from `owner`'s dead canary."""
    with _locked(settings):
        lease = current(settings)
        if lease is not None and lease["owner"] == owner:
            lease["traffic"] = {**(lease.get("traffic") or {}), "state": ABANDONED}
            _write(settings, lease)


def release(settings: Settings, owner: str | None) -> bool:
    """Give the lease up if `owner` holds it; True if it did."""
    if owner is None:
        return False
    with _locked(settings):
        lease = _read(settings)
        if lease is None or lease["owner"] != owner:
            return False
        _write(settings, None)
        return True
