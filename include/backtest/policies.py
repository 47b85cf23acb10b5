"""The policies a backtest compares, and the loop that serves the weeks under all of them in step.

A fixed schedule retrains after the week its model turns k weeks old; the monitor's policies decide
each week with `policy.decide` on the monitor's report of it, the serving model's evaluation and
the requests they made before, as the monitor does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from include.backtest.figures import say
from include.backtest.replay import Replay
from include.backtest.timeline import fixed_schedule
from include.monitoring.policy import History, PolicyConfig, decide

EVERY_N_WEEKS = 4


@dataclass(frozen=True)
class Policy:
    """A fixed schedule (`every` weeks; None and no config: never retrain) or the monitor's policy."""

    name: str
    every: int | None = None
    config: PolicyConfig | None = None


def default_policies(default: PolicyConfig) -> list[Policy]:
    """The policies of the comparison, the matched schedule aside (it depends on `default`'s
    retrains); today's rule gets the default's exempt features, as the monitor would give them."""
    return [
        Policy("never"),
        Policy("weekly", every=1),
        Policy(f"every {EVERY_N_WEEKS} weeks", every=EVERY_N_WEEKS),
        Policy("drift (today's rule)", config=replace(PolicyConfig.todays_rule(), exempt=default.exempt)),
        Policy("default", config=default),
    ]


def replay_policies(replayed: Replay, policies: list[Policy], first: int, *, quiet: bool = False) -> dict[str, list[dict]]:
    """Serve weeks first+1 … last under each policy in step; per policy, one record per served week
    (`quiet`: no line per week)."""
    last = len(replayed.weeks)
    due = {p.name: set(fixed_schedule(first, last, p.every)) for p in policies if p.config is None}
    model = dict.fromkeys((p.name for p in policies), first)
    requests: dict[str, list[tuple[datetime, str]]] = {p.name: [] for p in policies}
    records: dict[str, list[dict]] = {p.name: [] for p in policies}
    for week in replayed.weeks[first:]:
        said = []
        for policy in policies:
            serving = model[policy.name]
            served = replayed.served(serving, week.number)
            record = {
                "week": week.number,
                "model_week": serving,
                "rows": served.rows,
                "labelled": served.labelled,
                "roc_auc": served.roc_auc,
                "log_loss": served.log_loss,
                "cbpe_roc_auc": served.estimated_roc_auc,
            }
            if policy.config is None:
                retrain = week.number in due[policy.name]
                said.append(f"{policy.name}: {'retrain' if retrain else '-'}")
            else:
                history = History(
                    now=week.end,
                    last_training_at=replayed.week(serving).end,
                    model_data_end=replayed.week(serving).end,  # every retrain serves: the gate is not replayed yet
                    requests=tuple(requests[policy.name]),
                )
                decision = decide(served.report, replayed.trained(serving).reference, history, policy.config)
                if decision.action == "retrain":
                    requests[policy.name].append((week.end, decision.cause))
                retrain = decision.action == "retrain" and week.number < last
                record |= {
                    "action": decision.action,
                    "cause": decision.cause,
                    "reason": decision.reason,
                    "evidence": decision.evidence,
                }
                record["drift"] = drift_numbers(served.report)
                said.append(f"{policy.name}: {decision.action}" + (f" ({decision.cause})" if decision.cause else ""))
            record["retrained"] = retrain
            if retrain:
                model[policy.name] = week.number
            records[policy.name].append(record)
        if not quiet:
            say(
                f"week {week.number:>2} {week.start.date()}…{(week.end - timedelta(days=1)).date()}: "
                + " | ".join(said)
                + f"  {replayed.progress()}"
            )
    return records


def drift_numbers(report: dict, top: int = 3) -> dict:
    """The report's headline drift numbers: prediction drift, the most drifted features, the labels."""
    features = sorted(report.get("features", {}).items(), key=lambda kv: -kv[1].get("psi", 0.0))
    return {
        "prediction": {k: v for k, v in report.get("prediction", {}).items() if isinstance(v, int | float)},
        "top_features_psi": {name: f.get("psi") for name, f in features[:top]},
        "labels": report.get("labels", {}),
    }
