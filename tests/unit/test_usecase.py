"""A use case is checked when it is loaded, with errors that name the field; and the machinery
names no column of any use case."""

from __future__ import annotations

import ast
import dataclasses
from datetime import UTC, date
from pathlib import Path

import pytest

from include.usecases import Calendar, UseCaseError, check_usecase, get_calendar, get_usecase, load_usecase

ROOT = Path(__file__).resolve().parents[2]
USECASES = sorted(p.stem for p in (ROOT / "include" / "usecases").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", USECASES)
def test_every_shipped_use_case_passes_its_checks(name):
    usecase = check_usecase(load_usecase(name))
    assert usecase.features and usecase.calendar.start < usecase.calendar.end


@pytest.fixture
def flights():
    return load_usecase("flights")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"features": ()}, "features is empty"),
        ({"categorical": ("carrier", "tail_colour")}, r"categorical names \['tail_colour'\]"),
        ({"drift_exempt": ("season",)}, r"drift_exempt names \['season'\]"),
        ({"slices": ("airline",)}, r"slices names \['airline'\]"),
        ({"serving_inputs": ("carrier", "distance")}, "serving_inputs lacks"),
        ({"encode_records": None}, "encode_records is missing"),
    ],
)
def test_a_use_case_that_contradicts_itself_is_refused_naming_the_field(flights, change, field):
    with pytest.raises(UseCaseError, match=f"use case 'flights': {field}"):
        dataclasses.replace(flights, **change)


def test_the_event_time_must_be_a_datetime_column(flights):
    contract = dataclasses.replace(flights.contract, event_time="distance")
    with pytest.raises(UseCaseError, match="contract.event_time 'distance' must be a datetime column"):
        dataclasses.replace(flights, contract=contract)


def test_functions_that_disagree_with_the_declaration_are_refused(flights):
    fewer = dataclasses.replace(flights, build_features=lambda df: flights.build_features(df).drop(columns="seats"))
    with pytest.raises(UseCaseError, match="build_features returns columns .* but features declares"):
        check_usecase(fewer)

    def shifted(records):
        return [[*row[:-1], row[-1] + 1] for row in flights.encode_records(records)]

    with pytest.raises(UseCaseError, match=r"encode_records disagrees with build_features on \['engine'\]"):
        check_usecase(dataclasses.replace(flights, encode_records=shifted))
    with pytest.raises(UseCaseError, match="build_target must give 1, 0 or NaN"):
        check_usecase(dataclasses.replace(flights, build_target=lambda df: df["distance"]))


def test_the_calendar_gives_the_intervals_and_settings_override_it(monkeypatch):
    weekly = Calendar(start=date(2013, 3, 5), end=date(2013, 3, 25), timezone="America/New_York")
    assert weekly.cron == "0 0 * * 2" and len(weekly.intervals()) == 3
    # the DST change of 10 March: local midnight to local midnight, 167 hours
    a, b = weekly.intervals()[0]
    assert (b.astimezone(UTC) - a.astimezone(UTC)).total_seconds() == 167 * 3600
    daily = dataclasses.replace(weekly, cadence="daily")
    assert daily.cron == "0 0 * * *" and len(daily.intervals()) == 21

    from include.settings import get_settings

    monkeypatch.setenv("LOOP_START_DATE", "2013-06-04")
    monkeypatch.setenv("LOOP_TIMEZONE", "UTC")
    get_settings.cache_clear()
    try:
        calendar = get_calendar("flights")
        assert calendar.start == date(2013, 6, 4) and calendar.timezone == "UTC" and calendar.end == date(2013, 12, 31)
        assert get_usecase("flights").calendar == calendar
    finally:
        get_settings.cache_clear()


def _column_names() -> dict[str, str]:
    names = {}
    for name in USECASES:
        usecase = load_usecase(name)
        for column in (*usecase.contract.names, *usecase.features):
            names[column] = name
    return names


def test_no_machinery_module_names_a_column_of_any_use_case():
    """String literals in include/ outside include/usecases/ never equal a column or feature name
    of a use case: the machinery reaches data only through the `UseCase` it is given."""
    columns = _column_names()
    assert {"carrier", "time_hour", "distance"} <= set(columns)
    found = []
    for path in sorted((ROOT / "include").rglob("*.py")):
        if "usecases" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in columns:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r} ({columns[node.value]})")
    assert not found, "\n".join(found)
