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
from typing import Literal

from include.monitoring.noise import auc_standard_error
from include.settings import default

SETTINGS = {
    "rule": "drift_rule",
    "drift_share": "drift_attribution_share",
    "estimate_margin": "estimate_margin",
    "decay_z": "decay_z",
    "feature_psi": "drift_feature_psi",
    "min_drifted_features": "drift_min_features",
    "prediction_psi": "drift_prediction_psi",
    "decay_margin": "decay_margin",
    "min_labelled": "decay_min_labelled",
    "max_model_age": "max_model_age_days",
    "cooldown": "retrain_cooldown_hours",
    "max_per_day": "retrain_max_per_day",
}
"""The setting each knob of `PolicyConfig` is read from; the setting declares its default."""
_UNITS = {
    "max_model_age": lambda days: timedelta(days=days) if days else None,
    "cooldown": lambda hours: timedelta(hours=hours),
}


def _knobs(value_of) -> dict:
    """The policy's knobs from `value_of(setting name)`, in the policy's units."""
    return {knob: _UNITS.get(knob, lambda v: v)(value_of(name)) for knob, name in SETTINGS.items()}


_DEFAULTS = _knobs(default)


@dataclass(frozen=True)
class PolicyConfig:
    """The retrain policy's knobs. Each default is its setting's (`SETTINGS`): declared once, in
    `include/settings.py`, so `PolicyConfig()` and `from_settings` of an unset environment agree."""

    rule: Literal["attribution", "count"] = _DEFAULTS["rule"]
    """`attribution` (the default): drift weighed by what it does to this model — features beyond
    their own noise threshold, by their share of the model's attributions — the performance
    estimated from the scores (CBPE), and realised decay judged with the window's confidence
    interval. `count`: the rule before (a fixed PSI on enough features, decay on enough labels)."""
    drift_share: float = _DEFAULTS["drift_share"]
    """attribution: drift when the features beyond their noise threshold carry at least this share
    of the model's attributions (mean |SHAP| on held-out rows); the default is chosen from the
    backtest's sweep (docs/backtest.md)."""
    estimate_margin: float = _DEFAULTS["estimate_margin"]
    """attribution: the ROC AUC estimated without labels is below the model's evaluation number by
    more than this."""
    decay_z: float = _DEFAULTS["decay_z"]
    """attribution: decay when the live ROC AUC's upper confidence bound (this many standard errors,
    Hanley–McNeil) is still below the evaluation number minus `decay_margin`."""
    feature_psi: float = _DEFAULTS["feature_psi"]
    """count: a feature drifts when its PSI is above this (0.1 slight, 0.25 significant, by convention)."""
    min_drifted_features: int = _DEFAULTS["min_drifted_features"]
    """count: drift needs at least this many drifted features (one noisy feature is not enough)."""
    prediction_psi: float = _DEFAULTS["prediction_psi"]
    """count: prediction drift, the PSI of the score distribution against the reference."""
    decay_margin: float = _DEFAULTS["decay_margin"]
    """Decay: the live metric is below the model's own evaluation number by more than this."""
    min_labelled: int = _DEFAULTS["min_labelled"]
    """Decay is judged only on windows with at least this many labelled predictions."""
    max_model_age: timedelta | None = _DEFAULTS["max_model_age"]
    """Retrain (cause `age`) once the serving model's data ends this long before the newest data
    seen, whatever the signals say: a model's served quality falls with its age faster than any one
    week's drift shows (docs/backtest.md). None: off."""
    cooldown: timedelta = _DEFAULTS["cooldown"]
    """No retrain request this soon after the last training finished."""
    max_per_day: int = _DEFAULTS["max_per_day"]
    """Retrain requests per 24 hours, at most."""
    exempt: tuple[str, ...] = ()
    """Features whose shift is expected (the use case's `drift_exempt`): never counted as drift."""

    @classmethod
    def todays_rule(cls, **overrides) -> PolicyConfig:
        """The rule before issue 12 (a fixed PSI 0.25 on 3 features, decay on 2,000 labels), kept
        for the backtest's comparison."""
        rule = {"rule": "count", "feature_psi": 0.25, "min_drifted_features": 3, "prediction_psi": 0.2}
        return cls(**(rule | {"decay_margin": 0.03, "min_labelled": 2000, "max_model_age": None} | overrides))

    @classmethod
    def from_settings(cls, settings, exempt: tuple[str, ...] = ()) -> PolicyConfig:
        """The policy the settings configure (the monitor's, and the backtest's `default`)."""
        return cls(exempt=exempt, **_knobs(lambda name: getattr(settings, name)))


@dataclass(frozen=True)
class History:
    """What the policy needs to know about the recent past (gathered from MLflow and Airflow)."""

    now: datetime
    last_training_at: datetime | None = None
    """The end of the newest training's data window, whatever the gate made of it: the cooldown
    counts from here."""
    model_data_end: datetime | None = None
    """The end of the serving model's data window: its age counts from here (a challenger the gate
    rejected does not make the serving model any younger)."""
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
    if config.rule == "count":
        return _count_findings(report, reference, config)
    return _attribution_findings(report, reference, config)


def _attribution_findings(report: dict, reference: dict, config: PolicyConfig) -> tuple[str, str, dict]:
    features = {n: f for n, f in report.get("features", {}).items() if "threshold" in f}
    beyond = sorted(
        (n for n, f in features.items() if f["psi"] > f["threshold"] and n not in config.exempt),
        key=lambda n: -features[n]["share"],
    )
    share = sum(features[n]["share"] for n in beyond)
    evidence: dict = {
        "drifted_features": {n: round(features[n]["psi"], 4) for n in beyond},
        "drift_thresholds": {n: round(features[n]["threshold"], 4) for n in beyond},
        "drifted_share": round(share, 4),
    }
    causes, reasons = [], []
    if beyond and share >= config.drift_share:
        causes.append("drift")
        named = ", ".join(
            f"{n} (PSI {features[n]['psi']:.2f} > {features[n]['threshold']:.2f}, {features[n]['share']:.0%})" for n in beyond[:4]
        )
        reasons.append(
            f"{len(beyond)} drifted feature(s), beyond their noise threshold, carry {share:.0%} of the model's attributions "
            f"(≥ {config.drift_share:.0%}): {named}"
        )
    pred = report.get("prediction", {})
    if "psi" in pred:
        evidence["prediction_psi"] = round(pred["psi"], 4)
    expected = reference.get("roc_auc")
    estimate = report.get("estimated", {}).get("roc_auc")
    if estimate is not None and expected is not None:
        evidence["roc_auc_estimated"] = round(estimate, 4)
        if expected - estimate > config.estimate_margin:
            causes.append("estimated-decay:roc_auc")
            reasons.append(f"ROC AUC estimated from the scores {estimate:.3f} vs {expected:.3f} at evaluation (CBPE)")
    labels = report.get("labels", {})
    labelled, positives = labels.get("labelled", 0), labels.get("positives")
    evidence["labelled"] = labelled
    for metric, live in report.get("performance", {}).items():
        target = reference.get(metric)
        if live is None or target is None or live != live:
            continue
        evidence[f"{metric}_live"], evidence[f"{metric}_reference"] = round(live, 4), round(target, 4)
        if metric != "roc_auc" or labelled < config.min_labelled or not positives or positives >= labelled:
            continue
        se = auc_standard_error(live, positives, labelled - positives)
        evidence["roc_auc_live_se"] = round(se, 4)
        if target - (live + config.decay_z * se) > config.decay_margin:
            causes.append("decay:roc_auc")
            reasons.append(
                f"roc_auc {live:.3f} ± {config.decay_z * se:.3f} on {labelled} labelled predictions "
                f"vs {target:.3f} at evaluation (margin {config.decay_margin})"
            )
    return ";".join(causes), "; ".join(reasons), evidence


def _count_findings(report: dict, reference: dict, config: PolicyConfig) -> tuple[str, str, dict]:
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


AGE = "age"
"""The cause of a retrain the model's age asks for: maintenance, not an alert (`signals`)."""


def signals(cause: str) -> list[str]:
    """The causes that are news (drift, an estimated drop, decay): all but the model's age."""
    return [c for c in cause.split(";") if c and c != AGE]


def decide(report: dict, reference: dict, history: History, config: PolicyConfig) -> Decision:
    """Retrain, do nothing, or suppress a request, with the reason. `reference` holds the model's
    own evaluation metrics (higher is better), e.g. {"roc_auc": 0.71}."""
    cause, why, evidence = findings(report, reference, config)
    if config.max_model_age is not None and history.model_data_end is not None:
        age = history.now - history.model_data_end
        evidence["model_age_days"] = round(age.total_seconds() / 86400, 2)
        if age >= config.max_model_age:
            cause = ";".join(c for c in (cause, AGE) if c)
            why = "; ".join(
                w for w in (why, f"the serving model's data ends {_ago(age)} ago (≥ {_ago(config.max_model_age)})") if w
            )
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
