"""The refit: once the gate accepts a challenger, the same configuration fitted on its whole window.

The challenger was judged on the newest week, which it never saw; on this loop's data a model serves
better the fresher its data, so the model that serves is a refit that has seen that week too (issue
12's replay: 0.6915 ROC AUC served against 0.6804 without it). Its lineage names both fits: the
refit's partitions are the challenger's training and evaluation partitions, by hash, and its
`gated` entry is the version the gate judged.

A refit has seen its held-out week, so its scores of it judge nothing about the future. What it
carries as its own expected numbers (`eval_*`, what the monitor compares live traffic with) are the
challenger's out-of-sample ones; its own scores of the week are logged as `refit_heldout_*` and serve
one purpose, the guard: a refit that scores the week it was fitted on worse than the challenger that
never saw it came out wrong (a fit cut short, a window read differently), and the challenger serves
instead, with an alert.

`refit_accepted` fits and registers the refit (no alias); `serve_accepted` applies the guard and moves
`champion`. Both are idempotent per DAG run, like training and the gate.
"""

from __future__ import annotations

import hashlib
import logging

from include.alerting.alerts import mlflow_run_link, send_alert
from include.data.storage import Storage, get_storage
from include.model.card import write_model_card
from include.model.dataset import LINEAGE_ARTIFACT
from include.model.gate import LABELS, GateConfig, promote_version
from include.model.params import TrainParams
from include.model.registry import CHAMPION, alias_version, connect, finished_run, naming_the_server, tag_version
from include.model.training import STAGE, git_commit, log_training_run, register_run
from include.settings import Settings
from include.usecases import UseCase

log = logging.getLogger(__name__)

REFIT_OF = "loop.refit_of"
"""Tag of a refit's run and version: the version the gate judged, whose configuration it refits."""
HELD_OUT = "refit_heldout"
"""Prefix of a refit's metrics on the week it was judged by (and has seen)."""


def guard(refit_value: float, gated_value: float) -> bool:
    """Whether a refit may replace the challenger the gate accepted: it scores the held-out week,
    which it was fitted on, at least as well as the challenger, which never saw it. NaN fails."""
    return refit_value == refit_value and gated_value == gated_value and refit_value >= gated_value


def refit_accepted(
    usecase: UseCase,
    params: TrainParams,
    settings: Settings,
    decision: dict,
    *,
    dag_id: str,
    dag_run_id: str,
    storage: Storage | None = None,
) -> dict:
    """Fit `params` on the whole window of the version the gate accepted (`decision`, the gate's
    result) and register it without an alias. Returns references: {"model_name", "version" (the
    refit), "run_id", "gated_version", "previous_champion", "reused"}."""
    storage = storage or get_storage()
    model_name, gated_version = decision["model_name"], str(decision["version"])
    client = connect(settings.mlflow_tracking_uri)
    with naming_the_server(settings.mlflow_tracking_uri):
        gated = client.get_model_version(model_name, gated_version)
        gated_run = client.get_run(gated.run_id)
        exp_id = gated_run.info.experiment_id
        identity = {"airflow.dag_id": dag_id, "airflow.dag_run_id": dag_run_id, STAGE: "refit", REFIT_OF: gated_version}
        run = finished_run(client, exp_id, identity, fail_unfinished=True)
        reused = run is not None
        if run is None:
            import mlflow

            lineage = mlflow.artifacts.load_dict(f"runs:/{gated.run_id}/{LINEAGE_ARTIFACT}")
            train_recs, eval_recs = lineage["train"] + lineage["eval"], lineage["eval"]
            tags = {
                **identity,
                "mlflow.source.git.commit": git_commit(settings),
                "loop.usecase": usecase.name,
                "loop.reason": gated_run.data.tags.get("loop.reason", "(none given)"),
                **{k: gated_run.data.tags[k] for k in ("loop.monitor_report", "loop.data_window") if k in gated_run.data.tags},
                "loop.partitions_sha256": hashlib.sha256("".join(r["validated_sha256"] for r in train_recs).encode()).hexdigest(),
                "loop.eval_partitions": ",".join(r["partition"] for r in eval_recs),
            }
            carried = {k: v for k, v in gated_run.data.metrics.items() if k.startswith("eval_")}
            log.info("refitting v%s's configuration on all %d partitions of its window", gated_version, len(train_recs))
            run_id = log_training_run(
                usecase, params, settings, storage, exp_id, tags, train_recs, eval_recs,
                held_out=HELD_OUT, carried=carried, gated={"version": gated_version, "run_id": gated.run_id},
            )  # fmt: skip
            run = client.get_run(run_id)
        registered = register_run(client, model_name, run, alias=None, tags_extra={REFIT_OF: gated_version})
        write_model_card(client, settings, usecase, model_name, registered["version"])
    return registered | {"gated_version": gated_version, "previous_champion": decision.get("previous_champion"), "reused": reused}


def serve_accepted(settings: Settings, refit: dict, usecase: UseCase) -> dict:
    """Apply the guard to `refit` (`refit_accepted`'s result) and move `champion` to the refit, or to
    the challenger it would have replaced when the guard fails (an alert says so). Both versions
    record the outcome. Returns {"model_name", "version" (serving), "run_id", "promoted", "reason",
    "previous_champion", "refit_version", "gated_version"}."""
    model_name, version, gated_version = refit["model_name"], str(refit["version"]), str(refit["gated_version"])
    client = connect(settings.mlflow_tracking_uri)
    with naming_the_server(settings.mlflow_tracking_uri):
        metric = GateConfig.from_settings().metric
        gated = client.get_model_version(model_name, gated_version)
        gated_value = client.get_run(gated.run_id).data.metrics.get(f"eval_{metric}", float("nan"))
        refit_run = client.get_run(refit["run_id"])
        refit_value = refit_run.data.metrics.get(f"{HELD_OUT}_{metric}", float("nan"))
        passed = guard(refit_value, gated_value)
        label = LABELS[metric]
        comparison = (
            f"its {label} of the held-out week {refit_value:.4f} {'≥' if passed else '<'} v{gated_version}'s {gated_value:.4f}"
        )
        if passed:
            reason = f"refit of v{gated_version} on its whole window, which the gate accepted; {comparison}"
        else:
            reason = f"refit of v{gated_version} failed its guard: {comparison}; v{gated_version} serves as the gate accepted it"
        previous, outcome = refit.get("previous_champion") or "", "passed" if passed else "failed"
        tag_version(
            client,
            model_name,
            version,
            {
                "gate.reason": reason,
                "gate.metric": metric,
                "gate.champion_version": previous,
                "refit.guard": outcome,
            },
        )
        tag_version(client, model_name, version, {"gate.decision": "promote" if passed else "reject"})
        tag_version(client, model_name, gated_version, {"refit.version": version, "refit.guard": outcome})
        for v in (version, gated_version):  # both cards carry the outcome
            write_model_card(client, settings, usecase, model_name, v)
        serving = version if passed else gated_version
        current = alias_version(client, model_name, CHAMPION)
        if current is None or current.version != serving or current.tags.get("gate.applied") != "true":
            promote_version(client, model_name, serving)
        if not passed:
            send_alert(
                settings,
                "refit_guard",
                f"{model_name} v{version} (refit of v{gated_version}) not served: {reason}",
                {"model_name": model_name, "version": version, "gated_version": gated_version},
                links={"mlflow": mlflow_run_link(settings, refit["run_id"], refit_run.info.experiment_id)},
            )
        log.info("%s v%s serves: %s", model_name, serving, reason)
    return {
        "model_name": model_name,
        "version": serving,
        "run_id": refit["run_id"] if passed else gated.run_id,
        "promoted": True,
        "reason": reason,
        "previous_champion": previous or None,
        "refit_version": version,
        "gated_version": gated_version,
    }
