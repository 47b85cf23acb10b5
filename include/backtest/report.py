"""What a backtest writes: the comparison table and the sweep's (results.md), the plot of the served
quality (served_quality.png) and everything as JSON (results.json)."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta
from pathlib import Path

from include.backtest.figures import fmt
from include.backtest.policies import FOLLOWING_WEEKS, WRONG
from include.backtest.summary import CBPE_TOLERANCE, SWEEP_AGES, SWEEP_SHARES


def write_results(results: dict, out_dir: Path) -> str:
    """results.json and results.md (the comparison table, and the sweep's if there is one) in
    `out_dir`; returns the tables."""
    table = markdown_table(results) + (f"\n{sweep_table(results['sweep'])}" if "sweep" in results else "")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    (out_dir / "results.md").write_text(table)
    return table


def markdown_table(results: dict) -> str:
    """The comparison table, with CBPE's hit rate and the run's extent below it."""
    lines = [
        "| policy | retrains | promotions | rejections (wrong) | mean ROC AUC | mean log loss | alerts | weeks served past the max age |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in results["policies"]:
        alerts = "–" if p["alerts"] is None else str(p["alerts"]["count"])
        rejections = p["rejections"]
        rejected = f"{rejections['count']} ({len(rejections['wrong'])})" if rejections["count"] else "0"
        lines.append(
            f"| {p['name']} | {p['retrains']['count']} | {p['promotions']['count']} | {rejected} | {fmt(p['roc_auc']['mean'])} "
            f"| {fmt(p['log_loss']['mean'])} | {alerts} | {_stale(p['stale_weeks'])} |"
        )
    for p in results["policies"]:
        if "gate_calls" in p:
            calls, wrong = p["gate_calls"], p["rejections"]["wrong"]
            lines.append(
                f"\nGate of '{p['name']}': {calls['count']} calls, {p['rejections']['count']} rejection(s) "
                f"({len(wrong)} wrong: the challenger served the next {FOLLOWING_WEEKS} weeks ≥ {WRONG} better"
                + (f", weeks {', '.join(map(str, wrong))}" if wrong else "")
                + f"), {len(p['wrong_promotions'])} promotion(s) of a challenger ≥ {WRONG} worse; the held-out week's Δ "
                f"correlates {fmt(calls['correlation_with_next_week'], '+.2f')} with the next week's."
            )
    default = next(p for p in results["policies"] if p["name"] == "default")
    cbpe = default["cbpe"]
    served = results["served_weeks"]
    lines += [
        "",
        f"{results['usecase']}: weeks {served[0]}…{served[-1]} served ({len(served)}), first model at the end of week "
        f"{results['settings']['first_model_week']}, {results['settings']['params']['window_weeks']}-week window; "
        f"{results['fits']['windows']} training windows and {results['fits']['refits']} refits "
        f"({results['fits']['from_cache']} from the cache) in "
        f"{results.get('runtime_seconds', 0):.0f} s.",
        f"CBPE (default policy): the estimate is within {CBPE_TOLERANCE} of the realised ROC AUC in "
        f"{fmt(cbpe['hit_rate'], '.0%')} of {cbpe['labelled_weeks']} labelled weeks.",
    ]
    return "\n".join(lines) + "\n"


def _stale(stale: dict) -> str:
    days = stale["max_age_days"]
    return "–" if days is None else f"{stale['count']} (≥ {days:.0f} d)"


def sweep_table(result: dict) -> str:
    """The sweep as a table: one row per drift share, one column per maximum age."""
    weekly = result["weekly"]
    h1, h2 = weekly["halves"]
    lines = [
        f"Sweep of the default policy (mean ROC AUC / retrains; halves: weeks {h1['weeks'][0]}…{h1['weeks'][1]} | "
        f"{h2['weeks'][0]}…{h2['weeks'][1]}). Weekly retraining: {fmt(weekly['roc_auc'])} "
        f"({fmt(h1['roc_auc'])} | {fmt(h2['roc_auc'])}); **bold**: the defaults.",
        "",
        "| drift share \\ max age | " + " | ".join("none" if a is None else f"{a} weeks" for a in SWEEP_AGES) + " |",
        "|---|" + "---:|" * len(SWEEP_AGES),
    ]
    for share in SWEEP_SHARES:
        cells = []
        for age in SWEEP_AGES:
            g = next(g for g in result["grid"] if g["drift_share"] == share and g["max_model_age_weeks"] == age)
            a, b = g["halves"]
            cell = f"{fmt(g['roc_auc'])} / {g['retrains']} ({fmt(a['roc_auc'], '.3f')} \\| {fmt(b['roc_auc'], '.3f')})"
            cells.append(f"**{cell}**" if g["default"] else cell)
        lines.append(f"| {'off' if share is None else share} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_served_quality(results: dict, path: Path) -> None:
    """Served ROC AUC per week per policy, each policy's retrains as ticks in a strip below, and the
    default policy's CBPE estimate against its realised ROC AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weeks = {w["week"]: w for w in results["weeks"]}
    served = results["served_weeks"]
    x = [datetime.fromisoformat(weeks[n]["start"]) for n in served]
    policies = results["policies"]
    colours = plt.get_cmap("tab10").colors

    def nan(values):
        return [math.nan if v is None else v for v in values]

    fig = plt.figure(figsize=(12, 9))
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 0.3 * len(policies) + 0.3, 2], hspace=0.3)
    ax = fig.add_subplot(grid[0])
    for i, p in enumerate(policies):
        ax.plot(
            x,
            nan(p["roc_auc"]["weeks"]),
            marker=".",
            linewidth=1.2,
            color=colours[i % 10],
            label=f"{p['name']} (mean {fmt(p['roc_auc']['mean'])})",
        )
    ax.set_ylabel("served ROC AUC")
    ax.set_title(f"{results['usecase']}: the served model's ROC AUC on each week's labelled rows, per retrain policy")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)

    strip = fig.add_subplot(grid[1], sharex=ax)
    for i, p in enumerate(policies):
        # a retrain after week w serves from week w+1: tick it where that week starts
        ticks = [datetime.fromisoformat(weeks[n]["end"]) for n in p["retrains"]["weeks"]]
        strip.plot(ticks, [i] * len(ticks), linestyle="", marker="|", markersize=11, color=colours[i % 10])
        if p["alerts"]:
            quiet = [datetime.fromisoformat(weeks[n]["end"]) for n in p["alerts"]["weeks"] if n not in p["retrains"]["weeks"]]
            strip.plot(quiet, [i] * len(quiet), linestyle="", marker=".", markersize=4, color="grey")
    strip.set_yticks(range(len(policies)), [p["name"] for p in policies], fontsize=8)
    strip.set_ylim(len(policies) - 0.5, -0.5)
    strip.set_title("retrains (ticks; grey dots: alerts that did not retrain)", fontsize=9)
    strip.tick_params(axis="x", labelbottom=False)

    cb = fig.add_subplot(grid[2], sharex=ax)
    default = next(p for p in policies if p["name"] == "default")
    realised, estimated = nan(default["cbpe"]["realised_roc_auc"]), nan(default["cbpe"]["estimated_roc_auc"])
    cb.fill_between(
        x,
        [r - CBPE_TOLERANCE for r in realised],
        [r + CBPE_TOLERANCE for r in realised],
        color="#3b75af",
        alpha=0.15,
        label=f"realised ± {CBPE_TOLERANCE}",
    )
    cb.plot(x, realised, marker=".", color="#3b75af", label="realised ROC AUC")
    cb.plot(x, estimated, marker="x", linestyle="--", color="#c0392b", label="CBPE estimate (scores only)")
    cb.set_ylabel("ROC AUC")
    cb.set_title(
        f"default policy: CBPE's estimate vs the realised ROC AUC (within {CBPE_TOLERANCE}: {fmt(default['cbpe']['hit_rate'], '.0%')} of weeks)",
        fontsize=9,
    )
    cb.legend(fontsize=8)
    cb.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def json_ready(value):
    """JSON-ready: dates as ISO strings, durations and paths as strings, numpy scalars as numbers, NaN as None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_ready(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, timedelta):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
