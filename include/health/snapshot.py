"""What the model-health view shows of a use case, read from where the loop records it: the
registry (versions, gate decisions and their intervals, deployments), the monitoring runs (each
window's estimated and realised ROC AUC, drift share and decision), the serving records (the live
slot and the traffic weights), the quarantine zone and the alerts.

`snapshot` makes a fixed number of requests to MLflow whatever the history's length (a search of the
versions, one of the monitoring runs, the live record, the model's aliases, two experiment lookups): a year of weekly
windows (159 checks) and 40 versions answer in about 0.3 s against a local tracking server (`tests/bench/bench_health.py`).
"""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import quote

from include.alerting.alerts import mlflow_artifact_link, mlflow_run_link, read_alerts
from include.data.partitions import quarantined_batches
from include.model.card import CARD_ARTIFACT
from include.model.registry import CHAMPION, connect
from include.monitoring.monitor import monitoring_experiment
from include.rollout.proxy import Proxy
from include.rollout.records import read_live
from include.settings import Settings
from include.usecases import UseCase, registered_model_name

RECENT_ALERTS = 20
SELF_HEALS = ("serving_restarted", "proxy_restarted", "canary_abandoned", "routing_restored")
"""The serving guard's repairs (`include/rollout/guard.py`): on the deployment timeline."""
DEPLOY_TAGS = (
    "deploy.deployed_at",
    "deploy.slot",
    "deploy.rolled_back",
    "deploy.rejected",
    "rollback.reason",
    "gate.promoted_at",
)


def snapshot(settings: Settings, usecase: UseCase, storage=None) -> dict:
    """The model health of `usecase`: JSON-ready, read-only."""
    client = connect(settings.mlflow_tracking_uri, attempts=2)
    name = registered_model_name(settings, usecase)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    # the aliases from the registered model (a search of versions does not return them)
    aliases = client.get_registered_model(name).aliases if versions else {}
    champion = aliases.get(CHAMPION)
    live = read_live(settings, name) if versions else None
    trained = client.get_experiment_by_name(name)  # every version's run is in the model's experiment
    alerts = read_alerts(settings)
    return {
        "usecase": usecase.name,
        "model_name": name,
        "serving": _serving(settings, live, champion),
        "versions": [_version(settings, trained.experiment_id if trained else None, v, aliases) for v in reversed(versions)],
        "timeline": _timeline(versions, alerts),
        "windows": _windows(settings, client, name),
        "quarantined": [
            {k: q.get(k) for k in ("partition", "interval_start", "interval_end", "landing_uri", "failures", "data_docs_uri")}
            for q in quarantined_batches(usecase.name, storage)
        ],
        "alerts": alerts[-RECENT_ALERTS:][::-1],
    }


def _serving(settings: Settings, live: dict | None, champion: str | None) -> dict:
    return {
        "version": live["model_version"] if live else None,
        "slot": live["slot"] if live else None,
        "deployed_at": live.get("deployed_at") if live else None,
        "champion": champion,
        "weights": Proxy(settings).weights(),
    }


def _version(settings: Settings, experiment_id: str | None, v, aliases: dict[str, str]) -> dict:
    tags = v.tags
    interval = tags.get("gate.interval", "").split()
    return {
        "version": v.version,
        "aliases": sorted(a for a, version in aliases.items() if version == v.version),
        "data_window": tags.get("loop.data_window"),
        "reason": tags.get("loop.reason"),
        "refit_of": tags.get("loop.refit_of"),
        "refit_version": tags.get("refit.version"),
        "decision": tags.get("gate.decision", "pending"),
        "gate_reason": tags.get("gate.reason"),
        "interval": [float(x) for x in interval] if len(interval) == 2 else None,
        "champion_version": tags.get("gate.champion_version") or None,
        "deployment": {k.split(".", 1)[1]: tags[k] for k in DEPLOY_TAGS if k in tags},
        "mlflow": mlflow_run_link(settings, v.run_id, experiment_id) if experiment_id else None,
        "airflow_run": airflow_run_path(tags),
        "card": mlflow_artifact_link(settings, v.run_id, CARD_ARTIFACT),
    }


def airflow_run_path(tags: dict) -> str | None:
    """The Airflow UI's page of the DAG run that made a version or a check, relative to the UI's base."""
    dag_id, run_id = tags.get("airflow.dag_id"), tags.get("airflow.dag_run_id")
    return f"dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}" if dag_id and run_id else None


def _timeline(versions, alerts: list[dict]) -> list[dict]:
    """Promotions, deployments, rollbacks, rejections before traffic and the serving guard's
    repairs (its alerts), newest first."""
    events = [
        {"at": a["time"], "event": f"self-heal: {a['message']}", "version": str(a["details"].get("model_version", ""))}
        for a in alerts
        if a["kind"] in SELF_HEALS
    ]
    for v in versions:
        t = v.tags
        if "gate.promoted_at" in t:
            events.append({"at": t["gate.promoted_at"], "event": "promoted", "version": v.version})
        if "deploy.deployed_at" in t:
            events.append(
                {"at": t["deploy.deployed_at"], "event": f"100% traffic (slot {t.get('deploy.slot', '?')})", "version": v.version}
            )
        if "deploy.rolled_back" in t:
            events.append(
                {
                    "at": t.get("deploy.rolled_back_at", ""),
                    "event": f"rolled back: {t['deploy.rolled_back']}",
                    "version": v.version,
                }
            )
        if "deploy.rejected" in t:
            events.append(
                {
                    "at": t.get("deploy.rejected_at", ""),
                    "event": f"rejected before traffic: {t['deploy.rejected']}",
                    "version": v.version,
                }
            )
    return sorted(events, key=lambda e: e["at"], reverse=True)


def _windows(settings: Settings, client, model_name: str) -> list[dict]:
    """One row per monitored window and kind (the newest check of it), oldest first: estimated and
    realised ROC AUC, the drift share, each feature's PSI, the decision."""
    exp = client.get_experiment_by_name(monitoring_experiment(model_name))
    if exp is None:
        return []
    newest: dict[tuple, object] = {}
    for r in sorted(client.search_runs([exp.experiment_id], max_results=5000), key=lambda r: r.info.start_time):
        t = r.data.tags
        if "decision.action" in t and "monitor.window_start" in t:
            newest[(t["monitor.window_start"], t["monitor.window_end"], t.get("monitor.kind", "labelled"))] = r
    rows = []
    for (start, end, kind), r in sorted(newest.items()):
        m, t = r.data.metrics, r.data.tags
        rows.append(
            {
                "start": start,
                "end": end,
                "kind": kind,
                "version": t.get("monitor.model_version"),
                "estimated_roc_auc": m.get("estimated.roc_auc"),
                "realised_roc_auc": m.get("live.roc_auc"),
                "cbpe_bias": m.get("estimated.bias.roc_auc"),
                "drift_share": m.get("drift.share"),
                "psi": {k.removeprefix("psi."): v for k, v in m.items() if k.startswith("psi.")},
                "action": t["decision.action"],
                "cause": t.get("decision.cause", ""),
                "reason": t.get("decision.reason", ""),
                "mlflow": mlflow_run_link(settings, r.info.run_id, exp.experiment_id),
                "airflow_run": airflow_run_path(t),
            }
        )
    return rows


def as_json(doc: dict) -> str:
    return json.dumps(doc, default=lambda o: o.isoformat() if isinstance(o, datetime) else str(o))


def data_docs_page(usecase: UseCase, partition: str, storage=None) -> bytes | None:
    """GX's Data Docs page of `partition`'s newest validation (quarantined or validated), read from
    the storage the gate wrote it to (local or S3); None when it has none."""
    from include.data.partitions import list_validated
    from include.data.storage import get_storage

    storage = storage or get_storage()
    records = [
        r
        for r in quarantined_batches(usecase.name, storage) + list_validated(usecase.name, storage)
        if r["partition"] == partition
    ]
    keys = [r["data_docs_key"] for r in records if r.get("data_docs_key")]
    return storage.read_bytes(keys[-1]) if keys else None
