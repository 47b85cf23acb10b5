"""A monitoring window: which days a monitor run checks, and the report of the predictions served
for them (drift, data quality and, once labels have landed, live performance).

Windows are on the event clock: a prediction belongs to the window holding its record's event time
(the contract's `event_time`, e.g. a flight's scheduled hour), not to when it was served, and days
are the use case's (`calendar.timezone`). Two kinds:

* `labelled`: the intervals of validated partitions that just landed (their labels with them), or
  the form's dates: drift, the estimate, and live performance and calibration from the labels.
* `served`: the periodic check of what is being served, before labels exist — the
  LOOP_MONITOR_WINDOW_DAYS days up to the end of the day of the newest logged event. That day is
  usually still filling: the report counts the days and rows it found, and the drift thresholds
  are computed for exactly that size, so a partial window is judged as what it is.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from include.data.inference_layout import FEATURE_PREFIX
from include.data.inference_log import join_labels, read_inference_log
from include.data.partitions import list_validated, read_validated
from include.model.metrics import compute_metrics
from include.monitoring.drift import DriftAccumulator


def window_report(usecase, profile: dict, start, end, storage=None, labels: bool = True) -> dict:
    """Drift, data quality and (once labels have landed) performance of the predictions logged
    for events in [start, end): the inference log is read one day at a time, so memory holds one
    day plus the window's labelled (score, label) pairs. `labels=False`: served traffic only, no
    label joined even where some have landed (the periodic check)."""
    acc = DriftAccumulator(profile)
    # labels come from the validated partitions whose interval overlaps the window
    overlap = [
        r
        for r in (list_validated(usecase.name, storage) if labels else [])
        if datetime.fromisoformat(r["interval_start"]) < end and datetime.fromisoformat(r["interval_end"]) > start
    ]
    labels = read_validated(overlap, storage) if overlap else None
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    versions: dict[str, int] = {}
    day = start
    while day < end:
        log = read_inference_log(usecase, day, min(day + timedelta(days=1), end), storage)
        day += timedelta(days=1)
        if log.empty:
            continue
        acc.days += 1
        for v, n in log["model_version"].value_counts().items():
            versions[str(v)] = versions.get(str(v), 0) + int(n)
        features = log[[FEATURE_PREFIX + f for f in usecase.features]].set_axis(list(usecase.features), axis=1)
        y = join_labels(usecase, log, labels)["label"].to_numpy() if labels is not None else None
        acc.update(features, log["score"].to_numpy(), y)
        if y is not None:
            known = ~np.isnan(y)
            pairs.append((log["score"].to_numpy()[known], y[known]))
    report = acc.report() | {"window": [start.isoformat(), end.isoformat()], "model_versions": versions}
    scores = np.concatenate([p[0] for p in pairs]) if pairs else np.array([])
    ys = np.concatenate([p[1] for p in pairs]) if pairs else np.array([])
    return report | realised(scores, ys)


def frame_report(profile: dict, features, scores: np.ndarray, labels: np.ndarray | None = None, days: int = 7) -> dict:
    """The report of `window_report` for a window already in memory (the backtest's weeks): the
    model's features, its scores and, if known, the labels (NaN where unknown); `days`: how many
    event days the rows span."""
    acc = DriftAccumulator(profile, days=days)
    acc.update(features, scores, labels)
    report = acc.report() | {"days": days}
    if labels is None:
        return report | {"performance": {}}
    labels = np.asarray(labels, dtype="float64")
    known = ~np.isnan(labels)
    return report | realised(np.asarray(scores, dtype="float64")[known], labels[known])


def realised(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Live performance and calibration of labelled predictions (empty without both classes)."""
    import pandas as pd

    if not (labels.size and 0 < labels.sum() < labels.size):
        return {"performance": {}}
    metrics = compute_metrics(pd.Series(labels), scores, 0.5)
    return {
        "performance": {"roc_auc": metrics["roc_auc"], "pr_auc": metrics["pr_auc"], "log_loss": metrics["log_loss"]},
        "calibration": {"mean_score": float(scores.mean()), "base_rate": float(labels.mean())},
    }


def served_window(timezone: str, newest: datetime, days: int) -> tuple[datetime, datetime]:
    """The periodic check's window: `days` days of the use case up to the end of the day holding
    `newest`, the newest logged event."""
    tz = ZoneInfo(timezone)
    end = datetime.combine(newest.astimezone(tz).date() + timedelta(days=1), time(), tz)
    return datetime.combine(end.date() - timedelta(days=days), time(), tz), end


def monitoring_window(timezone: str, start: str | None, end: str | None, events: list[dict]):
    """The window a monitor run checks: the form's dates (days in `timezone`, end exclusive)
    if given, else the intervals of the validated partitions whose arrival triggered the run (their
    labels have just landed)."""
    if start or end:
        if not (start and end):
            raise ValueError("give both window_start and window_end, or neither")
        tz = ZoneInfo(timezone)
        a, b = (datetime.combine(date.fromisoformat(d), time(), tz) for d in (start, end))
    else:
        spans = [(e["interval_start"], e["interval_end"]) for e in events if "interval_start" in e]
        if not spans:
            raise ValueError("no window: trigger with window_start/window_end, or let validated-data events trigger it")
        a, b = min(datetime.fromisoformat(s) for s, _ in spans), max(datetime.fromisoformat(e) for _, e in spans)
    if b <= a:
        raise ValueError(f"window end {b} is not after its start {a}")
    return a, b
