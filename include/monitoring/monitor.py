"""The monitor run: check a window of the live model, decide with the retrain policy, record it;
and the admission of each `train` run by the same policy's guards.

One MLflow run per window and model version (experiment `<model>-monitoring`): metrics stamped at
the window end so they chart over time, the report, the decision and the drift plot. Drift and
decay alert with links to the run and the plot, once per window and cause (`notify.py`). A retrain request names the `train` run it starts
after the decision (`retrain_run_id`), so a rerun of the monitor finds that run and starts nothing.
One MLflow run per `train` run records its admission (experiment `<model>-admission`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from include.data.inference_layout import log_lateness
from include.data.inference_log import compact_closed_days, compact_window, newest_event
from include.data.partitions import list_validated
from include.model.registry import CHAMPION, alias_version, connect, experiment_id, finished_run
from include.monitoring.notify import Bias, alert_group, alert_tags, estimate_bias, notify, previous_causes, transition
from include.monitoring.plots import drift_figure
from include.monitoring.policy import Decision, History, PolicyConfig, admit, decide, signals
from include.monitoring.profile import PROFILE_ARTIFACT
from include.monitoring.windows import served_window, window_report
from include.rollout.records import read_live
from include.usecases import registered_model_name

log = logging.getLogger(__name__)


def monitoring_experiment(model_name: str) -> str:
    return f"{model_name}-monitoring"


def admission_experiment(model_name: str) -> str:
    return f"{model_name}-admission"


def retrain_run_id(window_start: str, window_end: str, version: str | None) -> str:
    """The `train` run a retrain request starts: one per decision (window and model version, or the
    bootstrap of a window without a model), so reruns of the same decision find that run."""
    return f"monitor__{f'v{version}' if version else 'bootstrap'}__{window_start}__{window_end}"


@dataclass(frozen=True)
class MonitorWindow:
    """The window [start, end) of data time a monitor run checks, of which kind, for which DAG run.

    `kind`: `labelled` (labels joined where they have landed; one decision per window and model
    version) or `served` (the periodic check of served traffic: no labels; one decision per DAG
    run, since the newest day of its window is still filling)."""

    start: datetime
    end: datetime
    dag_id: str
    dag_run_id: str
    kind: str = "labelled"

    def identity(self, version: str) -> dict[str, str]:
        """The tags that find this check's decision for model `version`, so a rerun reuses it."""
        tags = {
            "monitor.window_start": self.start.isoformat(),
            "monitor.window_end": self.end.isoformat(),
            "monitor.model_version": version,
            "monitor.kind": self.kind,
        }
        return tags | ({"airflow.dag_run_id": self.dag_run_id} if self.kind == "served" else {})


@dataclass(frozen=True)
class Reference:
    """The live version and what its training run recorded to judge it by: the reference profile
    and the evaluation metrics."""

    version: str
    profile: dict
    metrics: dict


@dataclass(frozen=True)
class Findings:
    """What a check found: the reference it held the window to, the window's report, the decision."""

    reference: Reference
    report: dict
    decision: Decision


def check_served_traffic(settings, usecase, *, dag_id: str, dag_run_id: str, training_active: bool = False, storage=None) -> dict:
    """The periodic check: `run_monitor` on the served window (`windows.served_window`: the
    LOOP_MONITOR_WINDOW_DAYS days up to the newest logged event), without labels. Nothing logged
    yet: nothing to check, and the result says so."""
    newest = newest_event(usecase, storage)
    if newest is None:
        return {
            "action": "none",
            "cause": "",
            "reason": f"no served {usecase.wording.records} logged yet",
            "retrain_conf": {},
            "retrain_run_id": "",
            "report_uri": None,
        }
    start, end = served_window(usecase.calendar.timezone, newest, settings.monitor_window_days)
    log.info("served traffic: newest logged event %s, checking %s … %s without labels", newest.isoformat(), start, end)
    window = MonitorWindow(start, end, dag_id, dag_run_id, kind="served")
    return run_monitor(settings, usecase, window, training_active=training_active, storage=storage)


def run_monitor(settings, usecase, window: MonitorWindow, *, training_active: bool = False, storage=None) -> dict:
    """Check `window` of the live model: drift and decay report, the policy's decision, all logged
    to MLflow (experiment `<model>-monitoring`, one run per window and version; metrics stamped with
    the window end, so they chart over time); drift and decay alert. Idempotent: a rerun for the
    same window and version returns the recorded decision.

    Times are data time (the window's end is "now"): in production that is the wall clock; in the
    2013 replay it keeps the cooldown meaningful."""
    client = connect(settings.mlflow_tracking_uri)
    model_name = registered_model_name(settings, usecase)
    live = _live_model(settings, client, model_name)
    if live is None:
        return _without_model(settings, usecase, model_name, window, training_active, storage)
    exp = experiment_id(client, monitoring_experiment(model_name))
    recorded = finished_run(client, exp, window.identity(str(live.version)), has_tag="decision.action")
    if recorded is not None:
        return _result(recorded.info.run_id, recorded.data.tags, reused=True)
    history = _history(client, exp, model_name, window.end, training_active, live)
    found = check_window(settings, usecase, window, _reference(client, live), history, storage)
    # Alertmanager's grouping: this window's alert fires once, updates when its causes change, resolves once
    group = alert_group(model_name, str(live.version), window.start, window.end)
    status = transition(previous_causes(client, exp, group), frozenset(signals(found.decision.cause)))
    bias = estimate_bias(client, exp, str(live.version), before=window.start)
    run_id, tags = _record(client, exp, usecase, window, found, alert_tags(group, found.decision.cause, status), bias)
    notify(settings, model_name, str(live.version), window, found.decision, found.report, bias, status, run_id, exp)
    return _result(run_id, tags, reused=False)


def check_window(settings, usecase, window: MonitorWindow, reference: Reference, history: History, storage=None) -> Findings:
    """Compact the window's inference log, report its drift and decay against `reference`, and
    decide with the retrain policy. Records nothing: `_record` does."""
    # The window's inference log, one part per day from here on (idempotent, safe beside writers),
    # and every closed day's, with the parts earlier merges replaced deleted once they are old enough.
    compacted = [d for d in compact_window(usecase, window.start, window.end, storage) if d["changed"]]
    closed = compact_closed_days(usecase, log_lateness(settings, usecase), storage)
    log.info(
        "inference log: %d day(s) of the window compacted (%d parts merged); %d closed day(s) merged or pruned",
        len(compacted),
        sum(d["parts"] for d in compacted),
        len(closed),
    )
    labels = window.kind == "labelled"
    report = window_report(usecase, reference.profile, window.start, window.end, storage, labels=labels)
    decision = decide(report, reference.metrics, history, PolicyConfig.from_settings(settings, usecase.drift_exempt))
    return Findings(reference, report, decision)


def _reference(client, live) -> Reference:
    """What the live version's training run recorded to judge it by (its profile, its evaluation)."""
    import mlflow

    profile = mlflow.artifacts.load_dict(f"runs:/{live.run_id}/{PROFILE_ARTIFACT}")
    model_metrics = client.get_run(live.run_id).data.metrics
    return Reference(str(live.version), profile, {m: model_metrics.get(f"eval_{m}") for m in ("roc_auc", "pr_auc")})


def _history(client, exp, model_name, now, training_active, live) -> History:
    """What the policy's guards read: the newest training, the serving version's data end, and
    earlier requests before `now`."""
    return History(
        now=now,
        last_training_at=_last_training_end(client, model_name),
        model_data_end=_data_end(live),
        training_active=training_active,
        requests=_earlier_requests(client, exp, before=now),
    )


def _record(client, exp, usecase, window: MonitorWindow, found: Findings, alerting: dict, bias: Bias) -> tuple[str, dict]:
    """Log the check as one MLflow run: metrics stamped at the window end, the report, the decision,
    the alert group's state (`alerting`), CBPE's record on this version (`bias`) and the drift plot.
    Its id and tags."""
    import mlflow
    from mlflow.entities import Metric

    tags = _tags(window, found) | alerting
    stamp = int(window.end.timestamp() * 1000)
    run_name = f"v{found.reference.version} {window.start.date()}…{window.end.date()} {window.kind}"
    with mlflow.start_run(experiment_id=exp, run_name=run_name, tags=tags) as run:
        numbers = _metrics(found) | {"estimated.bias_windows": bias.windows}
        if bias.mean is not None:
            numbers["estimated.bias.roc_auc"] = bias.mean
        metrics = [Metric(k, float(v), stamp, 0) for k, v in numbers.items() if v == v]
        client.log_batch(run.info.run_id, metrics=metrics)
        mlflow.log_dict(found.report, "monitor/report.json")
        mlflow.log_dict(found.decision.as_dict(), "monitor/decision.json")
        _log_drift_plot(client, exp, usecase, window, found)
    return run.info.run_id, tags


def _tags(window: MonitorWindow, found: Findings) -> dict[str, str]:
    """The check's identity, the DAG run that made it and its decision (what a rerun reuses)."""
    decision = found.decision
    return window.identity(found.reference.version) | {
        "airflow.dag_id": window.dag_id,
        "airflow.dag_run_id": window.dag_run_id,
        "decision.action": decision.action,
        "decision.cause": decision.cause,
        "decision.reason": decision.reason[:4000],
    }


def _metrics(found: Findings) -> dict[str, float]:
    """The report's numbers as MLflow metrics (NaN ones are left out when logged)."""
    report, evidence = found.report, found.decision.evidence
    metrics = {f"psi.{k}": v["psi"] for k, v in report["features"].items()}
    metrics |= {f"prediction.{k}": v for k, v in report.get("prediction", {}).items()}
    metrics |= {f"live.{k}": v for k, v in report.get("performance", {}).items()}
    metrics |= {f"estimated.{k}": v for k, v in report.get("estimated", {}).items()}
    if "drifted_share" in evidence:
        metrics["drift.share"] = evidence["drifted_share"]
    metrics |= {"rows": report["n"], "labelled": report["labels"]["labelled"]}
    if report["labels"]["base_rate"] is not None:
        metrics["base_rate"] = report["labels"]["base_rate"]
    return metrics


def _log_drift_plot(client, exp, usecase, window: MonitorWindow, found: Findings) -> None:
    """The drift plot of the active run, with the live ROC AUC of the earlier labelled windows and this one's."""
    import mlflow

    auc_history = _auc_history(client, exp, before=window.end)
    performance = found.report.get("performance", {})
    if "roc_auc" in performance:
        auc_history.append((window.end, performance["roc_auc"], found.reference.version))
    reference = found.reference
    fig = drift_figure(
        reference.profile, found.report, usecase, auc_history=auc_history, reference_auc=reference.metrics["roc_auc"]
    )
    mlflow.log_figure(fig, "monitor/drift.png")
    import matplotlib.pyplot as plt

    plt.close(fig)


def admit_training(
    settings,
    usecase,
    *,
    dag_id: str,
    dag_run_id: str,
    run_type: str,
    requested_by: str = "",
    force: bool = False,
    training_active: bool = False,
    storage=None,
) -> dict:
    """Whether the `train` run `dag_run_id` may train (`policy.admit`), recorded with its reason: one
    MLflow run per DAG run (experiment `<model>-admission`). Idempotent: a rerun of the same DAG run
    returns the recorded decision, so a cleared run that trained is not refused by its own training.

    Data time, as in the monitor: "now" is the end of the newest validated partition, the last
    training the end of the newest model version's data window. `training_active`: another run of
    the train DAG is running (the caller asks Airflow)."""
    import mlflow

    client = connect(settings.mlflow_tracking_uri)
    model_name = registered_model_name(settings, usecase)
    exp = experiment_id(client, admission_experiment(model_name))
    identity = {"airflow.dag_id": dag_id, "airflow.dag_run_id": dag_run_id}
    recorded = finished_run(client, exp, identity, has_tag="decision.action")
    if recorded is not None:
        return _admission(recorded.info.run_id, recorded.data.tags, reused=True)

    last = _last_training_end(client, model_name)
    # With no validated data, no new data since the last training (and with neither, no guard applies).
    now = max((datetime.fromisoformat(r["interval_end"]) for r in list_validated(usecase.name, storage)), default=last)
    history = History(now=now, last_training_at=last, training_active=training_active)
    decision = admit(run_type, history, PolicyConfig.from_settings(settings), force=force, requested_by=requested_by)
    tags = {
        **identity,
        "decision.action": decision.action,
        "decision.cause": decision.cause,
        "decision.reason": decision.reason[:4000],
        "admission.forced": str(force).lower(),
    }
    with mlflow.start_run(experiment_id=exp, run_name=f"{dag_id}/{dag_run_id}", tags=tags) as run:
        seen = {"data_time": now, "last_training_at": last, "training_active": training_active, "force": force}
        mlflow.log_dict({**decision.as_dict(), "history": {k: str(v) for k, v in seen.items()}}, "admission/decision.json")
    return _admission(run.info.run_id, tags, reused=False)


def _admission(run_id: str, tags: dict, reused: bool) -> dict:
    return {"action": tags["decision.action"], "reason": tags["decision.reason"], "mlflow_run_id": run_id, "reused": reused}


def _result(run_id: str, tags: dict, reused: bool) -> dict:
    window = f"{tags['monitor.window_start'][:10]}…{tags['monitor.window_end'][:10]}"
    report_uri = f"runs:/{run_id}/monitor/report.json"
    return {
        "retrain_conf": {"reason": f"monitor {window}: {tags['decision.reason']}"[:500], "report_uri": report_uri},
        "retrain_run_id": retrain_run_id(tags["monitor.window_start"], tags["monitor.window_end"], tags["monitor.model_version"]),
        "action": tags["decision.action"],
        "cause": tags["decision.cause"],
        "reason": tags["decision.reason"],
        "model_version": tags["monitor.model_version"],
        "mlflow_run_id": run_id,
        "report_uri": report_uri,
        "reused": reused,
    }


def _without_model(settings, usecase, model_name, window: MonitorWindow, training_active, storage) -> dict:
    """No version serves or is champion. With `LOOP_RETRAIN_ON=drift`, new data never trains by
    itself, so the monitor asks for the first model once enough partitions are validated."""
    run_id = retrain_run_id(window.start.isoformat(), window.end.isoformat(), None)
    none = {"action": "none", "cause": "", "retrain_conf": {}, "retrain_run_id": run_id, "report_uri": None}
    if settings.retrain_on != "drift":
        return none | {"reason": f"no deployed or champion version of {model_name} to monitor"}
    have, need = len(list_validated(usecase.name, storage)), settings.min_train_partitions
    if have < need:
        return none | {"reason": f"no model yet, and {have} validated partitions of the {need} a first training needs"}
    why = f"no model of {model_name} yet and {have} validated partitions: first training"
    if training_active:
        return none | {"action": "suppressed", "cause": "bootstrap", "reason": f"{why}; a training run is already active"}
    return none | {"action": "retrain", "cause": "bootstrap", "reason": why, "retrain_conf": {"reason": f"monitor: {why}"}}


def _live_model(settings, client, model_name):
    """The version serving all traffic, as the rollout recorded it in the registry; before the
    first rollout, the champion; else None."""
    live = read_live(settings, model_name)
    if live:
        return client.get_model_version(model_name, live["model_version"])
    return alias_version(client, model_name, CHAMPION)


def _data_end(version) -> datetime | None:
    """The end of a model version's data window (its `loop.data_window` tag)."""
    end = version.tags.get("loop.data_window", "").partition(" … ")[2]
    return datetime.fromisoformat(end) if end else None


def _last_training_end(client, model_name):
    """Data time of the newest training: the end of the newest version's data window."""
    ends = [e for v in client.search_model_versions(f"name = '{model_name}'") if (e := _data_end(v))]
    return max(ends) if ends else None


def _auc_history(client, exp, before) -> list:
    """(window end, live ROC AUC, model version) of the earlier monitored windows that had labels."""
    runs = client.search_runs([exp], filter_string="metrics.`live.roc_auc` > 0", max_results=1000)
    points = [
        (
            datetime.fromisoformat(r.data.tags["monitor.window_end"]),
            r.data.metrics["live.roc_auc"],
            r.data.tags["monitor.model_version"],
        )
        for r in runs
        if "monitor.window_end" in r.data.tags
    ]
    return [p for p in points if p[0] < before]


def _earlier_requests(client, exp, before) -> tuple:
    runs = client.search_runs([exp], filter_string="tags.`decision.action` = 'retrain'")
    found = [(datetime.fromisoformat(r.data.tags["monitor.window_end"]), r.data.tags["decision.cause"]) for r in runs]
    return tuple(sorted(x for x in found if x[0] < before))
