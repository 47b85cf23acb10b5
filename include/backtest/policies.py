"""The policies a backtest compares, and the loop that serves the weeks under all of them in step.

A fixed schedule retrains after the week its model turns k weeks old; the monitor's policies decide
each week with `policy.decide` on the monitor's report of it, the serving model's evaluation and
the requests they made before, as the monitor does. The loop's rows (`Policy.gate`, `Policy.refit`)
replay what follows a retrain request too: admission, the champion gate, the refit and its guard.
Two of the guards cannot bind at a week's granularity and are replayed as the loop runs them all the
same: one training at a time (each retrain ends before the next week) and the daily cap (one decision
a week); the cooldown does bind (the demo's is two weeks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from include.backtest.figures import mean, say
from include.backtest.replay import Key, Replay
from include.backtest.timeline import fixed_schedule
from include.model.gate import GateConfig
from include.monitoring.policy import History, PolicyConfig, admit, decide
from include.settings import DEMO_SETTINGS, Settings, with_overrides

EVERY_N_WEEKS = 4


@dataclass(frozen=True)
class Policy:
    """A fixed schedule (`every` weeks; None and no config: never retrain) or the monitor's policy.

    With `gate` or `refit` the row replays the loop, not only the policy: each retrain's challenger
    meets the champion gate (`gate`; None: every challenger serves) and, accepted, serves as its refit
    on the whole window (`refit`), as `train` does. A policy's retrain request passes admission first."""

    name: str
    every: int | None = None
    config: PolicyConfig | None = None
    gate: GateConfig | None = None
    refit: bool = False


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


REPLAYED_LOOPS = (
    "weekly, always promote, refit",
    "loop: production defaults",
    "loop: as make demo runs it",
    "loop: as make demo, always promote",
)
"""The rows that replay the loop (`loop_policies`)."""


def loop_policies(settings: Settings, exempt: tuple[str, ...]) -> list[Policy]:
    """The loop replayed: under the settings (the production defaults, unless the environment says
    otherwise) and under `make demo`'s (`DEMO_SETTINGS`), each through its gate and refit as the
    settings configure them; the demo's again with every challenger promoted; and the yardstick,
    weekly retraining with every challenger promoted and refitted."""
    demo = with_overrides(settings, DEMO_SETTINGS)
    production, as_demo = _loop(REPLAYED_LOOPS[1], settings, exempt), _loop(REPLAYED_LOOPS[2], demo, exempt)
    return [
        Policy(REPLAYED_LOOPS[0], every=1, refit=True),
        production,
        as_demo,
        replace(as_demo, name=REPLAYED_LOOPS[3], gate=None),
    ]


def _loop(name: str, settings: Settings, exempt: tuple[str, ...]) -> Policy:
    """The loop under `settings`: with LOOP_RETRAIN_ON=data every validated week trains (the
    schedule's runs, which admission does not guard; the monitor's requests then meet the cooldown of
    that training), with `drift` only the monitor's admitted requests do."""
    gate = GateConfig.from_settings(settings)
    if settings.retrain_on == "data":
        return Policy(name, every=1, gate=gate, refit=settings.refit)
    return Policy(name, config=PolicyConfig.from_settings(settings, exempt), gate=gate, refit=settings.refit)


FOLLOWING_WEEKS = 2
"""A gate's call is scored on this many weeks after it: what the model it chose served, against
what the other one would have."""
WRONG = 0.01
"""A call is wrong when the model it turned down is at least this much better (ROC AUC, mean over the
following weeks) than the one it kept."""


@dataclass
class _State:
    serving: Key
    trained: int
    """The week of the newest training, whatever the gate made of it: the cooldown counts from it."""


def replay_policies(replayed: Replay, policies: list[Policy], first: int, *, quiet: bool = False) -> dict[str, list[dict]]:
    """Serve weeks first+1 … last under each policy in step; per policy, one record per served week
    (`quiet`: no line per week)."""
    last = len(replayed.weeks)
    due = {p.name: set(fixed_schedule(first, last, p.every)) for p in policies if p.config is None}
    state = {p.name: _State((first, p.refit), first) for p in policies}
    requests: dict[str, list[tuple[datetime, str]]] = {p.name: [] for p in policies}
    records: dict[str, list[dict]] = {p.name: [] for p in policies}
    for week in replayed.weeks[first:]:
        said = []
        for policy in policies:
            now = state[policy.name]
            serving = now.serving
            served = replayed.served(serving, week.number)
            record = {
                "week": week.number,
                "model_week": serving[0],
                "refit": serving[1],
                "model_age_days": (week.start - replayed.week(serving[0]).end).total_seconds() / 86400,
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
                    last_training_at=replayed.week(now.trained).end,
                    model_data_end=replayed.week(serving[0]).end,
                    requests=tuple(requests[policy.name]),
                )
                decision = decide(served.report, replayed.model(serving).reference, history, policy.config)
                if decision.action == "retrain":
                    requests[policy.name].append((week.end, decision.cause))
                retrain = decision.action == "retrain" and week.number < last
                record |= {
                    "action": decision.action,
                    "cause": decision.cause,
                    "reason": decision.reason,
                    "evidence": decision.evidence,
                }
                if retrain:  # the monitor's request is an operator-triggered train run: admission applies the guards again
                    admission = admit("operator_triggered", history, policy.config, requested_by="monitor")
                    retrain, record["admission"] = admission.action == "train", admission.reason
                record["drift"] = drift_numbers(served.report)
                said.append(f"{policy.name}: {decision.action}" + (f" ({decision.cause})" if decision.cause else ""))
            record["retrained"] = retrain
            if retrain:
                now.trained = week.number
                outcome, now.serving = _judge(replayed, policy, week.number, serving, last)
                record |= outcome
                if not outcome["promoted"]:
                    said[-1] += " → rejected"
            records[policy.name].append(record)
        if not quiet:
            say(
                f"week {week.number:>2} {week.start.date()}…{(week.end - timedelta(days=1)).date()}: "
                + " | ".join(said)
                + f"  {replayed.progress()}"
            )
    return records


def _judge(replayed: Replay, policy: Policy, number: int, champion: Key, last: int) -> tuple[dict, Key]:
    """A retrain at the end of week `number` as the loop judges it: the gate (if the policy has one),
    then the refit and its guard (if it refits). Returns the record's outcome fields and the model
    that serves next. The call is scored on the following weeks (`FOLLOWING_WEEKS`), the candidate
    (the model the loop would serve) against the champion, whichever the gate chose."""
    outcome: dict = {"promoted": True}
    if policy.gate is not None:
        d = replayed.gate(number, champion, policy.gate)
        outcome = {
            "promoted": d.promote,
            "gate": {
                "champion": list(champion),
                "delta": d.delta,
                "interval": list(d.interval) if d.interval else None,
                "broken": d.broken,
                "reason": d.reason,
            },
        }
    candidate: Key = (number, policy.refit)
    if policy.refit and outcome["promoted"]:
        outcome["refit_guard"] = replayed.refit_guard(number)
        candidate = candidate if outcome["refit_guard"] else (number, False)
    following = range(number + 1, min(number + FOLLOWING_WEEKS, last) + 1)
    outcome["following"] = {
        "weeks": list(following),
        "gain": _gain(replayed, candidate, champion, following),
        "next_week_gain": _gain(replayed, candidate, champion, following[:1]),
    }
    return outcome, candidate if outcome["promoted"] else champion


def _gain(replayed: Replay, candidate: Key, champion: Key, weeks: range) -> float | None:
    """The candidate's mean served ROC AUC over `weeks` less the champion's (None: no week scored)."""
    new = mean([replayed.served(candidate, n).roc_auc for n in weeks])
    old = mean([replayed.served(champion, n).roc_auc for n in weeks])
    return None if new is None or old is None else new - old


def drift_numbers(report: dict, top: int = 3) -> dict:
    """The report's headline drift numbers: prediction drift, the most drifted features, the labels."""
    features = sorted(report.get("features", {}).items(), key=lambda kv: -kv[1].get("psi", 0.0))
    return {
        "prediction": {k: v for k, v in report.get("prediction", {}).items() if isinstance(v, int | float)},
        "top_features_psi": {name: f.get("psi") for name, f in features[:top]},
        "labels": report.get("labels", {}),
    }
