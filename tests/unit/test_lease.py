"""The rollout lease: one rollout at a time on the serving host (include/rollout/lease.py)."""

from __future__ import annotations

import threading
import time

import pytest

from include.rollout import lease
from include.settings import get_settings


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOP_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_a_second_rollout_waits_then_fails_naming_the_holder(settings):
    lease.acquire(settings, "deploy/run-1", wait=0)
    with pytest.raises(lease.RolloutBusy, match="deploy/run-1 holds the rollout lease"):
        lease.acquire(settings, "rollback/run-2", wait=0.3, poll=0.05)
    # the holder renews; the other gets it once it is released
    assert lease.acquire(settings, "deploy/run-1", wait=0)["owner"] == "deploy/run-1"
    assert not lease.release(settings, "rollback/run-2"), "only the holder releases"
    assert lease.release(settings, "deploy/run-1")
    assert lease.acquire(settings, "rollback/run-2", wait=0)["owner"] == "rollback/run-2"


def test_a_waiting_rollout_gets_the_lease_as_soon_as_it_is_released(settings):
    lease.acquire(settings, "deploy/a", wait=0)
    got = {}

    def wait_for_it():
        got["lease"] = lease.acquire(settings, "rollback/b", wait=30, poll=0.05)

    t = threading.Thread(target=wait_for_it)
    t.start()
    t.join(0.3)
    assert t.is_alive(), "it waits while deploy/a holds the lease"
    lease.release(settings, "deploy/a")
    t.join(10)
    assert got["lease"]["owner"] == "rollback/b"


def test_of_many_contenders_exactly_one_holds_it(settings):
    winners = []
    barrier = threading.Barrier(8)

    def contend(i):
        barrier.wait()
        if lease.try_acquire(settings, f"deploy/{i}") is not None:
            winners.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert lease.current(settings)["owner"] == f"deploy/{winners[0]}"


def test_an_expired_lease_is_free(settings, monkeypatch):
    lease.try_acquire(settings, "deploy/dead", ttl=0.2)
    assert lease.current(settings)["owner"] == "deploy/dead"
    assert lease.current(settings, at=time.time() + 1) is None
    assert lease.current(settings, at=time.time() - 1) is not None


def test_the_lease_of_an_ended_run_is_taken_over(settings):
    lease.acquire(settings, "deploy/lost-worker", wait=0)
    asked = []

    def ended(owner):
        asked.append(owner)
        return owner == "deploy/lost-worker"

    assert lease.acquire(settings, "rollback/next", wait=5, holder_ended=ended, poll=0.05)["owner"] == "rollback/next"
    assert asked == ["deploy/lost-worker"]
    # a live holder is not taken over
    with pytest.raises(lease.RolloutBusy):
        lease.acquire(settings, "deploy/third", wait=0.2, holder_ended=lambda owner: False, poll=0.05)


def test_only_the_holder_moves_traffic_and_steps_check_the_holder(settings):
    lease.acquire(settings, "deploy/a", wait=0)
    lease.beat(settings, "deploy/a", lease.SHIFTING)
    traffic = lease.current(settings)["traffic"]
    assert traffic["state"] == lease.SHIFTING and time.time() - traffic["heartbeat"] < 5
    with pytest.raises(lease.LeaseLost, match="rollback/b does not hold"):
        lease.beat(settings, "rollback/b", lease.SHIFTING)
    with pytest.raises(lease.LeaseLost, match="lost the serving lease to deploy/a"):
        lease.hold(settings, "rollback/b")
    lease.hold(settings, "deploy/a")
    lease.mark_abandoned(settings, "deploy/a")
    assert lease.current(settings)["traffic"]["state"] == lease.ABANDONED
    # a direct call without an owner (tests, scripts) is not checked
    lease.hold(settings, None)
    lease.beat(settings, None, lease.SHIFTING)


def test_a_damaged_lease_file_counts_as_free(settings):
    path = lease.lease_path(settings)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert lease.current(settings) is None
    assert lease.acquire(settings, "deploy/a", wait=0)["owner"] == "deploy/a"
