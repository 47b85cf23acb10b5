"""The retrain policy: drift or decay → one request; every guard suppresses with a reason.

The guards and the older `count` rule first (a fixed PSI on enough features), then the default
`attribution` rule: drift beyond each feature's own noise threshold weighed by the model's
attributions, the performance estimated from scores, decay judged with its confidence interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.monitoring.policy import Decision, History, PolicyConfig, admit, decide, signals, training_guard

NOW = datetime(2013, 7, 15, 12, tzinfo=UTC)
CONFIG = PolicyConfig.todays_rule()
REFERENCE = {"roc_auc": 0.71}


def report(psis: dict[str, float] | None = None, prediction: float = 0.01, auc: float | None = None, labelled: int = 0) -> dict:
    psis = psis or {"temp": 0.01, "dewp": 0.02, "dep_hour": 0.0, "carrier": 0.01}
    return {
        "features": {k: {"psi": v} for k, v in psis.items()},
        "prediction": {"psi": prediction},
        "labels": {"labelled": labelled},
        "performance": {"roc_auc": auc},
    }


SUMMER = {"temp": 2.4, "dewp": 1.9, "humid": 0.4, "dep_hour": 0.01, "carrier": 0.02}


def test_a_stable_window_asks_for_nothing():
    d = decide(report(), REFERENCE, History(now=NOW), CONFIG)
    assert d.action == "none" and d.cause == ""


def test_drift_on_enough_features_asks_for_one_retrain():
    d = decide(report(SUMMER), REFERENCE, History(now=NOW, last_training_at=NOW - timedelta(days=10)), CONFIG)
    assert d.action == "retrain" and d.cause == "drift"
    assert "temp" in d.reason and d.evidence["drifted_features"]["temp"] == 2.4


def test_one_drifted_feature_is_not_enough():
    d = decide(report({"temp": 3.0, "dewp": 0.1, "humid": 0.1}), REFERENCE, History(now=NOW), CONFIG)
    assert d.action == "none"


def test_decay_needs_enough_labels():
    few = decide(report(auc=0.60, labelled=500), REFERENCE, History(now=NOW), CONFIG)
    many = decide(report(auc=0.60, labelled=5000), REFERENCE, History(now=NOW), CONFIG)
    assert few.action == "none"
    assert many.action == "retrain" and many.cause == "decay:roc_auc" and "0.600" in many.reason


def test_prediction_drift_alone_asks_for_retraining():
    d = decide(report(prediction=0.5), REFERENCE, History(now=NOW), CONFIG)
    assert d.action == "retrain" and d.cause == "prediction-drift"


@pytest.mark.parametrize(
    ("history", "why"),
    [
        (History(now=NOW, training_active=True), "another training run is already active"),
        (History(now=NOW, last_training_at=NOW - timedelta(hours=3)), "cooldown"),
        (
            History(
                now=NOW,
                last_training_at=NOW - timedelta(days=3),
                requests=((NOW - timedelta(hours=5), "drift:x"), (NOW - timedelta(hours=2), "decay:roc_auc")),
            ),
            "2 retrain requests in 24 h",
        ),
        (
            History(now=NOW, last_training_at=NOW - timedelta(days=3), requests=((NOW - timedelta(days=2), "drift"),)),
            "already requested and not yet answered",
        ),
    ],
)
def test_every_guard_suppresses_with_its_reason(history, why):
    d = decide(report(SUMMER), REFERENCE, history, CONFIG)
    assert isinstance(d, Decision) and d.action == "suppressed" and why in d.reason
    assert d.cause == "drift"


def test_a_cause_answered_by_a_new_training_may_be_requested_again():
    history = History(now=NOW, last_training_at=NOW - timedelta(days=2), requests=((NOW - timedelta(days=3), "drift"),))
    assert decide(report(SUMMER), REFERENCE, history, CONFIG).action == "retrain"


def test_thresholds_come_from_settings(monkeypatch):
    from include.settings import get_settings

    monkeypatch.setenv("LOOP_DRIFT_RULE", "count")
    monkeypatch.setenv("LOOP_DRIFT_MIN_FEATURES", "1")
    monkeypatch.setenv("LOOP_RETRAIN_COOLDOWN_HOURS", "6")
    get_settings.cache_clear()
    config = PolicyConfig.from_settings(get_settings())
    get_settings.cache_clear()
    assert config.min_drifted_features == 1 and config.cooldown == timedelta(hours=6)
    assert decide(report({"temp": 3.0}), REFERENCE, History(now=NOW), config).action == "retrain"


def test_a_request_sharing_a_cause_with_an_unanswered_one_is_suppressed_but_a_new_kind_is_not():
    pending = ((NOW - timedelta(days=2), "drift"),)
    history = History(now=NOW, last_training_at=NOW - timedelta(days=5), requests=pending)
    both = decide(report(SUMMER, prediction=0.5), REFERENCE, history, CONFIG)
    assert both.action == "suppressed" and both.cause == "drift;prediction-drift" and "(drift)" in both.reason
    only_new = decide(report(prediction=0.5), REFERENCE, history, CONFIG)
    assert only_new.action == "retrain" and only_new.cause == "prediction-drift"


def test_an_exempt_feature_never_counts_as_drift():
    seasonal = {"month": 17.0, "temp": 2.0, "dewp": 1.5, "dep_hour": 0.0}
    assert decide(report(seasonal), REFERENCE, History(now=NOW), CONFIG).action == "retrain"
    exempt = PolicyConfig.todays_rule(exempt=("month",))
    d = decide(report(seasonal), REFERENCE, History(now=NOW), exempt)
    assert d.action == "none" and "month" not in d.evidence["drifted_features"]


IN_COOLDOWN = History(now=NOW, last_training_at=NOW - timedelta(hours=3))


@pytest.mark.parametrize("run_type", ["manual", "operator_triggered", "backfill"])
@pytest.mark.parametrize(
    ("history", "why"),
    [(IN_COOLDOWN, "cooldown: last training 3.0 h ago (< 24.0 h)"), (History(now=NOW, training_active=True), "already active")],
)
def test_a_train_run_the_schedule_did_not_start_meets_the_guards(run_type, history, why):
    d = admit(run_type, history, CONFIG, requested_by="alert-webhook")
    assert d.action == "suppressed" and d.cause == run_type
    assert why in d.reason and f"{run_type} run by alert-webhook" in d.reason


def test_a_train_run_is_admitted_when_no_guard_holds():
    first = admit("manual", History(now=NOW), CONFIG)
    later = admit("operator_triggered", History(now=NOW, last_training_at=NOW - timedelta(hours=30)), CONFIG)
    assert (first.action, later.action) == ("train", "train")
    assert "no training yet" in first.reason and "last training 30.0 h ago" in later.reason


@pytest.mark.parametrize("run_type", ["scheduled", "asset_triggered"])
def test_the_schedules_own_runs_are_not_guarded(run_type):
    d = admit(run_type, History(now=NOW, last_training_at=NOW, training_active=True), CONFIG)
    assert d.action == "train" and "schedule" in d.reason


def test_force_is_a_persons_override_and_says_so():
    d = admit("manual", History(now=NOW, last_training_at=NOW, training_active=True), CONFIG, force=True, requested_by="ana")
    assert d.action == "train" and "forced" in d.reason and "by ana" in d.reason


def test_an_alert_storm_inside_the_cooldown_trains_once():
    """Admission runs one train run at a time; each sees the training of the one before it (whose
    data window ends at the newest data: no new data arrived between the alerts)."""
    last, outcomes = NOW - timedelta(days=3), []
    for _ in range(3):
        d = admit("manual", History(now=NOW, last_training_at=last), CONFIG, requested_by="alert-webhook")
        outcomes.append(d.action)
        if d.action == "train":
            last = NOW
    assert outcomes == ["train", "suppressed", "suppressed"]


def test_the_monitor_and_admission_share_one_guard():
    history = History(now=NOW, last_training_at=NOW - timedelta(hours=3))
    assert training_guard(history, CONFIG) in decide(report(SUMMER), REFERENCE, history, CONFIG).reason
    assert training_guard(history, CONFIG) in admit("manual", history, CONFIG).reason
    assert training_guard(History(now=NOW, last_training_at=NOW - timedelta(hours=25)), CONFIG) is None


# The attribution rule (the default). A feature's entry holds its PSI, its noise threshold at the
# window's size and its share of the model's attributions, as `DriftAccumulator.report` writes them.
DEFAULT = PolicyConfig()
SHARES = {"dep_hour": 0.40, "carrier": 0.20, "temp": 0.12, "visib": 0.10, "seats": 0.02, "engines": 0.01, "month": 0.15}


def attributed(psis: dict[str, float], threshold: float = 0.1, estimated: float | None = None, **labels) -> dict:
    features = {n: {"psi": psis.get(n, 0.01), "threshold": threshold, "share": s} for n, s in SHARES.items()}
    out = {"features": features, "prediction": {"psi": 0.01}, "labels": {"labelled": 0} | labels, "performance": {}}
    if estimated is not None:
        out["estimated"] = {"roc_auc": estimated}
    return out


def test_the_default_rule_is_attribution_and_settings_choose_it():
    from include.settings import get_settings

    assert DEFAULT.rule == "attribution" and PolicyConfig.from_settings(get_settings()).rule == "attribution"


def test_drift_confined_to_features_the_model_barely_uses_does_not_ask_for_retraining():
    d = decide(attributed({"seats": 4.0, "engines": 3.0}), REFERENCE, History(now=NOW), DEFAULT)
    assert d.action == "none" and d.cause == "" and DEFAULT.drift_share > 0.03, d
    assert d.evidence["drifted_features"] == {"seats": 4.0, "engines": 3.0} and d.evidence["drifted_share"] == 0.03
    # the older rule counts features, not what they carry: three of them fire it
    assert decide(attributed({"seats": 4.0, "engines": 3.0, "temp": 0.3}), REFERENCE, History(now=NOW), CONFIG).cause == "drift"


def test_drift_on_features_carrying_enough_of_the_model_asks_for_one_retrain():
    d = decide(attributed({"dep_hour": 0.3, "temp": 0.5}), REFERENCE, History(now=NOW), DEFAULT)
    assert d.action == "retrain" and d.cause == "drift", d
    assert "52% of the model's attributions" in d.reason and d.reason.index("dep_hour") < d.reason.index("temp")


def test_psi_under_a_features_own_noise_threshold_is_not_drift_however_large():
    d = decide(attributed({"dep_hour": 0.3, "temp": 0.5}, threshold=0.6), REFERENCE, History(now=NOW), DEFAULT)
    assert d.action == "none" and d.evidence["drifted_features"] == {}


def test_an_exempt_feature_carries_no_drift_share():
    exempt = PolicyConfig(exempt=("month",))
    assert decide(attributed({"month": 9.0, "temp": 2.0}), REFERENCE, History(now=NOW), DEFAULT).cause == "drift"
    d = decide(attributed({"month": 9.0, "temp": 2.0}), REFERENCE, History(now=NOW), exempt)
    assert d.action == "none" and "month" not in d.evidence["drifted_features"] and d.evidence["drifted_share"] == 0.12


def test_an_estimated_drop_asks_for_retraining_before_labels_land():
    drop = decide(attributed({}, estimated=0.66), REFERENCE, History(now=NOW), DEFAULT)
    near = decide(attributed({}, estimated=0.69), REFERENCE, History(now=NOW), DEFAULT)
    assert drop.action == "retrain" and drop.cause == "estimated-decay:roc_auc" and "0.660" in drop.reason
    assert near.action == "none" and near.evidence["roc_auc_estimated"] == 0.69


def labelled_window(auc: float, labelled: int, positives: int) -> dict:
    return attributed({}, labelled=labelled, positives=positives) | {"performance": {"roc_auc": auc}}


def test_decay_is_judged_with_the_windows_confidence_interval():
    # A large drop on a small window (800 labelled, as the demo's windows) is decay; the older
    # rule needed 2,000 labels and stayed silent.
    small_large_drop = decide(labelled_window(0.58, 800, 170), REFERENCE, History(now=NOW), DEFAULT)
    assert small_large_drop.action == "retrain" and small_large_drop.cause == "decay:roc_auc", small_large_drop
    assert decide(labelled_window(0.58, 800, 170), REFERENCE, History(now=NOW), CONFIG).action == "none"
    # A modest drop: noise on 800 labels, decay on 50,000.
    small = decide(labelled_window(0.66, 800, 170), REFERENCE, History(now=NOW), DEFAULT)
    large = decide(labelled_window(0.66, 50_000, 10_000), REFERENCE, History(now=NOW), DEFAULT)
    assert small.action == "none" and small.evidence["roc_auc_live_se"] > 0.02
    assert large.action == "retrain" and large.cause == "decay:roc_auc" and "± 0.00" in large.reason


def test_decay_needs_a_floor_of_labels_and_both_classes():
    assert decide(labelled_window(0.40, 150, 30), REFERENCE, History(now=NOW), DEFAULT).action == "none"
    assert decide(labelled_window(0.40, 800, 0), REFERENCE, History(now=NOW), DEFAULT).action == "none"


def test_a_model_past_its_maximum_age_is_retrained_without_an_alert():
    quiet = attributed({})
    young = decide(quiet, REFERENCE, History(now=NOW, model_data_end=NOW - timedelta(weeks=5)), DEFAULT)
    old = decide(quiet, REFERENCE, History(now=NOW, model_data_end=NOW - timedelta(weeks=6)), DEFAULT)
    assert young.action == "none" and young.evidence["model_age_days"] == 35.0
    assert old.action == "retrain" and old.cause == "age" and "ends 42.0 d ago (≥ 42.0 d)" in old.reason, old
    assert signals(old.cause) == [], "age alone is maintenance: no alert"
    # with a signal too, both are the cause and the signal alerts
    both = decide(attributed({"dep_hour": 0.3}), REFERENCE, History(now=NOW, model_data_end=NOW - timedelta(weeks=7)), DEFAULT)
    assert both.cause == "drift;age" and signals(both.cause) == ["drift"]
    # no model yet, the older rule, or the limit switched off: age asks for nothing
    assert decide(quiet, REFERENCE, History(now=NOW), DEFAULT).action == "none"
    for config in (CONFIG, PolicyConfig(max_model_age=None)):
        assert decide(quiet, REFERENCE, History(now=NOW, model_data_end=NOW - timedelta(weeks=30)), config).action == "none"


def test_age_counts_from_the_serving_model_not_from_a_rejected_challenger():
    """A challenger the gate rejected a week ago trained recently, but the model serving is seven
    weeks old: age asks for a retrain (the cooldown, which counts from any training, may hold it)."""
    quiet = attributed({})
    history = History(now=NOW, last_training_at=NOW - timedelta(weeks=1), model_data_end=NOW - timedelta(weeks=7))
    decision = decide(quiet, REFERENCE, history, DEFAULT)
    assert decision.cause == "age" and decision.evidence["model_age_days"] == 49.0, decision
    assert "the serving model's data ends 49.0 d ago" in decision.reason


def test_the_maximum_age_comes_from_settings_and_zero_switches_it_off(monkeypatch):
    from include.settings import Settings

    assert PolicyConfig.from_settings(Settings()).max_model_age == timedelta(days=42) == DEFAULT.max_model_age
    monkeypatch.setenv("LOOP_MAX_MODEL_AGE_DAYS", "0")
    assert PolicyConfig.from_settings(Settings()).max_model_age is None
