"""A model card per registered version: what it is for, what it learnt from, how good it is and how
sure we are, what the gate made of it and what it cannot do.

`model_card` is a pure function of what the registry and the version's run record; `write_model_card`
logs it as the run's `model_card.md` and as the version's description (what MLflow's UI shows on the
version page), and is called when the version is registered and again when the gate (or the refit's
guard) has decided, so the card always carries the decision. The plots it shows are the run's
`plots/calibration.png` (reliability on the held-out rows) and `plots/feature_importance.png`.
"""

from __future__ import annotations

import math

from include.alerting.alerts import mlflow_artifact_link
from include.model.stats import hanley_mcneil_se, z_value
from include.usecases import UseCase

CARD_ARTIFACT = "model_card.md"
CALIBRATION_PLOT = "plots/calibration.png"
IMPORTANCE_PLOT = "plots/feature_importance.png"

LIMITATIONS = (
    "One held-out week cannot rank two recent models: on 2013 its difference between two sound weekly "
    "models has a standard deviation of about 0.011 ROC AUC, beyond what its rows explain; the gate "
    "rejects only what is worse beyond its margin with confidence, or broken.",
    "Served quality falls with the model's age (on 2013 about 0.005 ROC AUC a week); the loop retrains "
    "on a schedule or a maximum age for that reason.",
    "The ROC AUC estimated without labels (CBPE) has run 0.04–0.07 off on labelled windows; read it "
    "with the bias the monitor records beside it.",
)


def auc_interval(auc: float | None, n: float | None, positive_rate: float | None) -> tuple[float, float] | None:
    """A 95% interval of a ROC AUC from its class counts (Hanley–McNeil), or None."""
    if auc is None or not n or positive_rate is None or auc != auc:
        return None
    positives = round(n * positive_rate)
    se, z = hanley_mcneil_se(auc, positives, round(n) - positives), z_value(0.95)
    return None if se != se else (max(auc - z * se, 0.0), min(auc + z * se, 1.0))


def model_card(
    usecase: UseCase,
    model_name: str,
    version: str,
    tags: dict,
    params: dict,
    metrics: dict,
    lineage: dict,
    slices: dict,
    links: dict[str, str | None] | None = None,
) -> str:
    """The card as Markdown. `tags`: the version's; `params`, `metrics`: its run's; `lineage`: the
    run's partitions; `slices`: per-slice metrics of the held-out rows; `links`: URLs of the plots."""
    links = links or {}
    refit_of = tags.get("loop.refit_of")
    lines = [f"# {model_name} v{version}", ""]
    lines += ["## Intended use", "", usecase.description or usecase.name, ""]
    lines += [
        f"Trained by the continuous-training loop ({tags.get('airflow.dag_id', 'train')} run `{tags.get('airflow.dag_run_id', '?')}`, "
        f"commit `{tags.get('loop.git_commit', '?')[:12]}`), because: {tags.get('loop.reason', '(none given)')}.",
        "",
    ]
    if refit_of:
        lines += [
            f"A refit of v{refit_of}: the same configuration on the whole window, the held-out week included. "
            f"Its evaluation below is v{refit_of}'s, on rows this version has seen.",
            "",
        ]
    lines += [
        "## Data",
        "",
        f"Window: {tags.get('loop.data_window', '?')}; partitions digest `{tags.get('loop.partitions_sha256', '?')}`.",
        "",
    ]
    lines += ["| split | partition | rows validated | sha256 |", "|---|---|---:|---|"]
    for split in ("train", "eval"):
        for r in lineage.get(split, []):
            lines.append(
                f"| {split} | {r['partition']} | {r.get('rows_validated', '?')} | `{(r.get('validated_sha256') or '?')[:16]}…` |"
            )
    lines += ["", "## Features", "", ", ".join(f"`{f}`" for f in usecase.features), ""]
    lines += ["## Metrics on the held-out rows", ""]
    auc = metrics.get("eval_roc_auc")
    interval = auc_interval(auc, metrics.get("eval_n"), metrics.get("eval_positive_rate"))
    if auc is not None:
        ci = f" (95% CI {interval[0]:.4f}…{interval[1]:.4f})" if interval else ""
        lines.append(f"- ROC AUC {auc:.4f}{ci}")
    for key, label in (("pr_auc", "PR AUC"), ("log_loss", "log loss"), ("precision", "precision"), ("recall", "recall")):
        if f"eval_{key}" in metrics:
            lines.append(f"- {label} {metrics[f'eval_{key}']:.4f}")
    lines.append(f"- {params.get('n_eval_rows', '?')} held-out rows, {params.get('n_train_rows', '?')} training rows")
    if slices:
        lines += ["", "| slice | rows | ROC AUC | 95% CI |", "|---|---:|---:|---|"]
        for key, m in sorted(slices.items()):
            ci = auc_interval(m.get("roc_auc"), m.get("n"), m.get("positive_rate"))
            value = m.get("roc_auc")
            shown = "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
            lines.append(f"| {key} | {m.get('n', 0):.0f} | {shown} | {'–' if ci is None else f'{ci[0]:.3f}…{ci[1]:.3f}'} |")
    lines += ["", "## Calibration and attributions", ""]
    for title, key in (("Reliability on the held-out rows", "calibration"), ("Feature importance (gain)", "importance")):
        lines.append(
            f"![{title}]({links[key]})"
            if links.get(key)
            else f"- {title}: the run's `{CALIBRATION_PLOT if key == 'calibration' else IMPORTANCE_PLOT}`"
        )
    lines += ["", "## Gate decision", ""]
    decision = tags.get("gate.decision")
    if decision:
        against = f" against champion v{tags['gate.champion_version']}" if tags.get("gate.champion_version") else ""
        lines.append(f"**{decision}**{against}: {tags.get('gate.reason', '')}")
        if tags.get("refit.version"):
            lines.append(f"\nServed as its refit, v{tags['refit.version']} (guard {tags.get('refit.guard', 'pending')}).")
    else:
        lines.append("Pending: the champion gate has not decided yet.")
    lines += ["", "## Known limitations", "", *(f"- {text}" for text in LIMITATIONS), ""]
    return "\n".join(lines)


def write_model_card(client, settings, usecase: UseCase, model_name: str, version: str) -> str:
    """Build the card of `version` from the registry and its run, log it as the run's
    `model_card.md` and set it as the version's description. Returns the card."""
    import mlflow

    from include.model.dataset import LINEAGE_ARTIFACT

    mv = client.get_model_version(model_name, version)
    run = client.get_run(mv.run_id)
    lineage = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{LINEAGE_ARTIFACT}")
    try:
        slices = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/evaluation/slices.json")
    except Exception:  # a refit judges no slice: its card shows none
        slices = {}
    links = {
        "calibration": mlflow_artifact_link(settings, mv.run_id, CALIBRATION_PLOT),
        "importance": mlflow_artifact_link(settings, mv.run_id, IMPORTANCE_PLOT),
    }
    card = model_card(
        usecase, model_name, str(version), mv.tags | run.data.tags, run.data.params, run.data.metrics, lineage, slices, links
    )
    client.log_text(mv.run_id, card, CARD_ARTIFACT)
    client.update_model_version(model_name, version, description=card)
    return card
