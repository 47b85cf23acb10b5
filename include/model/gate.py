"""The champion gate.

`decide` is the gate itself: a pure function of the two models' metrics on the same evaluation
slice, used by the `train` DAG and asserted on by the tests. A challenger is promoted only if

* there is no champion yet and its metric clears the absolute floor, or
* it beats the champion by at least the margin, and no slice with enough rows loses more than
  the tolerance against the champion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from include.alerting.alerts import mlflow_run_link, send_alert
from include.data.partitions import read_validated
from include.model.dataset import LINEAGE_ARTIFACT, labelled
from include.model.metrics import HIGHER_IS_BETTER, compute_metrics, slice_metrics
from include.model.registry import CHAMPION, alias_version, connect, load_judged_model, naming_the_server, tag_version, timestamp
from include.settings import default, get_settings


@dataclass(frozen=True)
class GateConfig:
    """The gate's knobs; each default is its setting's (LOOP_GATE_*, declared in `include/settings.py`)."""

    metric: str = default("gate_metric")
    margin: float = default("gate_margin")
    slice_tolerance: float = default("gate_slice_tolerance")
    min_slice_rows: int = default("gate_min_slice_rows")
    floor: float = default("gate_floor")

    def __post_init__(self):
        if self.metric not in HIGHER_IS_BETTER:
            raise ValueError(f"gate metric {self.metric!r} must be one of {sorted(HIGHER_IS_BETTER)}")

    @classmethod
    def from_settings(cls) -> GateConfig:
        s = get_settings()
        return cls(s.gate_metric, s.gate_margin, s.gate_slice_tolerance, s.gate_min_slice_rows, s.gate_floor)


@dataclass
class GateDecision:
    promote: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None
    delta: float | None
    worst_slice: str | None = None
    worst_slice_delta: float | None = None
    slice_regressions: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    config: GateConfig,
    challenger_slices: dict[str, dict[str, float]] | None = None,
    champion_slices: dict[str, dict[str, float]] | None = None,
) -> GateDecision:
    """The champion gate (see module docstring). Metrics must come from the same evaluation rows."""
    m = config.metric
    value = challenger.get(m, math.nan)
    if value != value:
        return GateDecision(False, f"challenger {m} is undefined on the evaluation slice", m, value, None, None)
    if champion is None:
        if value >= config.floor:
            return GateDecision(True, f"first model: {m} {value:.4f} >= floor {config.floor:.4f}", m, value, None, None)
        return GateDecision(False, f"first model: {m} {value:.4f} is below the floor {config.floor:.4f}", m, value, None, None)

    base = champion[m]
    delta = value - base
    regressions, worst, worst_delta = {}, None, None
    for key, ch in (challenger_slices or {}).items():
        cp = (champion_slices or {}).get(key)
        if cp is None or ch.get("n", 0) < config.min_slice_rows:
            continue
        d = ch[m] - cp[m]
        if d != d:  # undefined on this slice (one class only)
            continue
        if worst_delta is None or d < worst_delta:
            worst, worst_delta = key, d
        if d < -config.slice_tolerance:
            regressions[key] = d
    decision = GateDecision(False, "", m, value, base, delta, worst, worst_delta, regressions)
    if delta < config.margin:
        decision.reason = f"{m} {value:.4f} vs champion {base:.4f}: gain {delta:+.4f} is under the margin {config.margin:.4f}"
    elif regressions:
        listed = ", ".join(f"{k} {v:+.4f}" for k, v in sorted(regressions.items(), key=lambda kv: kv[1]))
        decision.reason = f"{m} gain {delta:+.4f}, but slices regress beyond {config.slice_tolerance:.4f}: {listed}"
    else:
        decision.promote = True
        decision.reason = f"{m} {value:.4f} beats champion {base:.4f} by {delta:+.4f}; no slice regresses beyond tolerance"
    return decision


def run_champion_gate(usecase, settings, model_name: str, version: str, storage=None) -> dict:
    """Score challenger `version` and the current champion on the challenger's evaluation slice,
    decide, record the decision on the version and its run, and move `champion` on promotion.

    Idempotent: a version that already has a decision returns it (finishing an interrupted alias
    move) instead of deciding again. The version's `gate.decision` tag is written last, after
    everything it summarizes, so a gate cut short (a tracking server that stopped answering fails
    with TrackingServerUnreachable naming it) leaves no decision behind and its rerun decides again.
    """
    with naming_the_server(settings.mlflow_tracking_uri):
        return _run_gate(usecase, settings, model_name, str(version), storage)


def _run_gate(usecase, settings, model_name: str, version: str, storage) -> dict:
    import mlflow

    client = connect(settings.mlflow_tracking_uri)
    mv = client.get_model_version(model_name, version)
    champion = alias_version(client, model_name, CHAMPION)
    result = {"model_name": model_name, "version": version, "run_id": mv.run_id}

    if "gate.decision" in mv.tags:
        promote = mv.tags["gate.decision"] == "promote"
        if promote and mv.tags.get("gate.applied") != "true":
            _promote(client, model_name, version)
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
            s = model.predict_proba(X)[:, 1]
        except Exception as exc:
            raise RuntimeError(
                f"{model_name} version {v} cannot score the evaluation slice of version {version} "
                f"(feature schema changed?): {exc}. Compare them by hand and move the alias if intended."
            ) from exc
        return compute_metrics(y, s, threshold), slice_metrics(slices, y.to_numpy(), s, threshold)

    ch_metrics, ch_slices = score(version)
    cp_metrics = cp_slices = None
    if champion is not None:
        cp_metrics, cp_slices = score(champion.version)
    decision = decide(ch_metrics, cp_metrics, config, ch_slices, cp_slices)
    verdict = "promote" if decision.promote else "reject"

    record = decision.as_dict() | {
        "champion_version": champion.version if champion else None,
        "config": asdict(config),
        "eval_partitions": [r["partition"] for r in lineage["eval"]],
    }
    client.log_dict(mv.run_id, record, "gate/decision.json")
    for k, v in {
        f"gate_challenger_{config.metric}": ch_metrics[config.metric],
        f"gate_champion_{config.metric}": cp_metrics[config.metric] if cp_metrics else None,
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
        },
    )
    # The decision itself, last: a version carries it only once everything above is recorded.
    tag_version(client, model_name, version, {"gate.decision": verdict})
    if decision.promote:
        _promote(client, model_name, version)
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


def _promote(client, model_name: str, version: str) -> None:
    client.set_registered_model_alias(model_name, CHAMPION, version)
    tag_version(client, model_name, version, {"gate.applied": "true", "gate.promoted_at": timestamp()})

