"""A policy's results from its weekly records, and the sweep of the default policy.

With `--sweep` (on in `make backtest`) the default policy is also replayed over a grid of drift
shares and maximum model ages, the other knobs at their settings, each setting scored over the year
and over each half of it: the table a team chooses its own defaults from (results.json "sweep",
results.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from datetime import timedelta

from include.backtest.figures import mean, say
from include.backtest.policies import WRONG, Policy, replay_policies
from include.backtest.replay import Replay
from include.monitoring.policy import PolicyConfig, signals

CBPE_TOLERANCE = 0.03
"""A CBPE estimate hits when it is this close to the realised ROC AUC."""
SWEEP_SHARES = (0.15, 0.2, 0.25, 0.3, 0.4, None)
"""`--sweep`: the attribution rule's drift shares tried (None: drift never asks)."""
SWEEP_AGES = (None, 3, 4, 5, 6, 8)
"""`--sweep`: the maximum model ages tried, in weeks (None: no age limit)."""


def summarize(policy: Policy, records: list[dict], max_age: timedelta | None = None) -> dict:
    """A policy's results from its weekly records. `max_age`: the age beyond which a served week
    counts as served by a stale model (default: the policy's own maximum age)."""
    aucs = [r["roc_auc"] for r in records]
    losses = [r["log_loss"] for r in records]
    retrained = [r["week"] for r in records if r["retrained"]]
    promoted = [r["week"] for r in records if r["retrained"] and r.get("promoted", True)]  # without a gate every retrain serves
    rejected = [r for r in records if r["retrained"] and not r.get("promoted", True)]
    limit = (policy.config and policy.config.max_model_age) or max_age
    limit_days = None if limit is None else limit.total_seconds() / 86400
    scored = [(r["cbpe_roc_auc"], r["roc_auc"]) for r in records if r["roc_auc"] is not None and r["cbpe_roc_auc"] is not None]
    hits = [abs(est - real) <= CBPE_TOLERANCE for est, real in scored]
    out = {
        "name": policy.name,
        "every": policy.every,
        "config": asdict(policy.config) if policy.config else None,
        "retrains": {"count": len(retrained), "weeks": retrained},
        "models": 1 + len(promoted),
        "promotions": {"count": len(promoted), "weeks": promoted},
        "rejections": {
            "count": len(rejected),
            "weeks": [r["week"] for r in rejected],
            # the challenger turned down served the following weeks better by WRONG or more (the loop's candidate: its refit)
            "wrong": [r["week"] for r in rejected if (r["following"]["gain"] or 0) >= WRONG],
        },
        "wrong_promotions": [
            r["week"]
            for r in records
            if r["retrained"] and "gate" in r and r["promoted"] and (r["following"]["gain"] or 0) <= -WRONG
        ],
        "refit_guard_failures": [r["week"] for r in records if r.get("refit_guard") is False],
        "stale_weeks": {
            "max_age_days": limit_days,
            "count": 0 if limit_days is None else sum(r.get("model_age_days", 0) >= limit_days for r in records),
        },
        "roc_auc": {"mean": mean(aucs), "weeks": aucs},
        "log_loss": {"mean": mean(losses), "weeks": losses},
        "cbpe": {
            "tolerance": CBPE_TOLERANCE,
            "hit_rate": sum(hits) / len(hits) if hits else None,
            "labelled_weeks": len(hits),
            "estimated_roc_auc": [r["cbpe_roc_auc"] for r in records],
            "realised_roc_auc": aucs,
        },
        "alerts": None,
        "weeks": records,
    }
    gated = [r for r in records if r["retrained"] and "gate" in r and r["gate"]["delta"] is not None]
    if gated:
        pairs = [
            (r["gate"]["delta"], r["following"]["next_week_gain"]) for r in gated if r["following"]["next_week_gain"] is not None
        ]
        out["gate_calls"] = {
            "count": len(gated),
            # does the held-out week's Δ (challenger − champion) predict the next week's?
            "correlation_with_next_week": _correlation(pairs),
            "calls": [{"week": r["week"], "promoted": r["promoted"], **r["gate"], "following": r["following"]} for r in gated],
        }
    if policy.config is not None:
        alerts = [r for r in records if signals(r["cause"])]  # a retrain for age alone alerts no one
        causes: dict[str, int] = {}
        for r in records:
            if r["cause"]:
                causes[r["cause"]] = causes.get(r["cause"], 0) + 1
        out["alerts"] = {"count": len(alerts), "weeks": [r["week"] for r in alerts], "causes": causes}
    return out


def _correlation(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    import numpy as np

    a, b = np.array(pairs, dtype=float).T
    return None if a.std() == 0 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1])


def sweep(replayed: Replay, first: int, weekly: list[dict], default: PolicyConfig) -> dict:
    """The `default` policy replayed with every drift share and maximum model age of the grid, its
    other knobs as they are: per setting its retrains and mean ROC AUC over the year and over each
    half of the served weeks, next to weekly retraining's (`weekly`: its records). A team chooses
    its defaults from this on its own history; the halves show how much of a difference is luck."""
    served = [r["week"] for r in weekly]
    split = served[len(served) // 2 - 1]  # the first half ends with this week

    def halves(records: list[dict]) -> list[dict]:
        out = []
        for part in ([r for r in records if r["week"] <= split], [r for r in records if r["week"] > split]):
            out.append(
                {
                    "weeks": [part[0]["week"], part[-1]["week"]],
                    "retrains": sum(r["retrained"] for r in part),
                    "roc_auc": mean([r["roc_auc"] for r in part]),
                }
            )
        return out

    grid = []
    for share in SWEEP_SHARES:
        for age in SWEEP_AGES:
            config = replace(
                default,
                drift_share=math.inf if share is None else share,
                max_model_age=None if age is None else timedelta(weeks=age),
            )
            records = replay_policies(replayed, [Policy("sweep", config=config)], first, quiet=True)["sweep"]
            grid.append(
                {
                    "drift_share": share,
                    "max_model_age_weeks": age,
                    "retrains": sum(r["retrained"] for r in records),
                    "roc_auc": mean([r["roc_auc"] for r in records]),
                    "halves": halves(records),
                    "default": share == default.drift_share and age is not None and timedelta(weeks=age) == default.max_model_age,
                }
            )
        say(f"  sweep: drift share {share if share is not None else 'off'} done {replayed.progress()}")
    return {"weekly": {"roc_auc": mean([r["roc_auc"] for r in weekly]), "halves": halves(weekly)}, "grid": grid}
