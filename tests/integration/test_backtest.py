"""`make backtest` on a quarter of 2013 (a 4-week window, so nine weeks are served) and on a few
weeks of the second use case: what the results must hold, with one served week recomputed from
scratch. No servers: the backtest needs none. The models have 50 trees instead of the DAG's 300:
what is checked here does not depend on their number, and it keeps the module near two minutes on
two busy cores (the full year, `make backtest`, trains with the DAG's defaults)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from include.backtest.policies import FOLLOWING_WEEKS, REPLAYED_LOOPS, WRONG
from include.backtest.run import run_backtest
from include.backtest.summary import SWEEP_AGES, SWEEP_SHARES
from include.backtest.timeline import fixed_schedule
from include.model.dataset import labelled
from include.model.engines import fit
from include.model.metrics import compute_metrics
from include.model.params import TrainParams
from include.usecases import get_usecase

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WEEKS, WINDOW = 13, 4
PARAMS = TrainParams(window_weeks=WINDOW, n_estimators=50)


@pytest.fixture(scope="module")
def quarter(tmp_path_factory, flights):
    out = tmp_path_factory.mktemp("backtest")
    return out, run_backtest(flights, out, weeks=WEEKS, params=PARAMS, sweep_grid=True)


def by_name(results):
    return {p["name"]: p for p in results["policies"]}


def test_every_policy_serves_the_same_weeks_after_the_first_full_window(quarter):
    _, results = quarter
    served = list(range(WINDOW + 1, WEEKS + 1))
    assert results["served_weeks"] == served
    policies = by_name(results)
    assert {"never", "weekly", "every 4 weeks", "drift (today's rule)", "default", *REPLAYED_LOOPS} <= set(policies)
    assert len(policies) == 6 + len(REPLAYED_LOOPS)
    for p in policies.values():
        assert [w["week"] for w in p["weeks"]] == served, p["name"]
        assert len(p["roc_auc"]["weeks"]) == len(p["log_loss"]["weeks"]) == len(p["cbpe"]["estimated_roc_auc"]) == len(served)


def test_never_keeps_its_first_model_and_weekly_serves_last_weeks_model(quarter):
    _, results = quarter
    policies = by_name(results)
    never, weekly = policies["never"], policies["weekly"]
    assert never["models"] == 1 and never["retrains"]["count"] == 0
    assert {w["model_week"] for w in never["weeks"]} == {WINDOW}
    assert [w["model_week"] for w in weekly["weeks"]] == [w["week"] - 1 for w in weekly["weeks"]]
    assert weekly["retrains"]["weeks"] == list(range(WINDOW + 1, WEEKS))  # nothing is trained after the last week
    # one fit per window end, however many policies serve its model
    served_by = {w["model_week"] for p in policies.values() for w in p["weeks"]}
    assert results["fits"]["windows"] == len(served_by) == len(results["windows"])


def test_a_schedule_serves_each_model_k_weeks_and_the_matched_one_retrains_like_default(quarter):
    _, results = quarter
    policies = by_name(results)
    assert policies["every 4 weeks"]["retrains"]["weeks"] == fixed_schedule(WINDOW, WEEKS, 4) == [8, 12]
    (matched,) = [p for p in policies.values() if "matches default" in p["name"]]
    assert matched["retrains"]["weeks"] == fixed_schedule(WINDOW, WEEKS, matched["every"])
    # the closest any schedule gets to default's retrains
    target = policies["default"]["retrains"]["count"]
    best = min(abs(len(fixed_schedule(WINDOW, WEEKS, k)) - target) for k in range(1, WEEKS - WINDOW + 1))
    assert abs(matched["retrains"]["count"] - target) == best


def test_the_monitors_policies_record_a_decision_every_week_and_retrain_only_on_one(quarter):
    _, results = quarter
    for name in ("drift (today's rule)", "default"):
        p = by_name(results)[name]
        assert {w["action"] for w in p["weeks"]} <= {"retrain", "none", "suppressed"}
        assert p["retrains"]["weeks"] == [w["week"] for w in p["weeks"] if w["action"] == "retrain" and w["week"] < WEEKS]
        # an alert is a signal (drift, an estimated drop, decay); a retrain for the model's age alone is not
        assert p["alerts"]["weeks"] == [w["week"] for w in p["weeks"] if w["cause"] and w["cause"] != "age"]
        assert sum(p["alerts"]["causes"].values()) == len([w for w in p["weeks"] if w["cause"]])
        assert p["alerts"]["count"] == len(p["alerts"]["weeks"])
        serving = WINDOW
        for w in p["weeks"]:  # a retrain after week w serves from week w+1
            assert w["model_week"] == serving, (name, w["week"])
            serving = w["week"] if w["retrained"] else serving
        assert all("prediction" in w["drift"] for w in p["weeks"])


def test_means_are_the_means_of_the_weeks_and_cbpe_hits_are_counted_from_them(quarter):
    _, results = quarter
    for p in results["policies"]:
        for metric in ("roc_auc", "log_loss"):
            weeks = [v for v in p[metric]["weeks"] if v is not None]
            assert len(weeks) == len(p[metric]["weeks"])  # every quarter week has both classes
            assert p[metric]["mean"] == pytest.approx(float(np.mean(weeks)), rel=1e-12)
        pairs = list(zip(p["cbpe"]["estimated_roc_auc"], p["cbpe"]["realised_roc_auc"], strict=True))
        hits = [abs(e - r) <= 0.03 for e, r in pairs if e is not None and r is not None]
        assert p["cbpe"]["hit_rate"] == pytest.approx(sum(hits) / len(hits))


def test_a_served_week_scores_what_the_model_of_its_window_scores_recomputed_from_scratch(quarter, flights):
    """Weekly's last week, by hand: train on weeks 9-11, fit, score week 13's labelled rows."""
    _, results = quarter
    intervals = flights.calendar.intervals()

    def rows(numbers):
        import pandas as pd

        return pd.concat([flights.load_interval(*intervals[n - 1]) for n in numbers], ignore_index=True)

    X, y, _ = labelled(flights, rows(range(WEEKS - WINDOW, WEEKS - 1)))
    model = fit(X, y, PARAMS, flights.categorical)
    X_week, y_week, _ = labelled(flights, rows([WEEKS]))
    expected = compute_metrics(y_week, model.predict_proba(X_week)[:, 1], 0.5)
    week = by_name(results)["weekly"]["weeks"][-1]
    assert week["week"] == WEEKS and week["model_week"] == WEEKS - 1
    assert week["labelled"] == len(y_week) < week["rows"]  # cancelled flights are served, not scored
    assert week["roc_auc"] == pytest.approx(expected["roc_auc"], rel=1e-9)
    assert week["log_loss"] == pytest.approx(expected["log_loss"], rel=1e-9)


def test_the_refit_yardstick_serves_last_weeks_refit_and_a_week_of_it_recomputes_from_scratch(quarter, flights):
    """Weekly, always promote, refit: week 13 is served by the refit of week 12, fitted on weeks 9-12."""
    _, results = quarter
    refit = by_name(results)[REPLAYED_LOOPS[0]]
    assert all(w["refit"] and w["model_week"] == w["week"] - 1 for w in refit["weeks"])
    assert refit["retrains"]["weeks"] == refit["promotions"]["weeks"] == list(range(WINDOW + 1, WEEKS))
    intervals = flights.calendar.intervals()

    def rows(numbers):
        import pandas as pd

        return pd.concat([flights.load_interval(*intervals[n - 1]) for n in numbers], ignore_index=True)

    X, y, _ = labelled(flights, rows(range(WEEKS - WINDOW, WEEKS)))
    model = fit(X, y, PARAMS, flights.categorical)
    X_week, y_week, _ = labelled(flights, rows([WEEKS]))
    expected = compute_metrics(y_week, model.predict_proba(X_week)[:, 1], 0.5)
    assert refit["weeks"][-1]["roc_auc"] == pytest.approx(expected["roc_auc"], rel=1e-9)


def test_the_loop_rows_replay_admission_the_gate_and_the_refit(quarter):
    _, results = quarter
    policies = by_name(results)
    for name in REPLAYED_LOOPS[1:]:
        p = policies[name]
        serving = (WINDOW, True)
        trained = None
        for w in p["weeks"]:
            assert (w["model_week"], w["refit"]) == serving, (name, w["week"])
            if w.get("action") == "retrain" and w["week"] < WEEKS:
                assert "admission" in w  # the monitor's request met admission's guards
            if w["retrained"]:
                trained = w["week"]
                if "gate" in w:  # judged against what serves (its verdict is recomputed by hand below)
                    assert w["gate"]["champion"] == list(serving) and w["gate"]["reason"]
                if w["promoted"]:
                    serving = (w["week"], w["refit_guard"])
                # each call is scored on the weeks after it
                assert w["following"]["weeks"] == list(range(w["week"] + 1, min(w["week"] + FOLLOWING_WEEKS, WEEKS) + 1))
            elif trained is not None and w.get("action") == "suppressed" and name != REPLAYED_LOOPS[1]:
                # the demo's cooldown (two weeks of data time) holds a request back, and says so
                assert w["week"] - trained < 2 and "cooldown" in w["reason"], (name, w)
        assert p["promotions"]["count"] + p["rejections"]["count"] == p["retrains"]["count"]
        wrong = [w["week"] for w in p["weeks"] if w["retrained"] and not w["promoted"] and w["following"]["gain"] >= WRONG]
        assert p["rejections"]["wrong"] == wrong
    # the production defaults train on every validated week (the schedule's runs), through the gate
    production = policies[REPLAYED_LOOPS[1]]
    assert production["retrains"]["weeks"] == list(range(WINDOW + 1, WEEKS))
    assert all("gate" in w for w in production["weeks"] if w["retrained"])
    # without the gate every training serves
    always = policies[REPLAYED_LOOPS[3]]
    assert always["promotions"]["weeks"] == always["retrains"]["weeks"] and always["rejections"]["count"] == 0


def test_a_gate_call_recomputes_from_scratch(quarter, flights):
    """The production row's first call, by hand: the challenger fitted on weeks 2-4 (week 5 held out)
    against the first model's refit (weeks 1-4), both scoring week 5, through the gate's `decide`."""
    from include.model.gate import GateConfig, decide, gain_shares

    _, results = quarter
    first = next(w for w in by_name(results)[REPLAYED_LOOPS[1]]["weeks"] if w["retrained"])
    number = first["week"]
    intervals = flights.calendar.intervals()

    def rows(numbers):
        import pandas as pd

        return pd.concat([flights.load_interval(*intervals[n - 1]) for n in numbers], ignore_index=True)

    X_ch, y_ch, _ = labelled(flights, rows(range(number - WINDOW + 1, number)))
    X_cp, y_cp, _ = labelled(flights, rows(range(WINDOW - WINDOW + 1, WINDOW + 1)))
    challenger, champion = fit(X_ch, y_ch, PARAMS, flights.categorical), fit(X_cp, y_cp, PARAMS, flights.categorical)
    X_week, y_week, slices = labelled(flights, rows([number]))
    expected = decide(
        y_week.to_numpy(),
        challenger.predict_proba(X_week)[:, 1],
        champion.predict_proba(X_week)[:, 1],
        GateConfig.from_settings(),
        slices,
        0.5,
        (gain_shares(challenger), gain_shares(champion)),
    )
    assert first["promoted"] == expected.promote and first["gate"]["reason"] == expected.reason
    assert first["gate"]["delta"] == pytest.approx(expected.delta, rel=1e-9)
    assert first["gate"]["interval"] == pytest.approx(list(expected.interval), rel=1e-9)


def test_the_outputs_are_written_and_results_json_round_trips(quarter):
    out, results = quarter
    assert json.loads((out / "results.json").read_text()) == results
    assert results["runtime_seconds"] > 0 and results["settings"]["params"]["window_weeks"] == WINDOW
    assert (out / "served_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    for p in results["policies"]:
        assert f"| {p['name']} | {p['retrains']['count']} |" in table


def test_the_sweep_replays_the_default_policy_over_its_grid_and_its_default_cell_is_the_default_policy(quarter):
    out, results = quarter
    sweep, policies = results["sweep"], by_name(results)
    grid = {(g["drift_share"], g["max_model_age_weeks"]): g for g in sweep["grid"]}
    assert set(grid) == {(s, a) for s in SWEEP_SHARES for a in SWEEP_AGES}
    (default,) = [g for g in sweep["grid"] if g["default"]]
    assert (default["drift_share"], default["max_model_age_weeks"]) == (0.2, 6)
    assert default["retrains"] == policies["default"]["retrains"]["count"]
    assert default["roc_auc"] == pytest.approx(policies["default"]["roc_auc"]["mean"], rel=1e-12)
    served = results["served_weeks"]
    for g in [*sweep["grid"], sweep["weekly"]]:
        first, second = g["halves"]
        assert first["weeks"][0] == served[0] and second["weeks"][1] == served[-1] and second["weeks"][0] == first["weeks"][1] + 1
        n1, n2 = first["weeks"][1] - served[0] + 1, served[-1] - second["weeks"][0] + 1
        mean = g["roc_auc"] if "retrains" in g else policies["weekly"]["roc_auc"]["mean"]
        assert (n1 * first["roc_auc"] + n2 * second["roc_auc"]) / (n1 + n2) == pytest.approx(mean, rel=1e-9)
    assert "Sweep of the default policy" in (out / "results.md").read_text()


def test_the_second_use_case_replays_through_the_same_harness_and_a_rerun_fits_nothing_again(tmp_path):
    """Payments: a daily calendar (seven partitions a week), another key, label and timezone. The
    rerun reads its models from the first run's cache and comes to the same results."""
    payments = get_usecase("payments")
    params = TrainParams(window_weeks=2, n_estimators=50)
    results = run_backtest(payments, tmp_path, weeks=4, params=params)
    assert results["usecase"] == "payments" and results["served_weeks"] == [3, 4]
    assert results["windows"]["2"]["train_partitions"] == 13 and results["windows"]["2"]["eval_partitions"] == 1
    assert all(p["roc_auc"]["mean"] is not None for p in results["policies"])
    assert (tmp_path / "served_quality.png").exists()
    fitted = results["fits"]["windows"] + results["fits"]["refits"]
    assert results["fits"]["from_cache"] == 0 and len(list((tmp_path / "fits").glob("*.ubj"))) == fitted

    again = run_backtest(payments, tmp_path, weeks=4, params=params)
    assert again["fits"]["from_cache"] == again["fits"]["windows"] + again["fits"]["refits"] == fitted
    assert again["policies"] == results["policies"] and again["windows"] == results["windows"]
