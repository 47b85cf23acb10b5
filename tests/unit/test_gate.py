"""The champion gate's decisions (include/evaluate.py: decide)."""

import math

import pytest

from include.model.gate import GateConfig, decide
from include.model.metrics import compute_metrics

CFG = GateConfig(metric="roc_auc", margin=0.01, slice_tolerance=0.03, min_slice_rows=100, floor=0.6)


def m(auc, n=1000):
    return {"roc_auc": auc, "n": n}


def test_first_model_needs_the_floor():
    assert decide(m(0.65), None, CFG).promote
    d = decide(m(0.55), None, CFG)
    assert not d.promote and "below the floor" in d.reason


def test_challenger_must_beat_champion_by_the_margin():
    assert decide(m(0.715), m(0.70), CFG).promote
    d = decide(m(0.705), m(0.70), CFG)
    assert not d.promote and "under the margin" in d.reason
    assert d.delta == pytest.approx(0.005)
    assert not decide(m(0.69), m(0.70), CFG).promote


def test_a_slice_regression_blocks_promotion_even_with_an_overall_gain():
    ch_slices = {"carrier=AA": m(0.70), "carrier=UA": m(0.60)}
    cp_slices = {"carrier=AA": m(0.69), "carrier=UA": m(0.66)}
    d = decide(m(0.75), m(0.70), CFG, ch_slices, cp_slices)
    assert not d.promote
    assert d.slice_regressions == {"carrier=UA": pytest.approx(-0.06)}
    assert d.worst_slice == "carrier=UA"
    assert "carrier=UA" in d.reason


def test_small_slices_are_not_gated():
    ch_slices = {"carrier=HA": m(0.40, n=20)}
    cp_slices = {"carrier=HA": m(0.80, n=20)}
    assert decide(m(0.75), m(0.70), CFG, ch_slices, cp_slices).promote


def test_slice_within_tolerance_passes():
    d = decide(m(0.75), m(0.70), CFG, {"origin=JFK": m(0.68)}, {"origin=JFK": m(0.70)})
    assert d.promote and d.worst_slice_delta == pytest.approx(-0.02)


def test_undefined_metric_is_never_promoted():
    d = decide(m(math.nan), None, CFG)
    assert not d.promote and "undefined" in d.reason


def test_gate_metric_must_be_higher_is_better():
    with pytest.raises(ValueError, match="log_loss"):
        GateConfig(metric="log_loss")


def test_metrics_of_a_perfect_and_a_useless_score():
    y = [0, 0, 1, 1]
    perfect = compute_metrics(y, [0.1, 0.2, 0.8, 0.9], threshold=0.5)
    assert perfect["roc_auc"] == 1.0 and perfect["precision"] == 1.0 and perfect["recall"] == 1.0
    flat = compute_metrics(y, [0.5, 0.5, 0.5, 0.5], threshold=0.6)
    assert flat["roc_auc"] == 0.5 and flat["recall"] == 0.0
    assert math.isnan(compute_metrics([1, 1], [0.2, 0.9], 0.5)["roc_auc"])
