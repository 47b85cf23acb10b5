"""Steps of a rollout and a client load, shared by the serving tests (integration and faults):
the deploy DAG's steps called in-process, a poll with a named deadline, the version the entry
serves."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from include.local.traffic import Report, replay
from include.model.packaging import build_bento
from include.rollout.canary import canary
from include.rollout.infra import infra_validate
from include.rollout.rollout import finalize, plan, start_candidate
from include.rollout.slots import Serving


def prepare(settings, flights, version: str) -> dict:
    """The deploy DAG's steps up to the switch: plan, build, start the candidate, infra validation."""
    name = settings.model_name
    step = plan(settings, name, version)
    assert step["action"] == "rollout"
    bento = build_bento(settings, name, version)
    started = start_candidate(settings, name, version, step["slot"], bento["bento_tag"], timeout=60)
    # a retried task finds its slot serving and reuses it
    assert start_candidate(settings, name, version, step["slot"], bento["bento_tag"])["pid"] == started["pid"]
    infra_validate(settings, flights, step["slot"], name, version)
    return {**step, **bento}


def poll(condition, timeout: float, what: str) -> None:
    """Wait until `condition()` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def ensure_live(settings, flights, version: str) -> dict:
    """`version` serving all traffic: rolled out through the deploy steps unless it already is, so
    each test sets up the state it starts from instead of relying on the tests before it."""
    if plan(settings, settings.model_name, version)["action"] == "noop":
        return Serving(settings).live()
    return switch(settings, version, prepare(settings, flights, version))


def switch(settings, version: str, ref: dict) -> dict:
    """The deploy DAG's remaining steps: canary, then finalize."""
    canary(settings, settings.model_name, version, ref["slot"])
    target = {"model_name": settings.model_name, "version": version, "slot": ref["slot"]}
    return finalize(settings, target, ref["bento_tag"], "test")


def entry_version(settings, record) -> str:
    r = requests.post(f"http://127.0.0.1:{settings.serving_port}/predict", json=record, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


class Load:
    """A bounded concurrent client loop against the serving entry, in the background."""

    def __init__(self, settings, records, clients=3, limit=6000):
        self.stop = threading.Event()
        self.clients = clients
        self.result = Report()  # filled as answers come in
        url = f"http://127.0.0.1:{settings.serving_port}"
        self.thread = threading.Thread(
            target=replay,
            args=(url, records),
            kwargs={"clients": clients, "loop": True, "limit": limit, "stop": self.stop, "report": self.result},
        )

    def __enter__(self):
        self.thread.start()
        poll(lambda: len(self.result.outcomes) >= 2 * self.clients, 30, "the client loop to get answers")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)
