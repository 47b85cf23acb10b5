"""The champion gate's statistics and decisions (include/model/stats.py, include/model/gate.py: decide)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import roc_auc_score

from include.model.gate import GateConfig, abandoned, coarse, decide, sanity, unreproduced
from include.model.metrics import compute_metrics, metric_value
from include.model.stats import compare, delong, hanley_mcneil_se

CFG = GateConfig(
    metric="roc_auc",
    margin=0.01,
    slice_margin=0.03,
    confidence=0.95,
    floor=0.6,
    ceiling=0.98,
    calibration_ratio=3.0,
    abandoned_share=0.1,
    resolution_ratio=0.1,
)


def rows(n=6000, seed=0, rate=0.25):
    """Labels and a latent signal the models see through their own noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    return rng, y, rng.normal(size=n) + 0.9 * y


def model(rng, signal, noise, shift=-1.3):
    """Scores of a model that sees `signal` through `noise` (more noise: a worse model)."""
    return 1 / (1 + np.exp(-(signal + rng.normal(size=len(signal)) * noise + shift)))


# --- the statistics ------------------------------------------------------------------------


def test_delong_matches_sklearn_and_a_paired_bootstrap_on_the_same_rows():
    rng, y, signal = rows(3000, seed=1)
    a, b = model(rng, signal, 0.8), model(rng, signal, 0.9)
    auc_a, auc_b, se = delong(y, a, b)
    assert auc_a == pytest.approx(roc_auc_score(y, a)) and auc_b == pytest.approx(roc_auc_score(y, b))
    boot = bootstrap(
        (y, a, b),
        lambda t, s1, s2: roc_auc_score(t, s1) - roc_auc_score(t, s2),
        paired=True,
        vectorized=False,
        n_resamples=400,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    assert se == pytest.approx(boot.standard_error, rel=0.15)
    c = compare(y, a, b)
    low, high = boot.confidence_interval
    assert c.method == "DeLong" and c.low == pytest.approx(low, abs=0.006) and c.high == pytest.approx(high, abs=0.006)


def test_the_paired_difference_is_tighter_than_either_auc_alone():
    """What both models share cancels out: the reason to compare on the same rows."""
    rng, y, signal = rows(3000, seed=2)
    shared = signal + rng.normal(size=len(y)) * 0.8
    a, b = shared + rng.normal(size=len(y)) * 0.3, shared + rng.normal(size=len(y)) * 0.32
    _, _, paired = delong(y, a, b)
    _, _, alone = delong(y, a, np.zeros(len(y)))  # against a constant: the AUC's own standard error
    assert paired < alone / 2


def test_the_bootstrap_compares_any_gate_metric_and_is_seeded():
    rng, y, signal = rows(2000, seed=3)
    a, b = model(rng, signal, 0.6), model(rng, signal, 1.5)
    c = compare(y, a, b, "pr_auc")
    assert c.method == "paired bootstrap" and c.delta == pytest.approx(
        metric_value("pr_auc", y, a, 0.5) - metric_value("pr_auc", y, b, 0.5)
    )
    assert 0 < c.low < c.delta < c.high
    assert compare(y, a, b, "pr_auc") == c


def test_one_class_leaves_the_comparison_undefined_and_bad_input_is_named():
    assert not compare([1, 1, 1], [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]).defined
    with pytest.raises(ValueError, match="same rows: 3, 2 and 3"):
        compare([0, 1, 1], [0.1, 0.5], [0.2, 0.3, 0.4])


# --- the decisions -------------------------------------------------------------------------


def test_first_model_needs_the_floor():
    rng, y, signal = rows()
    assert decide(y, model(rng, signal, 1.0), None, CFG).promote
    d = decide(y, model(rng, signal, 8.0), None, CFG)
    assert not d.promote and "below the floor" in d.reason


def test_a_known_better_and_a_known_worse_challenger():
    rng, y, signal = rows()
    champion = model(rng, signal, 1.0)
    better = decide(y, model(rng, signal, 0.7), champion, CFG)
    assert better.promote and better.delta > 0 and better.interval[0] > 0
    worse = decide(y, model(rng, signal, 2.0), champion, CFG)
    assert not worse.promote and worse.interval[1] < -CFG.margin
    assert "worse than the champion beyond the margin 0.010 with 95% confidence" in worse.reason
    assert "95% CI" in worse.reason and f"{worse.delta:+.3f}" in worse.reason


def sig(logit):
    return 1 / (1 + np.exp(-(logit - 1.3)))


def test_a_challenger_a_little_worse_within_the_noise_is_promoted():
    """Freshness wins unless there is evidence against it: a small loss the interval cannot
    separate from the margin is no reason to keep the older model."""
    rng, y, signal = rows()
    champion = signal + rng.normal(size=len(y))
    d = decide(y, sig(champion + rng.normal(size=len(y)) * 0.35), sig(champion), CFG)
    assert d.delta < 0 and d.interval[1] >= -CFG.margin and d.promote, d.reason


def frame(n, groups):
    return pd.DataFrame({"carrier": np.resize(groups, n)})


def six_carriers(seed, ua_noise):
    """24,000 rows over six carriers; the challenger sees the shared signal better than the
    champion everywhere but on UA, where it sees it through `ua_noise`."""
    rng, y, signal = rows(24000, seed=seed)
    shared = signal + rng.normal(size=len(y)) * 0.8
    slices = frame(len(y), ["AA", "UA", "DL", "B6", "EV", "WN"])
    champion, challenger = sig(shared + rng.normal(size=len(y)) * 0.6), sig(shared)
    ua = (slices["carrier"] == "UA").to_numpy()
    challenger[ua] = sig(shared[ua] + rng.normal(size=ua.sum()) * ua_noise)
    return y, challenger, champion, slices


def test_a_slice_clearly_worse_blocks_promotion_even_with_an_overall_gain():
    y, challenger, champion, slices = six_carriers(seed=1, ua_noise=2.0)
    d = decide(y, challenger, champion, CFG, slices)
    assert d.delta > 0 and not d.promote
    assert list(d.slice_regressions) == ["carrier=UA"] and d.worst_slice == "carrier=UA"
    assert "carrier=UA" in d.reason and "Bonferroni over 6" in d.reason
    ua = next(s for s in d.slices if s["slice"] == "carrier=UA")
    assert ua["high"] < -CFG.slice_margin and ua["confidence"] == pytest.approx(1 - 0.05 / 6)


def test_a_slice_drop_the_interval_cannot_separate_from_the_margin_passes():
    y, challenger, champion, slices = six_carriers(seed=1, ua_noise=1.0)
    d = decide(y, challenger, champion, CFG, slices)
    ua = next(s for s in d.slices if s["slice"] == "carrier=UA")
    assert ua["delta"] < 0 and ua["high"] >= -CFG.slice_margin and d.promote, d.reason
    assert d.worst_slice == "carrier=UA" and "worst carrier=UA" in d.reason


def test_the_slice_confidence_is_corrected_for_the_number_of_slices():
    rng, y, signal = rows(12000, seed=5)
    champion, challenger = model(rng, signal, 1.0), model(rng, signal, 1.1)
    few = decide(y, challenger, champion, CFG, frame(len(y), ["AA", "UA"]))
    many = decide(y, challenger, champion, CFG, frame(len(y), ["AA", "UA"]).assign(origin=np.resize(list("abcdefgh"), len(y))))
    assert [s["confidence"] for s in few.slices] == pytest.approx([1 - 0.05 / 2] * 2)
    assert [s["confidence"] for s in many.slices] == pytest.approx([1 - 0.05 / 10] * 10)
    aa_few = next(s for s in few.slices if s["slice"] == "carrier=AA")
    aa_many = next(s for s in many.slices if s["slice"] == "carrier=AA")
    assert (
        aa_many["delta"] == pytest.approx(aa_few["delta"]) and aa_many["high"] - aa_many["low"] > aa_few["high"] - aa_few["low"]
    )


def test_small_slices_are_reported_not_judged_and_the_size_comes_from_the_statistics():
    """No fixed row count: a slice is judged when its class counts can measure an AUC to within the
    slice margin (Hanley–McNeil). The same drop that blocks on a slice of 8,000 rows is reported,
    not judged, on a slice of 300; a handful of rows, where DeLong's variance collapses, never blocks."""
    for size, blocks in ((12, False), (300, False), (8000, True)):
        rng, y, signal = rows(20000, seed=6)
        groups = np.where(np.arange(len(y)) < size, "HA", "UA")
        slices = pd.DataFrame({"carrier": groups})
        shared = signal + rng.normal(size=len(y)) * 0.8
        champion, challenger = sig(shared + rng.normal(size=len(y)) * 0.3), sig(shared + rng.normal(size=len(y)) * 0.3)
        ha = groups == "HA"
        challenger[ha] = sig(shared[ha] + rng.normal(size=ha.sum()) * 2.0)
        d = decide(y, challenger, champion, CFG, slices)
        by = {s["slice"]: s for s in d.slices}
        assert by["carrier=UA"]["judged"] and by["carrier=HA"]["judged"] is blocks
        assert d.promote is not blocks, d.reason
        if size >= 300:
            assert by["carrier=HA"]["delta"] < -CFG.slice_margin, by["carrier=HA"]
        if not blocks:
            assert "1 of 2 too small to judge" in d.reason and "HA" not in d.reason


def test_the_judged_size_follows_hanley_and_mcneil():
    assert hanley_mcneil_se(0.7, 75, 225) > 0.03 > hanley_mcneil_se(0.7, 300, 900)
    assert hanley_mcneil_se(0.7, 2, 10) > 0.1 and math.isnan(hanley_mcneil_se(0.7, 0, 10))
    # against the spread of the AUC over many samples of that size
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(400):
        y = np.r_[np.ones(75), np.zeros(225)]
        aucs.append(roc_auc_score(y, rng.normal(size=300) + 0.74 * y))
    assert hanley_mcneil_se(float(np.mean(aucs)), 75, 225) == pytest.approx(np.std(aucs), rel=0.15)


def test_a_slice_with_one_class_is_left_out():
    rng, y, signal = rows(6000, seed=7)
    slices = frame(len(y), ["AA", "UA"])
    y = y.copy()
    y[(slices["carrier"] == "UA").to_numpy()] = 0
    d = decide(y, model(rng, signal, 0.9), model(rng, signal, 1.0), CFG, slices)
    assert [s["slice"] for s in d.slices] == ["carrier=AA"]


@pytest.mark.parametrize(
    "broken,found",
    [
        ("constant", "degenerate"),
        ("shuffled", "below the floor"),
        ("leak", "too good to be true"),
        ("miscalibrated", "off the observed positive rate"),
    ],
)
def test_a_broken_challenger_is_rejected_whatever_the_champion_does(broken, found):
    rng, y, signal = rows(6000, seed=8)
    fine = model(rng, signal, 1.0)
    scores = {
        "constant": np.full(len(y), y.mean()),
        "shuffled": rng.permutation(fine),
        "leak": np.clip(y * 0.8 + rng.random(len(y)) * 0.2, 0, 1),
        "miscalibrated": np.clip(fine * 5, 0, 1),
    }[broken]
    assert found in "; ".join(sanity(y, scores, metric_value("roc_auc", y, scores, 0.5), CFG))
    for champion in (None, model(rng, signal, 1.6)):  # first model, or a weak champion (over the floor) the leak would beat
        d = decide(y, scores, champion, CFG)
        assert not d.promote and found in d.reason and "broken" in d.reason


def test_a_hard_week_below_the_floor_for_both_models_is_judged_by_the_comparison():
    """On rows where the champion too scores under the floor (a blizzard week), the floor says
    nothing about the challenger: the paired comparison decides."""
    rng, y, signal = rows(6000, seed=10)
    weak = rng.normal(size=len(y)) + 0.3 * y  # little signal this week, for every model
    champion, fresh = sig(weak + rng.normal(size=len(y)) * 0.3), sig(weak + rng.normal(size=len(y)) * 0.25)
    d = decide(y, fresh, champion, CFG)
    assert d.champion < CFG.floor and d.challenger < CFG.floor and d.promote, d.reason
    assert sanity(y, fresh, d.challenger, CFG, d.champion) == []
    assert "below the floor" in sanity(y, fresh, d.challenger, CFG)[0]  # no champion: the floor holds
    sound = model(rng, signal, 0.3)
    broken = decide(y, rng.permutation(sound), sound, CFG)  # the champion clears the floor
    assert not broken.promote and "below the floor" in broken.reason


def test_a_challenger_that_drops_a_feature_the_champion_leaned_on_is_broken():
    rng, y, signal = rows(6000, seed=9)
    champion, challenger = model(rng, signal, 1.0), model(rng, signal, 0.9)  # better, by its scores
    leaned = {"dep_hour": 0.42, "carrier": 0.2, "wind_gust": 0.05}
    assert abandoned({"carrier": 0.6, "distance": 0.4}, leaned, CFG) == [
        "it never uses dep_hour, which carried 42% of the champion's gain (a column gone constant or empty upstream?)"
    ]
    assert abandoned({"dep_hour": 0.01, "carrier": 0.99}, leaned, CFG) == []  # used, however little; wind_gust: under the share
    d = decide(y, challenger, champion, CFG, gains=({"carrier": 1.0}, leaned))
    assert not d.promote and d.delta > 0 and "broken: it never uses dep_hour" in d.reason
    assert decide(y, challenger, champion, CFG, gains=(leaned, leaned)).promote


def test_a_model_cut_short_is_broken_by_the_resolution_of_its_scores():
    """One tree of depth 3 scores in at most 8 values where the champion's scores are all distinct:
    broken even when its metric is close (on 2013 one tree lost only 0.019 against the champion)."""
    rng, y, signal = rows(6000, seed=4)
    champion = model(rng, signal, 1.0)
    stump = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, 9)[1:-1])) / 8 * 0.5 + 0.05
    assert coarse(stump, champion, CFG) == [
        f"its scores take 8 distinct values where the champion's take {len(np.unique(champion))}: a model cut short?"
    ]
    d = decide(y, stump, champion, CFG)
    assert not d.promote and d.reason.startswith("broken: its scores take 8 distinct values")
    assert coarse(np.round(champion, 3), champion, CFG) == []  # scores to 0.001 keep more than a tenth of the values
    assert coarse(np.round(champion, 2), champion, CFG) != []  # to 0.01: 100 values, under a tenth of 6,000


def test_a_challenger_that_cannot_reproduce_its_own_evaluation_is_broken():
    """The gate rebuilds the challenger's held-out rows from the same partitions: a different metric
    than its training run recorded means the features are built differently now (a unit change)."""
    rng, y, signal = rows()
    champion, challenger = model(rng, signal, 1.0), model(rng, signal, 0.8)
    value = metric_value("roc_auc", y, challenger, 0.5)
    assert unreproduced(value, value, "ROC AUC") == [] and unreproduced(value, None, "ROC AUC") == []
    assert unreproduced(value, value + 5e-7, "ROC AUC") == []  # the same computation, to rounding
    (found,) = unreproduced(value, value + 0.02, "ROC AUC")
    assert f"ROC AUC {value:.4f} where its training run recorded {value + 0.02:.4f}" in found
    d = decide(y, challenger, champion, CFG, recorded=value + 0.02)
    assert not d.promote and "the rows are built differently now" in d.reason
    assert decide(y, challenger, champion, CFG, recorded=value).promote
    first = decide(y, challenger, None, CFG, recorded=value - 0.05)  # the first model too
    assert not first.promote and first.reason.startswith("first model, broken: it scores its own held-out rows")


def test_a_sound_model_passes_the_sanity_checks():
    rng, y, signal = rows()
    scores = model(rng, signal, 1.0)
    assert sanity(y, scores, metric_value("roc_auc", y, scores, 0.5), CFG) == []


def test_undefined_metric_is_never_promoted():
    d = decide(np.ones(10), np.linspace(0, 1, 10), None, CFG)
    assert not d.promote and "undefined" in d.reason


def test_gate_metric_must_be_higher_is_better_and_confidence_a_probability():
    with pytest.raises(ValueError, match="log_loss"):
        GateConfig(metric="log_loss")
    with pytest.raises(ValueError, match="confidence 1.5"):
        GateConfig(confidence=1.5)


def test_metrics_of_a_perfect_and_a_useless_score():
    y = [0, 0, 1, 1]
    perfect = compute_metrics(y, [0.1, 0.2, 0.8, 0.9], threshold=0.5)
    assert perfect["roc_auc"] == 1.0 and perfect["precision"] == 1.0 and perfect["recall"] == 1.0
    flat = compute_metrics(y, [0.5, 0.5, 0.5, 0.5], threshold=0.6)
    assert flat["roc_auc"] == 0.5 and flat["recall"] == 0.0
    assert math.isnan(compute_metrics([1, 1], [0.2, 0.9], 0.5)["roc_auc"])
    for name in ("roc_auc", "pr_auc", "precision", "recall", "f1"):
        assert metric_value(name, y, [0.1, 0.6, 0.4, 0.9], 0.5) == compute_metrics(y, [0.1, 0.6, 0.4, 0.9], 0.5)[name]
