"""Behavioural tests of the model the loop trains (minimum functionality, direction, invariance).

Trained in-process with the same `fit` and features the `train` DAG uses, on six real weeks of
summer 2013, scored on the week after.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from include.model.dataset import labelled
from include.model.engines import fit
from include.model.metrics import compute_metrics
from include.model.params import TrainParams

pytestmark = pytest.mark.slow
START = datetime(2013, 6, 4, tzinfo=ZoneInfo("America/New_York"))


@pytest.fixture(scope="module")
def trained(flights):
    train_rows = flights.load_interval(START, START + timedelta(weeks=6))
    eval_rows = flights.load_interval(START + timedelta(weeks=6), START + timedelta(weeks=7))
    X, y, _ = labelled(flights, train_rows)
    model = fit(X, y, TrainParams(n_estimators=200), flights.categorical)
    return model, eval_rows


def score(model, usecase, rows) -> np.ndarray:
    return model.predict_proba(usecase.build_features(rows))[:, 1]


def test_minimum_functionality_beats_chance_on_the_next_week(trained, flights):
    model, rows = trained
    X, y, _ = labelled(flights, rows)
    metrics = compute_metrics(y, model.predict_proba(X)[:, 1], threshold=0.5)
    assert metrics["roc_auc"] > 0.62
    assert metrics["pr_auc"] > metrics["positive_rate"] + 0.05, "better than ranking at random"


def test_fog_raises_the_predicted_delay_risk(trained, flights):
    model, rows = trained
    clear, fog = rows.assign(visib=10.0), rows.assign(visib=0.25)
    assert score(model, flights, fog).mean() > score(model, flights, clear).mean() + 0.02


def test_evening_departures_are_riskier_than_early_morning_ones(trained, flights):
    model, rows = trained
    morning = rows.assign(sched_dep_time=700, hour=7, minute=0)
    evening = rows.assign(sched_dep_time=1900, hour=19, minute=0)
    assert score(model, flights, evening).mean() > score(model, flights, morning).mean() + 0.02


def test_outcomes_and_identifiers_do_not_move_the_prediction(trained, flights):
    """No leakage: what happens after departure, and who the plane is, must not change the score."""
    model, rows = trained
    base = score(model, flights, rows)
    changed = rows.assign(
        arr_delay=999.0, dep_delay=999.0, arr_time=1.0, dep_time=1.0, air_time=600.0, flight=1, tailnum="N00000"
    )
    np.testing.assert_array_equal(score(model, flights, changed), base)
