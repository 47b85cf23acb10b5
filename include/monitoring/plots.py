"""The monitor's plot: what drifted and how much of the model it carries, how live performance moves
(realised and estimated), and the features whose drift weighs most."""

from __future__ import annotations

from datetime import datetime

import numpy as np


def drift_figure(profile: dict, report: dict, usecase, top: int = 6, auc_history=(), reference_auc=None):
    """PSI per feature against its noise threshold, next to the feature's share of the model's
    attributions (drift matters where the model leans); live ROC AUC over the monitored windows
    (`auc_history`: (window end, AUC, model version) tuples) against the model's evaluation AUC,
    with this window's estimate from its scores; reference vs current bin shares of the features
    whose drift weighs most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = report["features"]
    exempt = set(getattr(usecase, "drift_exempt", ()))
    # Relative to each feature's noise threshold where the report has one (else to the old 0.25).
    ratio = {k: v["psi"] / max(v.get("threshold", 0.25), 1e-6) for k, v in features.items()}
    share = {k: v.get("share", 0.0) for k, v in features.items()}
    order = sorted(features, key=lambda k: (share[k], ratio[k]))  # barh draws bottom-up: most used on top
    worst = sorted((k for k in features if k not in exempt), key=lambda k: -ratio[k] * max(share[k], 1e-3))[:top]
    rows = 1 + (len(worst) + 2) // 3
    fig, axes = plt.subplots(rows, 3, figsize=(13, max(3.2, 0.22 * len(order) + 1.2) + 3.2 * (rows - 1)))
    labels = [f"{k} (exempt)" if k in exempt else k for k in order]
    ax = plt.subplot2grid((rows, 3), (0, 0), fig=fig)
    colours = ["#aaaaaa" if k in exempt else "#c0392b" if ratio[k] > 1 else "#3b75af" for k in order]
    ax.barh(labels, [ratio[k] for k in order], color=colours)
    ax.axvline(1, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("PSI ÷ its noise threshold (red: beyond)")
    days = f", {report['days']} days" if report.get("days") else ""
    ax.set_title(
        f"Drift of {report['window'][0][:10]} … {report['window'][1][:10]} ({report['n']:,} predictions{days})", fontsize=9
    )
    ax = plt.subplot2grid((rows, 3), (0, 1), fig=fig)
    ax.barh(labels, [share[k] for k in order], color=["#c0392b" if c == "#c0392b" else "#7f8c8d" for c in colours])
    ax.set_yticklabels([])
    drifted = sum(share[k] for k in order if ratio[k] > 1 and k not in exempt)
    ax.set_xlabel("share of the model's attributions (mean |SHAP|)")
    ax.set_title(f"What the model leans on: {drifted:.0%} of it drifted", fontsize=9)
    ax = plt.subplot2grid((rows, 3), (0, 2), fig=fig)
    points = sorted(auc_history)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#3b75af", label="live ROC AUC")
        for when, auc, version in points:
            ax.annotate(f"v{version}", (when, auc), fontsize=7, textcoords="offset points", xytext=(0, 4))
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    else:
        ax.text(0.5, 0.5, "no labelled window yet", ha="center", va="center", transform=ax.transAxes)
    if reference_auc is not None:
        ax.axhline(reference_auc, color="grey", linestyle="--", linewidth=1, label="evaluation AUC")
    estimate = report.get("estimated", {}).get("roc_auc")
    if estimate is not None:
        when = datetime.fromisoformat(report["window"][1]) if points else 0.5
        ax.plot([when], [estimate], marker="D", color="#e67e22", linestyle="none", label="estimated, this window (CBPE)")
    ax.set_title("ROC AUC over time (labels joined)")
    if points or reference_auc is not None or estimate is not None:
        ax.legend(fontsize=7)
    for i, name in enumerate(worst):
        ax = axes.flat[3 + i]
        ref = np.asarray(profile["features"][name]["counts"], dtype="float64")
        cur = np.asarray(report["features"][name]["counts"], dtype="float64")
        x = np.arange(len(ref))
        ax.bar(x - 0.2, ref / max(ref.sum(), 1), 0.4, label="reference", color="#3b75af")
        ax.bar(x + 0.2, cur / max(cur.sum(), 1), 0.4, label="current", color="#e67e22")
        f = report["features"][name]
        ax.set_title(
            f"{name}: PSI {f['psi']:.2f} (noise {f.get('threshold', 0.25):.2f}), {f.get('share', 0):.0%} of the model", fontsize=8
        )
        ax.set_xticks([])
        ax.set_xlabel("reference bins (last: missing)")
        if i == 0:
            ax.legend()
    for ax in axes.flat[3 + len(worst) :]:
        ax.axis("off")
    for ax in axes.flat[:3]:
        ax.axis("off")
    fig.tight_layout()
    return fig
