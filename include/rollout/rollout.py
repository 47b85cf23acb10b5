""" "Put version N into traffic": one path, two modes.

Two slots (blue, green) each run `bentoml serve <bento>`; Traefik routes by weight (see
`proxy.py`). A rollout of model version V (`promote`, the deploy DAG; `restore`, the rollback DAG):

1. `start_candidate`: the idle slot serves V's bento and answers `/readyz`; it gets no traffic.
2. `infra_validate`: a golden set straight to the slot must score exactly as the registry's
   model scores the same rows (|Δ| ≤ 1e-6) and within the latency budget.
3. `shift_traffic` (`canary.py`): the slot gets LOOP_CANARY_STEPS percent of traffic in turn
   (`restore`: all of it at once, after a short bake); every
   LOOP_CANARY_CHECK_SECONDS Traefik's per-slot metrics are read, and a breach (5xx rate, mean
   latency, a dead or unready slot) rolls back at once: all traffic to the old slot, the new one
   stopped, the version tagged with the reason.
4. `finalize`: the old slot is stopped after its in-flight requests drain; the deployment is
   recorded in the registry (the version's `deploy.*` tags, the model's `live` record and alias,
   which every worker reads); `restore` also moves the
   `champion` alias to V, so the next challenger is gated against what actually serves.

One rollout at a time: the plan takes the host's rollout lease (`lease.py`), waiting while a
deploy or rollback holds it, and decides only once it holds it; each later step checks it still
holds it; `finalize` releases it (so do a rollback, a rejection, and the run's failure).

Each step is idempotent: a retried task finds its slot already running, its weights already
applied, or its tags already written. Every function takes references (model name and version,
bento tag, slot name) and returns small dicts of references.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from include.model.packaging import build_bento
from include.model.registry import CHAMPION, alias_version, connect, tag_version
from include.rollout import lease
from include.rollout.canary import canary
from include.rollout.infra import infra_validate
from include.rollout.records import now, record_live, reject, tag
from include.rollout.slots import SLOTS, DeployError, InfraValidationFailed, Serving, other
from include.settings import Settings
from include.usecases import registered_model_name

log = logging.getLogger(__name__)

PROMOTE, RESTORE = "promote", "restore"
RESTORE_BAKE_SECONDS = 10
"""The restore mode's one traffic step is watched this long (the version has served before)."""


def resolve(settings: Settings, usecase, version: str | None = None) -> dict:
    """The model version to roll out: `version` if given, else the current `champion`."""
    model_name = registered_model_name(settings, usecase)
    client = connect(settings.mlflow_tracking_uri)
    if version:
        mv = client.get_model_version(model_name, str(version))
    else:
        mv = alias_version(client, model_name, CHAMPION)
        if mv is None:
            raise DeployError(f"model {model_name} has no `{CHAMPION}` alias yet: nothing to deploy")
    return {"model_name": model_name, "version": str(mv.version), "run_id": mv.run_id}


def plan(settings: Settings, model_name: str, version: str) -> dict:
    """What a rollout of `version` has to do: nothing if it already serves all traffic."""
    serving = Serving(settings)
    live = serving.live()
    serves = live is not None and (live["model_name"], live["model_version"]) == (model_name, str(version))
    if serves and serving.slot_running(live["slot"]) and serving.proxy.weights() == {live["slot"]: 100}:
        return {"action": "noop", "slot": live["slot"], "reason": f"version {version} already serves 100% from {live['slot']}"}
    target = other(live["slot"]) if live else SLOTS[0]
    return {"action": "rollout", "slot": target, "previous": live}


def plan_rollout(
    settings: Settings,
    usecase,
    version: str | None,
    *,
    restore_reason: str | None = None,
    owner: str | None = None,
    holder_ended: Callable[[str], bool] | None = None,
) -> dict | None:
    """References for a rollout of `version` (default: the champion) into the idle slot, or None
    when that version already serves all traffic. With `restore_reason` the rollout is a restore
    (the rollback DAG): one traffic step, and the `champion` alias follows.

    `owner` (the DAG run) first takes the rollout lease, waiting for a rollout in progress, and
    plans only once it holds it; it keeps the lease for the steps that follow, or gives it back
    when there is nothing to do. `holder_ended` lets it take over the lease of an ended run."""
    if owner:
        lease.acquire(settings, owner, holder_ended=holder_ended)
    try:
        ref = resolve(settings, usecase, version)
        step = plan(settings, ref["model_name"], ref["version"])
    except BaseException:
        lease.release(settings, owner)
        raise
    log.info("plan for %s v%s: %s", ref["model_name"], ref["version"], step)
    if step["action"] == "noop":
        lease.release(settings, owner)
        return None
    mode = {"mode": PROMOTE} if restore_reason is None else {"mode": RESTORE, "reason": restore_reason}
    return {**ref, "slot": step["slot"], **mode, "owner": owner}


def start_candidate(
    settings: Settings,
    model_name: str,
    version: str,
    slot: str,
    bento_tag: str,
    env: dict | None = None,
    timeout: float = 180,
    owner: str | None = None,
) -> dict:
    """Serve the candidate's bento in the idle `slot`, with no traffic, until `/readyz` answers."""
    lease.hold(settings, owner)
    serving = Serving(settings)
    serving.ensure_proxy()
    live = serving.live()
    if live and live["slot"] == slot:
        raise DeployError(f"slot {slot} is live ({live['bento_tag']}); a candidate goes to the idle slot")
    try:
        return serving.start_slot(slot, bento_tag, version, env, timeout=timeout)
    except InfraValidationFailed as exc:
        reject(settings, model_name, version, str(exc), {"slot": slot, "bento_tag": bento_tag})
        lease.release(settings, owner)
        raise


def shift_traffic(settings: Settings, ref: dict) -> dict:
    """The traffic step of `ref`'s mode: the canary's steps (promote), or all traffic at once after a
    short bake (restore); a breach rolls back either way."""
    lease.hold(settings, ref.get("owner"))
    if ref.get("mode", PROMOTE) == RESTORE:
        bake = min(settings.canary_bake_seconds, RESTORE_BAKE_SECONDS)
        return canary(
            settings, ref["model_name"], ref["version"], ref["slot"], steps=(100,), bake_seconds=bake, owner=ref.get("owner")
        )
    return canary(settings, ref["model_name"], ref["version"], ref["slot"], owner=ref.get("owner"))


def finalize(settings: Settings, ref: dict, bento_tag: str, dag_run_id: str) -> dict:
    """Stop the old slot once drained; record the deployment in the registry; a restore
    also moves `champion` to the version and records why."""
    model_name, version, slot = ref["model_name"], ref["version"], ref["slot"]
    lease.hold(settings, ref.get("owner"))
    serving = Serving(settings)
    previous = other(slot)
    if serving.proxy.weights() != {slot: 100}:
        serving.proxy.set_weights({slot: 100})
    if serving.slot_running(previous):
        serving.stop_slot(previous, drain_seconds=2)
    deployed_at = now()
    live = {
        "slot": slot,
        "bento_tag": bento_tag,
        "model_name": model_name,
        "model_version": str(version),
        "deployed_at": deployed_at,
        "dag_run_id": dag_run_id,
    }
    tag(
        settings,
        model_name,
        version,
        {"deploy.bento_tag": bento_tag, "deploy.slot": slot, "deploy.deployed_at": deployed_at, "deploy.dag_run_id": dag_run_id},
    )
    if ref.get("mode") == RESTORE:
        client = connect(settings.mlflow_tracking_uri)
        client.set_registered_model_alias(model_name, CHAMPION, version)
        tag_version(
            client,
            model_name,
            version,
            {"rollback.reason": ref["reason"] or "manual rollback", "rollback.dag_run_id": dag_run_id},
        )
    record_live(settings, live)  # last: what serves is recorded once everything above holds
    lease.release(settings, ref.get("owner"))
    return live


def rollout_version(settings: Settings, usecase, ref: dict, dag_run_id: str) -> dict:
    """The whole path in one process (the DAGs run it as one task per step): build or reuse the
    bento, start and validate it in the idle slot, shift traffic, finalize. With `ref["owner"]`
    (from `plan_rollout`) the lease it holds is released whatever happens."""
    owner = ref.get("owner")
    try:
        bento = build_bento(settings, ref["model_name"], ref["version"])
        start_candidate(settings, ref["model_name"], ref["version"], ref["slot"], bento["bento_tag"], owner=owner)
        lease.hold(settings, owner)
        infra_validate(settings, usecase, ref["slot"], ref["model_name"], ref["version"])
        shift_traffic(settings, ref)
        return finalize(settings, ref, bento["bento_tag"], dag_run_id)
    finally:
        lease.release(settings, owner)


def restore_version(settings: Settings, usecase, ref: dict, reason: str, dag_run_id: str) -> dict:
    """Manual rollback of `ref` (model name, version, target slot): the rollout path in restore mode."""
    return rollout_version(settings, usecase, {**ref, "mode": RESTORE, "reason": reason}, dag_run_id)
