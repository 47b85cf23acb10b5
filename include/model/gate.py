"""The champion gate: is the challenger broken, or clearly worse than the champion?

On this loop's data a fresher model serves better (served ROC AUC falls with a model's age), and
one held-out week cannot rank two recent models, so the fresher model wins unless there is
evidence against it. `decide` is the gate itself, a pure function of both models' scores on the
challenger's held-out rows. A challenger is rejected when

* it is broken, whatever the champion does (`sanity`): its metric is below the floor (unless the
  champion falls below it on the same rows too: a hard week, not a broken model) or above the
  ceiling (too good to be true: a leak), its mean score is off the observed positive rate by more
  than the calibration ratio, or its scores are degenerate (one value); or, beside a champion, it
  never uses a feature that carried a large share of the champion's gain (`abandoned`: a column
  that went constant or empty upstream, whatever the metric says) or its scores take far fewer
  distinct values than the champion's (`coarse`: a model cut short); or it cannot reproduce its own
  training run's evaluation on the same partitions (`unreproduced`: its features are built
  differently now, a unit or encoding change upstream);
* it is worse than the champion beyond the non-inferiority margin, with confidence: the whole
  two-sided interval of the paired difference lies below −margin (`include.model.stats.compare`:
  DeLong for ROC AUC, a paired bootstrap for the other metrics);
* a slice is worse beyond the slice margin with confidence, the confidence corrected for the
  number of slices (Bonferroni). No fixed row count decides which slices are judged: a slice is
  judged when its class counts can measure an AUC to within the slice margin (the Hanley–McNeil
  standard error at AUC 0.5, about its widest, is at most the margin); smaller slices are reported.
  DeLong's interval is not trusted below that either: with a handful of positives its variance
  estimate collapses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from include.alerting.alerts import mlflow_run_link, send_alert
from include.data.partitions import read_validated
from include.model.card import write_model_card
from include.model.dataset import LINEAGE_ARTIFACT, labelled
from include.model.metrics import HIGHER_IS_BETTER, metric_value, slice_masks
from include.model.registry import CHAMPION, alias_version, connect, load_judged_model, naming_the_server, tag_version, timestamp
from include.model.stats import Comparison, compare, hanley_mcneil_se
from include.settings import default, get_settings

LABELS = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "precision": "precision", "recall": "recall", "f1": "F1"}


@dataclass(frozen=True)
class GateConfig:
    """The gate's knobs; each default is its setting's (LOOP_GATE_*, declared in `include/settings.py`)."""

    metric: str = default("gate_metric")
    margin: float = default("gate_margin")
    slice_margin: float = default("gate_slice_margin")
    confidence: float = default("gate_confidence")
    floor: float = default("gate_floor")
    ceiling: float = default("gate_ceiling")
    calibration_ratio: float = default("gate_calibration_ratio")
    abandoned_share: float = default("gate_abandoned_share")
    resolution_ratio: float = default("gate_resolution_ratio")

    def __post_init__(self):
        if self.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"gate metric {self.metric!r} must be one of {sorted(HIGHER_IS_BETTER)}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"gate confidence {self.confidence} must be at least 0.5 and below 1")

    @classmethod
    def from_settings(cls, settings=None) -> GateConfig:
        s = settings or get_settings()
        return cls(**{f.name: getattr(s, f"gate_{f.name}") for f in fields(cls)})  # each knob is setting gate_<knob>


@dataclass
class GateDecision:
    promote: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None
    delta: float | None
    interval: tuple[float, float] | None = None
    confidence: float | None = None
    method: str | None = None
    broken: list[str] = field(default_factory=list)
    slices: list[dict] = field(default_factory=list)
    worst_slice: str | None = None
    worst_slice_delta: float | None = None
    slice_regressions: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def sanity(y_true, scores, value: float, config: GateConfig, champion_value: float | None = None) -> list[str]:
    """What makes a model broken whatever the champion scores; empty when none applies. Only the
    floor looks at the champion (`champion_value`, on the same rows): rows on which the champion
    falls below the floor too are a hard week, not a broken model, and the paired comparison judges."""
    import numpy as np

    name, y, s = LABELS[config.metric], np.asarray(y_true, dtype=float), np.asarray(scores, dtype=float)
    found = []
    if value != value:
        return [f"{name} is undefined on the evaluation rows"]
    hard_rows = champion_value is not None and champion_value < config.floor
    if value < config.floor and not hard_rows:
        found.append(f"{name} {value:.4f} is below the floor {config.floor:.4f}")
    if value > config.ceiling:
        found.append(f"{name} {value:.4f} is above the ceiling {config.ceiling:.4f}: too good to be true (a leak?)")
    distinct = len(np.unique(s))
    if distinct < 2:
        found.append(f"its scores are degenerate ({distinct} distinct value)")
    observed, predicted = float(y.mean()), float(s.mean())
    ratio = config.calibration_ratio
    if not (observed / ratio <= predicted <= observed * ratio):
        found.append(f"its mean score {predicted:.3f} is off the observed positive rate {observed:.3f} by more than ×{ratio:g}")
    return found


def coarse(challenger_scores, champion_scores, config: GateConfig) -> list[str]:
    """A challenger whose scores take far fewer distinct values than the champion's on the same rows
    (a model cut short: one tree, a few stumps), as a finding."""
    import numpy as np

    mine, theirs = len(np.unique(challenger_scores)), len(np.unique(champion_scores))
    if mine < config.resolution_ratio * theirs:
        return [f"its scores take {mine} distinct values where the champion's take {theirs}: a model cut short?"]
    return []


REPRODUCED = 1e-6
"""How closely the gate must reproduce the evaluation the challenger's training run recorded."""


def unreproduced(value: float, recorded: float | None, name: str) -> list[str]:
    """The challenger's metric on its own held-out rows, as the gate builds their features, against
    what its training run recorded on the same partitions: a difference means the features were built
    differently (a unit or encoding change upstream, a feature code change), as a finding."""
    if recorded is None or recorded != recorded or value != value or abs(value - recorded) <= REPRODUCED:
        return []
    return [
        f"it scores its own held-out rows {name} {value:.4f} where its training run recorded {recorded:.4f}: "
        "the rows are built differently now (a unit or encoding change upstream, labels built another way?)"
    ]


def gain_shares(model) -> dict[str, float]:
    """Each feature's share of an XGBoost model's total gain (features it never splits on: absent)."""
    gains = model.get_booster().get_score(importance_type="total_gain")
    total = sum(gains.values())
    return {f: g / total for f, g in gains.items()} if total else {}


def abandoned(challenger: dict[str, float], champion: dict[str, float], config: GateConfig) -> list[str]:
    """The features the champion leaned on (at least the abandoned share of its gain) that the
    challenger never uses, as findings."""
    return [
        f"it never uses {f}, which carried {share:.0%} of the champion's gain (a column gone constant or empty upstream?)"
        for f, share in sorted(champion.items(), key=lambda kv: -kv[1])
        if share >= config.abandoned_share and challenger.get(f, 0.0) == 0.0
    ]


def _fmt(c: Comparison) -> str:
    return f"Δ {c.delta:+.3f}, {c.confidence:.0%} CI {c.low:+.3f}…{c.high:+.3f}"


def judge_slices(y, challenger, champion, slices, config: GateConfig, threshold: float) -> list[dict]:
    """Each slice's paired comparison at the confidence corrected for the number of slices with
    both classes (Bonferroni): `judged` when its class counts can measure an AUC to within the
    slice margin (Hanley–McNeil at 0.5: the size, not the models, decides), `worse` when judged and its interval lies wholly below
    −the slice margin."""
    import numpy as np

    if slices is None or slices.empty:
        return []
    y, a, b = (np.asarray(v, dtype=float) for v in (y, challenger, champion))
    masks = {key: mask for key, mask in slice_masks(slices).items() if 0 < y[mask].sum() < mask.sum()}  # both classes: defined
    level = 1 - (1 - config.confidence) / max(len(masks), 1)
    out = []
    for key, mask in masks.items():
        c = compare(y[mask], a[mask], b[mask], config.metric, level, threshold)
        positives = int(y[mask].sum())
        judged = c.defined and hanley_mcneil_se(0.5, positives, int(mask.sum()) - positives) <= config.slice_margin
        out.append(c.as_dict() | {"slice": key, "judged": judged, "worse": judged and c.high < -config.slice_margin})
    return out


def decide(
    y_true,
    challenger_scores,
    champion_scores,
    config: GateConfig,
    slices=None,
    threshold: float = 0.5,
    gains: tuple[dict, dict] | None = None,
    recorded: float | None = None,
) -> GateDecision:
    """The champion gate (module docstring) on both models' scores of the same labelled rows, and
    the rows' slice columns. `champion_scores` is None when there is no champion yet; `gains`, the
    challenger's and the champion's `gain_shares`, when known; `recorded`, the challenger's metric on
    the same rows as its training run recorded it."""
    m, name = config.metric, LABELS[config.metric]
    value = metric_value(m, y_true, challenger_scores, threshold)
    base = None if champion_scores is None else metric_value(m, y_true, champion_scores, threshold)
    broken = sanity(y_true, challenger_scores, value, config, base) + unreproduced(value, recorded, name)
    if champion_scores is not None:
        broken += coarse(challenger_scores, champion_scores, config)
    if gains is not None and champion_scores is not None:
        broken += abandoned(*gains, config)
    if champion_scores is None:
        if broken:
            return GateDecision(False, f"first model, broken: {'; '.join(broken)}", m, value, None, None, broken=broken)
        return GateDecision(
            True,
            f"first model: {name} {value:.4f}, within the floor {config.floor:.4f} and the ceiling {config.ceiling:.4f}",
            m,
            value,
            None,
            None,
        )

    c = compare(y_true, challenger_scores, champion_scores, m, config.confidence, threshold)
    per_slice = judge_slices(y_true, challenger_scores, champion_scores, slices, config, threshold)
    judged = [s for s in per_slice if s["judged"]]
    worst = min(judged, key=lambda s: s["delta"], default=None)
    decision = GateDecision(
        False,
        "",
        m,
        value,
        c.champion,
        c.delta,
        (c.low, c.high),
        c.confidence,
        c.method,
        broken,
        per_slice,
        worst["slice"] if worst else None,
        worst["delta"] if worst else None,
        {s["slice"]: s["delta"] for s in per_slice if s["worse"]},
    )
    headline = f"{name} {value:.4f} vs {c.champion:.4f} ({_fmt(c)})"
    small = len(per_slice) - len(judged)
    if worst is None:
        slice_note = f"no slice large enough to judge ({small} too small)"
    else:
        slice_note = f"worst {worst['slice']} {worst['delta']:+.3f}, CI {worst['low']:+.3f}…{worst['high']:+.3f}; {small} of {len(per_slice)} too small to judge"
    if not c.defined:
        compared = f"{headline}: the comparison is undefined on the evaluation rows"
    elif c.high < -config.margin:
        compared = f"{headline}: worse than the champion beyond the margin {config.margin:.3f} with {c.confidence:.0%} confidence"
    elif decision.slice_regressions:
        listed = ", ".join(
            f"{s['slice']} {s['delta']:+.3f} (CI {s['low']:+.3f}…{s['high']:+.3f})" for s in per_slice if s["worse"]
        )
        compared = f"{headline}; slices worse beyond the margin {config.slice_margin:.3f} with confidence (Bonferroni over {len(per_slice)}): {listed}"
    else:
        compared = f"{headline}; no slice worse beyond the margin with confidence ({slice_note})"
        decision.promote = not broken
    # a broken challenger's reason says what broke it first, then what the comparison found
    decision.reason = f"broken: {'; '.join(broken)} · compared: {compared}" if broken else compared
    return decision


def run_champion_gate(usecase, settings, model_name: str, version: str, storage=None, *, move_alias: bool = True) -> dict:
    """Score challenger `version` and the current champion on the challenger's evaluation slice,
    decide, record the decision on the version and its run, and move `champion` on promotion.

    Idempotent: a version that already has a decision returns it (finishing an interrupted alias
    move) instead of deciding again. The version's `gate.decision` tag is written last, after
    everything it summarizes, so a gate cut short (a tracking server that stopped answering fails
    with TrackingServerUnreachable naming it) leaves no decision behind and its rerun decides again.
    With `move_alias=False` (a refit will serve instead, `refit.py`) the decision is recorded and
    the alias left where it is.
    """
    with naming_the_server(settings.mlflow_tracking_uri):
        return _run_gate(usecase, settings, model_name, str(version), storage, move_alias)


def _run_gate(usecase, settings, model_name: str, version: str, storage, move_alias: bool) -> dict:
    import mlflow

    client = connect(settings.mlflow_tracking_uri)
    mv = client.get_model_version(model_name, version)
    champion = alias_version(client, model_name, CHAMPION)
    result = {"model_name": model_name, "version": version, "run_id": mv.run_id}

    if "gate.decision" in mv.tags:
        promote = mv.tags["gate.decision"] == "promote"
        if promote and move_alias and mv.tags.get("gate.applied") != "true":
            promote_version(client, model_name, version)
        return result | {
            "promoted": promote,
            "reason": mv.tags.get("gate.reason", ""),
            "previous_champion": mv.tags.get("gate.champion_version") or None,
            "reused": True,
        }

    lineage = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{LINEAGE_ARTIFACT}")
    X, y, slices = labelled(usecase, read_validated(lineage["eval"], storage))
    config = GateConfig.from_settings()
    threshold = settings.operating_threshold

    def score(v: str):
        model = load_judged_model(client, model_name, v)
        try:
            return model.predict_proba(X)[:, 1], gain_shares(model)
        except Exception as exc:
            raise RuntimeError(
                f"{model_name} version {v} cannot score the evaluation slice of version {version} "
                f"(feature schema changed?): {exc}. Compare them by hand and move the alias if intended."
            ) from exc

    challenger_scores, challenger_gains = score(version)
    champion_scores, champion_gains = score(champion.version) if champion is not None else (None, {})
    recorded = client.get_run(mv.run_id).data.metrics.get(f"eval_{config.metric}")  # what training measured on these rows
    decision = decide(
        y.to_numpy(), challenger_scores, champion_scores, config, slices, threshold, (challenger_gains, champion_gains), recorded
    )
    verdict = "promote" if decision.promote else "reject"

    record = decision.as_dict() | {
        "champion_version": champion.version if champion else None,
        "config": asdict(config),
        "eval_partitions": [r["partition"] for r in lineage["eval"]],
    }
    client.log_dict(mv.run_id, record, "gate/decision.json")
    for k, v in {
        f"gate_challenger_{config.metric}": decision.challenger,
        f"gate_champion_{config.metric}": decision.champion,
        "gate_delta": decision.delta,
        "gate_delta_low": decision.interval[0] if decision.interval else None,
        "gate_delta_high": decision.interval[1] if decision.interval else None,
    }.items():
        if v is not None and v == v:
            client.log_metric(mv.run_id, k, v)
    client.set_tag(mv.run_id, "gate.decision", verdict)
    experiment = client.get_run(mv.run_id).info.experiment_id
    tag_version(
        client,
        model_name,
        version,
        {
            "gate.reason": decision.reason,
            "gate.metric": config.metric,
            "gate.challenger": f"{decision.challenger:.6f}",
            "gate.champion": "" if decision.champion is None else f"{decision.champion:.6f}",
            "gate.champion_version": champion.version if champion else "",
            "gate.interval": "" if decision.interval is None else f"{decision.interval[0]:+.6f} {decision.interval[1]:+.6f}",
        },
    )
    # The decision itself, last: a version carries it only once everything above is recorded.
    tag_version(client, model_name, version, {"gate.decision": verdict})
    write_model_card(client, settings, usecase, model_name, version)  # the card carries the decision
    if decision.promote:
        if move_alias:
            promote_version(client, model_name, version)
    else:
        send_alert(
            settings,
            "gate_rejected",
            f"{model_name} v{version} not promoted: {decision.reason}",
            {"model_name": model_name, "version": version, "champion_version": champion.version if champion else None},
            links={"mlflow": mlflow_run_link(settings, mv.run_id, experiment)},
        )
    return result | {
        "promoted": decision.promote,
        "reason": decision.reason,
        "previous_champion": champion.version if champion else None,
        "reused": False,
    }


def promote_version(client, model_name: str, version: str) -> None:
    """Move `champion` to `version` and mark the version's decision applied."""
    client.set_registered_model_alias(model_name, CHAMPION, version)
    tag_version(client, model_name, version, {"gate.applied": "true", "gate.promoted_at": timestamp()})
