"""The model card as a pure function of what the registry and the run record."""

from __future__ import annotations

import pytest

from include.model.card import auc_interval, model_card
from include.model.stats import hanley_mcneil_se
from include.usecases import get_usecase

TAGS = {
    "airflow.dag_id": "train",
    "airflow.dag_run_id": "monitor__v2__2013-02-12",
    "loop.git_commit": "0123456789abcdef",
    "loop.reason": "monitor: drift",
    "loop.data_window": "2013-01-01T05:00:00+00:00 … 2013-02-26T05:00:00+00:00",
    "loop.partitions_sha256": "ab" * 32,
}
LINEAGE = {
    "train": [{"partition": "dt=2013-01-01T0500Z", "rows_validated": 6000, "validated_sha256": "cd" * 32}],
    "eval": [{"partition": "dt=2013-02-19T0500Z", "rows_validated": 6100, "validated_sha256": "ef" * 32}],
}
METRICS = {"eval_roc_auc": 0.70, "eval_n": 6000.0, "eval_positive_rate": 0.2, "eval_pr_auc": 0.41, "eval_log_loss": 0.52}
SLICES = {
    "carrier=AA": {"roc_auc": 0.66, "n": 600.0, "positive_rate": 0.25},
    "carrier=XX": {"roc_auc": float("nan"), "n": 3.0, "positive_rate": 0.0},
}


def test_the_auc_interval_is_hanley_and_mcneils():
    low, high = auc_interval(0.70, 6000, 0.2)
    se = hanley_mcneil_se(0.70, 1200, 4800)
    assert (low, high) == pytest.approx((0.70 - 1.959964 * se, 0.70 + 1.959964 * se), rel=1e-6)
    assert auc_interval(0.7, 10, 0.0) is None and auc_interval(None, 100, 0.2) is None


def test_a_card_before_the_gate_has_use_data_features_metrics_with_intervals_and_limitations():
    flights = get_usecase("flights")
    card = model_card(flights, "flights-delay", "3", TAGS, {"n_eval_rows": "6000", "n_train_rows": "40000"}, METRICS, LINEAGE, SLICES,
                      {"calibration": "http://mlflow/get-artifact?path=plots%2Fcalibration.png"})  # fmt: skip
    assert card.startswith("# flights-delay v3\n") and flights.description in card
    assert "because: monitor: drift" in card and "`0123456789ab`" in card
    assert "| train | dt=2013-01-01T0500Z | 6000 | `cdcdcdcdcdcdcdcd…` |" in card and "| eval | dt=2013-02-19T0500Z |" in card
    assert all(f"`{f}`" in card for f in flights.features)
    low, high = auc_interval(0.70, 6000, 0.2)
    assert f"- ROC AUC 0.7000 (95% CI {low:.4f}…{high:.4f})" in card
    aa_low, aa_high = auc_interval(0.66, 600, 0.25)
    assert f"| carrier=AA | 600 | 0.6600 | {aa_low:.3f}…{aa_high:.3f} |" in card and "| carrier=XX | 3 | – | – |" in card
    assert "![Reliability on the held-out rows](http://mlflow/get-artifact?path=plots%2Fcalibration.png)" in card
    assert "Pending: the champion gate has not decided yet." in card and "## Known limitations" in card


def test_a_card_after_the_gate_carries_its_decision_and_a_refits_card_says_what_it_refits():
    flights = get_usecase("flights")
    decided = TAGS | {"gate.decision": "promote", "gate.champion_version": "2", "gate.reason": "ROC AUC 0.70 vs 0.69 (Δ +0.010)",
                      "refit.version": "4", "refit.guard": "passed"}  # fmt: skip
    card = model_card(flights, "flights-delay", "3", decided, {}, METRICS, LINEAGE, SLICES)
    assert (
        "**promote** against champion v2: ROC AUC 0.70 vs 0.69 (Δ +0.010)" in card
        and "Served as its refit, v4 (guard passed)." in card
    )
    refit = model_card(flights, "flights-delay", "4", TAGS | {"loop.refit_of": "3"}, {}, METRICS, LINEAGE, {})
    assert "A refit of v3: the same configuration on the whole window" in refit and "| slice |" not in refit
