"""When drift or decay becomes a retrain request, and when it must not.

`decide` is one pure function: the monitor's report and what has happened recently go in, a
decision with its reason comes out. Every outcome is a decision worth recording, including "no
action" and "suppressed". The guards keep the loop from retraining in a storm: a cooldown since
the last training, nothing while a training run is queued or running, a daily maximum, and no
second request for a cause already requested and not yet answered by a new model.

`admit` applies the first two guards once more where the training happens: the first task of every
`train` run. The monitor's read of "training active" is only a hint (two requests can both read
"not active"); the train DAG runs one run at a time (`max_active_runs=1`, which the scheduler
enforces under row locks), so the admission of a run and the training it admits cannot interleave
with another run's: the next run is admitted only after this one has trained or given up, and sees
its model version. Runs the monitor did not decide on (an alert through the webhook, the UI, REST)
meet the same guards; a person can force a run past them from the form. The schedule's own runs
(the weekly cron, new validated data) are the cadence the operator chose and are not guarded.

All times are data time (the end of the newest data seen), as in the monitor: in production that is
about the wall clock; in the 2013 replay it keeps the cooldown meaningful.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class PolicyConfig:
    feature_psi: float = 0.25
    """A feature drifts when its PSI is above this (0.1 slight, 0.25 significant, by convention)."""
    min_drifted_features: int = 3
    """Drift needs at least this many drifted features (one noisy feature is not enough)."""
    prediction_psi: float = 0.2
    """Prediction drift: PSI of the score distribution against the reference."""
    decay_margin: float = 0.03
    """Decay: the live metric is below the model's own evaluation number by more than this."""
    min_labelled: int = 2000
    """Decay is judged only on windows with at least this many labelled predictions."""
    cooldown: timedelta = timedelta(hours=24)
    """No retrain request this soon after the last training finished."""
    max_per_day: int = 2
    """Retrain requests per 24 hours, at most."""
    exempt: tuple[str, ...] = ()
    """Features whose shift is expected (the use case's `drift_exempt`): never counted as drift."""

    @classmethod
    def from_settings(cls, settings, exempt: tuple[str, ...] = ()) -> PolicyConfig:
        return cls(
            exempt=exempt,
            feature_psi=settings.drift_feature_psi,
            min_drifted_features=settings.drift_min_features,
            prediction_psi=settings.drift_prediction_psi,
            decay_margin=settings.decay_margin,
            min_labelled=settings.decay_min_labelled,
            cooldown=timedelta(hours=settings.retrain_cooldown_hours),
            max_per_day=settings.retrain_max_per_day,
        )


@dataclass(frozen=True)
class History:
    """What the policy needs to know about the recent past (gathered from MLflow and Airflow)."""

    now: datetime
    last_training_at: datetime | None = None
    training_active: bool = False
    requests: tuple[tuple[datetime, str], ...] = ()
    """Earlier retrain requests: (time, cause), newest last."""


@dataclass(frozen=True)
class Decision:
    action: str
    """The monitor's: `retrain`, `none` or `suppressed`; admission's: `train` or `suppressed`."""
    cause: str
    """The monitor's: the kinds found, e.g. `drift`, `drift;decay:roc_auc`; empty when nothing. Which
    features drifted is in the reason and the evidence: the cause is what deduplication compares.
    Admission's: what asked for the run (its Airflow run type)."""
    reason: str
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def findings(report: dict, reference: dict, config: PolicyConfig) -> tuple[str, str, dict]:
    """The cause (empty if none), a sentence saying why, and the numbers behind it."""
    drifted = sorted(
        (name for name, f in report.get("features", {}).items() if f["psi"] > config.feature_psi and name not in config.exempt),
        key=lambda n: -report["features"][n]["psi"],
    )
    evidence: dict = {"drifted_features": {n: round(report["features"][n]["psi"], 4) for n in drifted}}
    causes, reasons = [], []
    if len(drifted) >= config.min_drifted_features:
        causes.append("drift")
        reasons.append(f"{len(drifted)} features drifted (PSI > {config.feature_psi}): " + ", ".join(drifted[:5]))
    pred = report.get("prediction", {}).get("psi")
    if pred is not None:
        evidence["prediction_psi"] = round(pred, 4)
        if pred > config.prediction_psi:
            causes.append("prediction-drift")
            reasons.append(f"score distribution PSI {pred:.3f} > {config.prediction_psi}")
    perf = report.get("performance", {})
    labelled = report.get("labels", {}).get("labelled", 0)
    evidence["labelled"] = labelled
    for metric, live in perf.items():
        expected = reference.get(metric)
        if live is None or expected is None:
            continue
        evidence[f"{metric}_live"], evidence[f"{metric}_reference"] = round(live, 4), round(expected, 4)
        if labelled >= config.min_labelled and expected - live > config.decay_margin:
            causes.append(f"decay:{metric}")
            reasons.append(f"{metric} {live:.3f} on {labelled} labelled predictions vs {expected:.3f} at evaluation")
    return ";".join(causes), "; ".join(reasons), evidence


def decide(report: dict, reference: dict, history: History, config: PolicyConfig) -> Decision:
    """Retrain, do nothing, or suppress a request, with the reason. `reference` holds the model's
    own evaluation metrics (higher is better), e.g. {"roc_auc": 0.71}."""
    cause, why, evidence = findings(report, reference, config)
    if not cause:
        return Decision("none", "", "no drift or decay beyond the thresholds", evidence)
    if held := training_guard(history, config):
        return Decision("suppressed", cause, f"{why}; {held}", evidence)
    recent = [t for t, _ in history.requests if history.now - t < timedelta(days=1)]
    if len(recent) >= config.max_per_day:
        return Decision(
            "suppressed", cause, f"{why}; already {len(recent)} retrain requests in 24 h (max {config.max_per_day})", evidence
        )
    answered = history.last_training_at
    kinds = set(cause.split(";"))
    pending = [c for t, c in history.requests if (answered is None or t > answered) and kinds & set(c.split(";"))]
    if pending:
        return Decision(
            "suppressed", cause, f"{why}; the same cause ({pending[-1]}) was already requested and not yet answered", evidence
        )
    return Decision("retrain", cause, why, evidence)


def training_guard(history: History, config: PolicyConfig) -> str | None:
    """Why no training may start now (another one is active, or the cooldown since the last), or None."""
    if history.training_active:
        return "another training run is already active"
    if history.last_training_at and history.now - history.last_training_at < config.cooldown:
        since = history.now - history.last_training_at
        return f"cooldown: last training {_ago(since)} ago (< {_ago(config.cooldown)})"
    return None


SCHEDULE_RUN_TYPES = ("scheduled", "asset_triggered")
"""Airflow run types of the train DAG's own schedule (the weekly cron, new validated data)."""


def admit(run_type: str, history: History, config: PolicyConfig, *, force: bool = False, requested_by: str = "") -> Decision:
    """Whether a `train` run may train: `train` or `suppressed`, with the reason. The schedule's own
    runs always may; any other run (`operator_triggered` by the monitor; `manual` from an alert, the
    UI or REST) only when no guard holds, unless `force` (a person's override from the form).
    `history.now` is the end of the newest validated data; `requested_by` names the requester."""
    who = f"{run_type} run" + (f" by {requested_by}" if requested_by else "")
    if run_type in SCHEDULE_RUN_TYPES:
        return Decision("train", run_type, f"{who}: the schedule's own run is not guarded")
    if force:
        return Decision("train", run_type, f"{who}: forced, the guards were not applied")
    if held := training_guard(history, config):
        return Decision("suppressed", run_type, f"{who}: {held}")
    last = f"last training {_ago(history.now - history.last_training_at)} ago" if history.last_training_at else "no training yet"
    return Decision("train", run_type, f"{who}: no guard holds ({last})")


def _ago(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"
