"""A monitoring window end to end on real data and real GX: validated weeks, an inference log
written by the serving sink, labels joined from the validated zone, drift and decay, the policy."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from include.data import Partition, land_partition, read_validated
from include.monitor import build_profile, window_report
from include.policy import History, PolicyConfig, decide
from include.serving.inference_log import InferenceLog
from include.serving.schema import request_model
from include.traffic import request_bodies
from include.validate import validate_partition

pytestmark = pytest.mark.integration
NY = ZoneInfo("America/New_York")
WEEKS = {"feb": datetime(2013, 2, 4, tzinfo=NY), "feb2": datetime(2013, 2, 11, tzinfo=NY), "jul": datetime(2013, 7, 8, tzinfo=NY)}


def score(features) -> np.ndarray:
    """A fixed stand-in model: later departures and worse visibility look later."""
    return np.clip(features["dep_hour"].to_numpy() / 30 + (10 - features["visib"].fillna(10).to_numpy()) / 40, 0, 1)


def test_a_reference_week_triggers_nothing_and_a_summer_week_asks_for_retraining(flights, storage_root):
    parts = {}
    for name, start in WEEKS.items():
        p = Partition("flights", start, start + timedelta(weeks=1))
        land_partition(flights, p, replay=True)
        parts[name] = validate_partition(flights, p, max_bad_row_share=0.01)
    # The reference is every other row of two February weeks; the other rows are served: a window
    # drawn from the reference distribution. (Weather moves a lot from one week to the next, so a
    # later week is not "the same distribution" at weekly granularity.)
    february = read_validated([parts["feb"], parts["feb2"]])
    X = flights.build_features(february.iloc[::2])
    profile = build_profile(X, score(X), flights.build_target(february.iloc[::2]).to_numpy(), flights.categorical)

    Record = request_model(flights)
    sink = InferenceLog(flights, "1", "blue", flush_seconds=3600)
    for name, df in (("feb", february.iloc[1::2]), ("jul", read_validated([parts["jul"]]))):
        records = [
            Record.model_validate(r).model_dump() | {"request_id": f"{name}-{i}"}
            for i, r in enumerate(request_bodies(flights, df))
        ]
        features = flights.encode_records(records)
        s = score(flights.build_features(df)).tolist()
        sink.append(records, features, s, [x >= 0.5 for x in s])
    sink.close()

    config = PolicyConfig(min_labelled=1000)
    history = History(now=datetime(2013, 7, 20, tzinfo=NY))
    calm = window_report(flights, profile, WEEKS["feb"], WEEKS["feb2"] + timedelta(weeks=1))
    assert calm["n"] == len(february) // 2 and calm["model_versions"] == {"1": calm["n"]}
    assert (
        calm["labels"]["labelled"] > 0.85 * calm["n"]
    )  # labels joined from the validated zone (Feb 2013 had a blizzard: many cancellations)
    calm_decision = decide(calm, {"roc_auc": calm["performance"]["roc_auc"]}, history, config)
    assert calm_decision.action == "none", (calm_decision, calm["features"])

    summer = window_report(flights, profile, WEEKS["jul"], WEEKS["jul"] + timedelta(weeks=1))
    decision = decide(summer, {"roc_auc": calm["performance"]["roc_auc"]}, history, config)
    assert decision.action == "retrain" and "temp" in decision.cause, decision
    assert summer["features"]["temp"]["psi"] > 1 and summer["labels"]["base_rate"] > calm["labels"]["base_rate"]
    assert 0.5 < summer["performance"]["roc_auc"] < 1 and summer["calibration"]["base_rate"] == pytest.approx(
        summer["labels"]["base_rate"]
    )
