"""The flights use case: contract, features and target on real rows of the replay source."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from include.data.suite import GX_TYPES
from include.usecases import get_usecase
from include.usecases.flights import CARRIERS

NY = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def week(flights):
    start = datetime(2013, 7, 2, tzinfo=NY)
    return flights.load_interval(start, start + timedelta(weeks=1))


def test_replay_source_matches_the_contract(flights, week):
    assert list(week.columns) == flights.contract.names
    kinds = {"int": "int64", "float": "float64", "str": "str", "datetime": "datetime64[us, UTC]"}
    for col in flights.contract.columns:
        assert str(week[col.name].dtype) == kinds[col.kind], col.name
        if not col.nullable:
            assert week[col.name].notna().all(), col.name
    assert not week.duplicated(list(flights.contract.key)).any()
    assert set(GX_TYPES) == set(kinds)


def test_replay_source_returns_exactly_the_interval(flights, week):
    start = datetime(2013, 7, 2, tzinfo=NY)
    assert week["time_hour"].min() >= start
    assert week["time_hour"].max() < start + timedelta(weeks=1)
    lo, hi = flights.contract.rows_per_day
    assert 7 * lo <= len(week) <= 7 * hi


def test_features_are_float_and_known_before_departure(flights, week):
    X = flights.build_features(week)
    assert (X.dtypes == "float64").all()
    assert len(X) == len(week)
    leaks = {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"} & set(X.columns)
    assert not leaks, f"features known only after departure: {leaks}"
    assert set(flights.categorical) <= set(X.columns)


def test_categorical_codes_use_a_fixed_vocabulary(flights, week):
    rows = week.head(3).copy()
    rows["carrier"] = pd.Series(["AA", "ZZ", "9E"], dtype="str", index=rows.index)
    X = flights.build_features(rows)
    assert X["carrier"].iloc[0] == CARRIERS.index("AA")
    assert np.isnan(X["carrier"].iloc[1]), "an unknown carrier must be missing, not a new code"
    assert X["carrier"].iloc[2] == CARRIERS.index("9E")


def test_target_is_late_over_15_minutes_and_undefined_when_cancelled(flights, week):
    rows = week.head(4).copy()
    rows["arr_delay"] = [15.0, 16.0, -5.0, np.nan]
    y = flights.build_target(rows)
    assert y.iloc[:3].tolist() == [0.0, 1.0, 0.0]
    assert np.isnan(y.iloc[3])


def test_unknown_usecase_is_a_clear_error():
    with pytest.raises(ValueError, match="no module include/usecases/nope.py"):
        get_usecase("nope")
