"""The short report `make demo` ends with: data zones, model versions, champion, where to look."""

from __future__ import annotations

from collections import Counter

from include.data.partitions import list_validated, quarantined_batches
from include.local.airflow_api import PASSWORDS_FILE
from include.settings import Settings
from include.usecases import get_usecase, registered_model_name


def summarize(settings: Settings, ports, airflow=None, traffic=None) -> str:
    """The summary; with `airflow` (an AirflowAPI), it also counts the DAG runs; with `traffic`
    (a replay report), what the demo's clients saw."""
    from include.model.registry import CHAMPION, alias_version, connect

    usecase = get_usecase()
    validated = list_validated(usecase.name)
    rejected = quarantined_batches(usecase.name)
    rows_q = sum(r.get("rows_quarantined", 0) for r in validated)
    lines = [
        "",
        "=" * 78,
        f"Continuous-training loop: {usecase.name} ({usecase.description})",
        "=" * 78,
        f"Partitions validated: {len(validated)}  ({sum(r['rows_validated'] for r in validated):,} rows; "
        f"{rows_q} single rows quarantined)",
        f"Batches quarantined:  {len(rejected)}",
    ]
    passed = {r["partition"] for r in validated}
    for r in rejected:
        fixed = " (since re-delivered and validated)" if r["partition"] in passed else ""
        lines.append(f"  - {r['partition']}{fixed}: {r['failures'][0][:150]}")

    if airflow is not None:
        runs = airflow.runs("train")
        kinds = {
            "asset_triggered": "on validated-data events",
            "operator_triggered": "requested by the monitor",
            "scheduled": "scheduled",
            "manual": "manual (UI, REST, webhook)",
        }
        counts = Counter(r["run_type"] for r in runs)
        lines.append(
            f"Training runs:        {len(runs)} (" + ", ".join(f"{n} {kinds.get(t, t)}" for t, n in counts.most_common()) + ")"
        )
    client = connect(settings.mlflow_tracking_uri, attempts=2)
    name = registered_model_name(settings, usecase)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    champion = alias_version(client, name, CHAMPION)
    lines.append(f"Model versions of '{name}': {len(versions)}")
    for v in versions:
        start, _, end = v.tags.get("loop.data_window", "? … ?").partition(" … ")
        decision = v.tags.get("gate.decision", "pending")
        if decision in ("promote", "reject"):
            against = f" vs champion v{v.tags['gate.champion_version']}" if v.tags.get("gate.champion_version") else ""
            against = "" if "loop.refit_of" in v.tags else against  # a refit is judged by its guard, not against the champion
            decision = f"{decision}{against}"
            if v.tags.get("gate.reason"):
                decision += f": {v.tags['gate.reason']}"  # the estimates with their intervals, and the slices
            if "refit.version" in v.tags:
                decision += f" → refit v{v.tags['refit.version']} (guard {v.tags.get('refit.guard', 'pending')})"
        flag = "  <- champion" if champion and v.version == champion.version else ""
        lines.append(f"  v{v.version}: data {start[:10]} … {end[:10]}, gate: {decision}{_deployment(v.tags)}{flag}")
    if champion:
        m = client.get_run(champion.run_id).data.metrics
        lines.append(
            f"Champion v{champion.version} on its evaluation partitions: "
            + ", ".join(
                f"{k} {m[f'eval_{k}']:.4f}" for k in ("roc_auc", "pr_auc", "log_loss", "precision", "recall") if f"eval_{k}" in m
            )
        )
    else:
        lines.append("No champion yet.")
    lines += _serving(settings, airflow, traffic)
    lines += monitoring_story(settings, client, name, versions)
    password_file = settings.state_dir / "airflow" / PASSWORDS_FILE
    lines += [
        "",
        f"Airflow UI: http://127.0.0.1:{ports.airflow}   user 'admin', password in {password_file}",
        f"MLflow UI:  http://127.0.0.1:{ports.mlflow}   (no login on the embedded runtime)",
        f"Alert webhook: POST http://127.0.0.1:{ports.airflow}/loop/alerts (Alertmanager payload; a firing alert with "
        f"label dag_id=train retrains), header 'Authorization: Bearer $(cat {settings.state_dir / 'airflow' / 'webhook-token'})'",
        f"Data zones: {settings.storage_uri}   logs: {settings.state_dir / 'logs'}",
        "The services keep running; `make stop` stops them, `make demo` resumes.",
        "=" * 78,
    ]
    return "\n".join(lines)


def monitoring_story(settings: Settings, client, name: str, versions: list) -> list[str]:
    """What the monitor saw, window by window, what it decided, and what its retrain requests led
    to; with the time from the first drifted window, and from the request that produced it, to the
    first drift-trained champion taking all traffic."""
    from datetime import UTC, datetime

    from include.alerting.alerts import read_alerts
    from include.monitoring.monitor import monitoring_experiment

    exp = client.get_experiment_by_name(monitoring_experiment(name))
    runs = client.search_runs([exp.experiment_id], max_results=500) if exp else []
    runs = sorted(
        (r for r in runs if "decision.action" in r.data.tags),
        key=lambda r: (r.data.tags["monitor.window_end"], r.data.tags.get("monitor.kind") == "labelled", r.info.start_time),
    )
    if not runs:
        return ["Monitoring: no window checked yet."]
    actions = Counter(r.data.tags["decision.action"] for r in runs)
    kinds = Counter(r.data.tags.get("monitor.kind", "labelled") for r in runs)
    lines = [
        f"Monitoring ('{monitoring_experiment(name)}' in MLflow): {len(runs)} checks "
        f"({kinds['served']} of served traffic before labels, {kinds['labelled']} with labels): "
        + ", ".join(f"{n} {a}" for a, n in sorted(actions.items())),
        "  per window: the ROC AUC estimated from the scores (CBPE; its mean error on the version's earlier labelled",
        "  windows beside it) and, once labels land, realised; the share of the",
        "  model's attributions on features drifted beyond their noise threshold; the decision and why",
    ]
    # Of the periodic checks of one window, the last one that decided nothing stands for the rest.
    quiet = {}
    for r in runs:
        t = r.data.tags
        if t.get("monitor.kind") == "served" and t["decision.action"] == "none":
            quiet[(t["monitor.window_start"], t["monitor.window_end"], t["monitor.model_version"])] = r.info.run_id
    runs = [
        r
        for r in runs
        if not (r.data.tags.get("monitor.kind") == "served" and r.data.tags["decision.action"] == "none")
        or quiet[(r.data.tags["monitor.window_start"], r.data.tags["monitor.window_end"], r.data.tags["monitor.model_version"])]
        == r.info.run_id
    ]
    by_report = {v.tags.get("loop.monitor_report"): v for v in versions if v.tags.get("loop.monitor_report")}
    first_served = first_drift = None
    for r in runs:
        t = r.data.tags
        action = t["decision.action"]
        m = r.data.metrics
        seen = [f"est. {m['estimated.roc_auc']:.3f}" if "estimated.roc_auc" in m else "est. –"]
        if "estimated.roc_auc" in m and "estimated.bias.roc_auc" in m:  # how far CBPE was off on this version before
            seen[0] += f" (CBPE bias {m['estimated.bias.roc_auc']:+.3f} over {m['estimated.bias_windows']:.0f} earlier)"
        if "live.roc_auc" in m:
            seen.append(f"realised {m['live.roc_auc']:.3f}")
        if "drift.share" in m:
            seen.append(f"drift {m['drift.share']:.0%}")
        line = (
            f"  {t['monitor.window_start'][:10]}…{t['monitor.window_end'][:10]} v{t['monitor.model_version']} "
            f"{t.get('monitor.kind', 'labelled'):<8} {', '.join(seen)}: {action}"
        )
        if action != "none" or t.get("decision.cause"):
            line += f" ({t['decision.reason'][:110]})"
        checked = datetime.fromtimestamp(r.info.start_time / 1000, UTC)
        if first_drift is None and t.get("decision.cause"):
            first_drift = checked
        v = by_report.get(f"runs:/{r.info.run_id}/monitor/report.json")
        if v is not None:
            line += f"\n      → retrained v{v.version}: gate {v.tags.get('gate.decision', 'pending')}{_deployment(v.tags)}"
            if first_served is None and "deploy.deployed_at" in v.tags:
                first_served = (checked, datetime.fromisoformat(v.tags["deploy.deployed_at"]))
        lines.append(line)
    if first_served is not None:
        asked, served = first_served
        lines.append(
            f"Drift → new champion serving 100%: {(served - first_drift).total_seconds():.0f} s from the first drifted window "
            f"(through cooldowns and gate rejections), {(served - asked).total_seconds():.0f} s from the request that produced it"
        )
    alerts = read_alerts(settings)
    if alerts:
        kinds = Counter(a["kind"] for a in alerts)
        lines.append(
            f"Alerts: {len(alerts)} in {settings.state_dir / 'alerts.jsonl'} ("
            + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
            + ")"
        )
        last = next((a for a in reversed(alerts) if a["kind"] in ("drift", "decay")), alerts[-1])
        lines.append(f"  latest {last['kind']}: {last['message'][:120]}")
        lines += [f"    {k}: {url}" for k, url in last.get("links", {}).items()]
    return lines


def _deployment(tags: dict) -> str:
    if "deploy.rolled_back" in tags:
        return f"; rolled back: {tags['deploy.rolled_back'][:80]}"
    if "deploy.rejected" in tags:
        return f"; rejected before traffic: {tags['deploy.rejected'][:80]}"
    if "deploy.deployed_at" in tags:
        took = ""
        if "gate.promoted_at" in tags:
            from datetime import datetime

            seconds = (
                datetime.fromisoformat(tags["deploy.deployed_at"]) - datetime.fromisoformat(tags["gate.promoted_at"])
            ).total_seconds()
            took = f", {seconds:.0f}s after the alias moved"
        return f"; 100% traffic at {tags['deploy.deployed_at'][11:19]} UTC in slot {tags['deploy.slot']}{took}"
    return ""


def _serving(settings: Settings, airflow, traffic) -> list[str]:
    import json

    from include.rollout.slots import Serving

    serving = Serving(settings)
    live = serving.live()
    if not live:
        return ["Serving: nothing deployed yet."]
    lines = [
        f"Serving: v{live['model_version']} ({live['bento_tag']}) takes 100% of traffic from slot {live['slot']} "
        f"behind Traefik on {serving.proxy.entry_url}"
    ]
    if airflow is not None:
        runs = airflow.runs("deploy")
        lines.append(
            f"Deploy runs:          {len(runs)} ({sum(r['state'] == 'success' for r in runs)} succeeded, "
            f"{sum(r['state'] == 'failed' for r in runs)} failed)"
        )
    if traffic is not None and traffic.outcomes:
        t = traffic.summary()
        lines.append(
            f"Demo clients:         {t['requests']:,} requests, {t['failed']} failed, p50 {t['p50_ms']} ms, "
            f"p99 {t['p99_ms']} ms; answered by versions {t['versions']}"
        )
    usecase = get_usecase()
    records = _sample_record(settings, usecase)
    if records:
        lines += [
            "Try it:",
            f"  curl -s {serving.proxy.entry_url}/predict -H 'Content-Type: application/json' \\",
            f"    -d '{json.dumps(records[0])}'",
        ]
    return lines


def _sample_record(settings: Settings, usecase) -> list[dict]:
    from include.rollout.infra import golden_records

    try:
        return golden_records(settings, usecase, 1)
    except Exception:  # noqa: BLE001 - the summary must not fail on a missing sample
        return []
