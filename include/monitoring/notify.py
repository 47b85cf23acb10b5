"""The monitor's alerts, grouped the way Alertmanager groups them, and how far its label-free estimate
has been off.

One alert per (model version, window, cause). Every check of a window records the signals it found
(`alert.causes`) under the window's group (`alert.group`) on its MLflow run, so the group's state is
the newest check's, shared by every scheduler and worker through the tracking server. A later check
of the same window sends an update only when the set of causes changes, and stays quiet otherwise; a
window whose signals all clear is resolved, once (`transition`). A retrain for the model's age alone
is maintenance, not news, and never fires.

CBPE's estimate of the ROC AUC comes with its record on this model: the mean of (estimate − realised)
over the version's earlier labelled windows (`estimate_bias`), in the check's record, its alert and
the demo's summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from include.alerting.alerts import mlflow_artifact_link, mlflow_run_link, send_alert
from include.monitoring.policy import signals

GROUP, CAUSES, STATUS = "alert.group", "alert.causes", "alert.status"


def alert_group(model_name: str, version: str, start: datetime, end: datetime) -> str:
    return f"{model_name} v{version} {start.date()}…{end.date()}"


def transition(previous: frozenset[str] | None, now: frozenset[str]) -> str:
    """What a check of a window sends, given the causes its group was firing with (None or empty:
    not firing): `firing` (new), `updated` (the causes changed), `resolved` (all cleared), or
    `quiet` (nothing new, or nothing at all)."""
    if now:
        return "firing" if not previous else ("updated" if now != previous else "quiet")
    return "resolved" if previous else "quiet"


def previous_causes(client, exp: str, group: str) -> frozenset[str] | None:
    """The causes the newest earlier check of `group` recorded (None: no earlier check)."""
    runs = client.search_runs(
        [exp], filter_string=f"tags.`{GROUP}` = '{_quoted(group)}'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        return None
    return frozenset(c for c in runs[0].data.tags.get(CAUSES, "").split(";") if c)


@dataclass(frozen=True)
class Bias:
    """Mean (CBPE estimate − realised ROC AUC) over `windows` earlier labelled windows of a version."""

    mean: float | None
    windows: int

    def says(self, version: str) -> str:
        if self.mean is None:
            return f"no earlier labelled window of v{version} to check it against"
        direction = "high" if self.mean > 0 else "low"
        return f"it ran {abs(self.mean):.3f} {direction} on average over v{version}'s {self.windows} earlier labelled window(s)"


def estimate_bias(client, exp: str, version: str, before: datetime) -> Bias:
    """How far CBPE's estimate has been from the realised ROC AUC on `version`'s labelled windows
    that ended before `before` (one check per window: the newest)."""
    runs = client.search_runs(
        [exp],
        filter_string=f"tags.`monitor.model_version` = '{version}' and tags.`monitor.kind` = 'labelled' and metrics.`live.roc_auc` > 0",
        max_results=1000,
    )
    newest: dict[str, object] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        if "estimated.roc_auc" in r.data.metrics and datetime.fromisoformat(r.data.tags["monitor.window_end"]) <= before:
            newest[r.data.tags["monitor.window_start"]] = r
    gaps = [r.data.metrics["estimated.roc_auc"] - r.data.metrics["live.roc_auc"] for r in newest.values()]
    return Bias(sum(gaps) / len(gaps) if gaps else None, len(gaps))


def alert_tags(group: str, cause: str, status: str) -> dict[str, str]:
    return {GROUP: group, CAUSES: ";".join(sorted(signals(cause))), STATUS: status}


def notify(
    settings, model_name: str, version: str, window, decision, report: dict, bias: Bias, status: str, run_id: str, exp: str
) -> dict | None:
    """Send what `transition` decided for this check (nothing when `quiet`), linking the check's
    MLflow run and its plot; the alert carries the group and its status, as Alertmanager's do."""
    if status == "quiet":
        return None
    where = f"{model_name} v{version}, {window.start.date()}…{window.end.date()}"
    estimate = report.get("estimated", {}).get("roc_auc")
    cbpe = f" (CBPE estimate {estimate:.3f}: {bias.says(version)})" if estimate is not None else ""
    if status == "resolved":
        kind, message = "resolved", f"{where}: resolved, no drift or decay beyond the thresholds any more{cbpe}"
    else:
        kind = "decay" if "decay" in decision.cause else "drift"
        update = "updated: " if status == "updated" else ""
        message = f"{where}: {update}{decision.reason} → {decision.action}{cbpe}"
    return send_alert(
        settings,
        kind,
        message,
        {
            "model_version": version,
            "action": decision.action,
            "cause": decision.cause,
            "group": alert_group(model_name, version, window.start, window.end),
            "status": status,
            "cbpe_bias": bias.mean,
            "cbpe_bias_windows": bias.windows,
        },
        links={
            "mlflow": mlflow_run_link(settings, run_id, exp),
            "report": mlflow_artifact_link(settings, run_id, "monitor/drift.png"),
        },
    )


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")
