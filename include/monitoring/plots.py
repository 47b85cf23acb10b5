"""The monitor's plot: what drifted, how live performance moves, and the most drifted features."""

from __future__ import annotations

import numpy as np


def drift_figure(profile: dict, report: dict, usecase, top: int = 6, auc_history=(), reference_auc=None):
    """PSI per feature; live ROC AUC over the monitored windows (`auc_history`: (window end,
    AUC, model version) tuples) against the model's evaluation AUC; and reference vs current bin
    shares of the most drifted features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    psis = sorted(((k, v["psi"]) for k, v in report["features"].items()), key=lambda kv: kv[1])
    worst = [k for k, _ in psis[::-1] if k not in getattr(usecase, "drift_exempt", ())][:top]
    fig, axes = plt.subplots(1 + (len(worst) + 2) // 3, 3, figsize=(13, 3.2 * (1 + (len(worst) + 2) // 3)))
    ax = plt.subplot2grid((1 + (len(worst) + 2) // 3, 3), (0, 0), colspan=2, fig=fig)
    exempt = set(getattr(usecase, "drift_exempt", ()))
    colours = ["#aaaaaa" if k in exempt else "#c0392b" if v > 0.25 else "#3b75af" for k, v in psis]
    ax.barh([f"{k} (exempt)" if k in exempt else k for k, _ in psis], [v for _, v in psis], color=colours)
    ax.axvline(0.25, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("PSI against the training reference (dashed: 0.25)")
    ax.set_title(f"Drift of {report['window'][0][:10]} … {report['window'][1][:10]} ({report['n']:,} predictions)")
    ax = plt.subplot2grid((1 + (len(worst) + 2) // 3, 3), (0, 2), fig=fig)
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
    ax.set_title("ROC AUC over time (labels joined)")
    if points or reference_auc is not None:
        ax.legend(fontsize=7)
    for i, name in enumerate(worst):
        ax = axes.flat[3 + i]
        ref = np.asarray(profile["features"][name]["counts"], dtype="float64")
        cur = np.asarray(report["features"][name]["counts"], dtype="float64")
        x = np.arange(len(ref))
        ax.bar(x - 0.2, ref / max(ref.sum(), 1), 0.4, label="reference", color="#3b75af")
        ax.bar(x + 0.2, cur / max(cur.sum(), 1), 0.4, label="current", color="#e67e22")
        ax.set_title(f"{name}: PSI {report['features'][name]['psi']:.2f}")
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
