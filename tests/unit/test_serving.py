"""Pure parts of serving: the request schema, the hot-path features, routing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from include.local.traffic import request_bodies
from include.rollout.proxy import routing_config
from include.serving.schema import request_model


@pytest.fixture(scope="module")
def week(flights):
    return flights.load_interval(datetime(2013, 2, 4, tzinfo=UTC), datetime(2013, 2, 11, tzinfo=UTC))


@pytest.fixture(scope="module")
def Record(flights):
    return request_model(flights)


def as_requests(flights, df) -> list[dict]:
    return request_bodies(flights, df)


def test_hot_path_features_equal_training_features(flights, week, Record):
    """No training/serving skew: the per-record encoder gives build_features' numbers, NaN for NaN."""
    df = week.copy()
    df.loc[df.index[:50], "engine"] = None  # missing category
    df.loc[df.index[50:60], "wind_gust"] = np.nan
    records = [Record.model_validate(r).model_dump() for r in as_requests(flights, df)]
    served = np.asarray(flights.encode_records(records), dtype="float64")
    parsed = pd.DataFrame.from_records(records)
    parsed["time_hour"] = pd.to_datetime(parsed["time_hour"], utc=True)
    trained = flights.build_features(parsed).to_numpy()
    assert served.shape == trained.shape == (len(df), len(flights.features))
    np.testing.assert_array_equal(np.isnan(served), np.isnan(trained))
    np.testing.assert_array_equal(np.nan_to_num(served), np.nan_to_num(trained))
    # and through JSON: what the model sees (float32) is what it was trained on
    np.testing.assert_array_equal(served.astype("float32"), flights.build_features(df).to_numpy().astype("float32"))


def test_a_valid_record_passes_and_nullable_fields_may_be_missing(flights, week, Record):
    rec = as_requests(flights, week.head(1))[0]
    rec.pop("wind_gust")
    parsed = Record.model_validate(rec)
    assert parsed.wind_gust is None and parsed.request_id is None


@pytest.mark.parametrize(
    ("change", "field", "error"),
    [
        ({"carrier": "ZZ"}, "carrier", "literal_error"),
        ({"distance": "1200"}, "distance", "float_type"),
        ({"distance": -5}, "distance", "greater_than_equal"),
        ({"month": 13}, "month", "less_than_equal"),
        ({"month": 1.5}, "month", "int_type"),
        ({"temp": float("inf")}, "temp", "finite_number"),
        ({"temp": float("nan")}, "temp", "finite_number"),
        ({"temp": True}, "temp", "float_type"),
        ({"carrier": "A\u00c5"}, "carrier", "literal_error"),
        ({"time_hour": "2013-02-04T10:00:00"}, "time_hour", "timezone_aware"),
        ({"time_hour": 1360000000}, "time_hour", "value_error"),
        ({"time_hour": "0001-01-01T00:00:00+14:00"}, "time_hour", "value_error"),
        ({"time_hour": "9999-12-31T23:00:00-12:00"}, "time_hour", "value_error"),
        ({"time_hour": "2012-12-31T23:00:00+00:00"}, "time_hour", "value_error"),
        ({"surprise": 1}, "surprise", "extra_forbidden"),
        ({"request_id": "a b"}, "request_id", "string_pattern_mismatch"),
    ],
)
def test_a_client_mistake_is_refused_naming_the_field(flights, week, Record, change, field, error):
    rec = {**as_requests(flights, week.head(1))[0], **change}
    with pytest.raises(ValidationError) as exc:
        Record.model_validate(rec)
    errors = exc.value.errors()
    assert any(e["loc"][0] == field and e["type"] == error for e in errors), errors


def test_a_missing_required_field_is_refused(flights, week, Record):
    rec = as_requests(flights, week.head(1))[0]
    del rec["sched_dep_time"]
    with pytest.raises(ValidationError, match="sched_dep_time"):
        Record.model_validate(rec)


def test_an_event_time_ahead_of_the_serving_clock_is_refused_beyond_the_lead(flights, week):
    Record = request_model(flights, max_lead_hours=6)
    rec = as_requests(flights, week.head(1))[0]
    soon = datetime.now(UTC) + timedelta(hours=5)
    assert Record.model_validate({**rec, "time_hour": soon.isoformat()}).time_hour == soon
    with pytest.raises(ValidationError, match="after the serving clock") as exc:
        Record.model_validate({**rec, "time_hour": (soon + timedelta(hours=2)).isoformat()})
    assert exc.value.errors()[0]["loc"] == ("time_hour",)


def test_the_schema_document_carries_every_bound_of_the_contract(flights, Record):
    """What generated clients read (the JSON schema BentoML publishes) states the contract's
    ranges, vocabularies and nullability, in OpenAPI 3.0 terms (`nullable`, no `anyOf`)."""
    props = Record.model_json_schema()["properties"]
    assert set(props) == {"request_id", *flights.serving_inputs}
    for name in flights.serving_inputs:
        col, prop = flights.contract.column(name), props[name]
        assert "anyOf" not in prop and prop.get("nullable", False) == col.nullable, (name, prop)
        if col.allowed:
            assert prop["enum"] == [*col.allowed, *([None] if col.nullable else [])] and prop["type"] == "string", prop
        elif col.kind in ("int", "float"):
            assert prop["type"] == {"int": "integer", "float": "number"}[col.kind], prop
            assert (prop.get("minimum"), prop.get("maximum")) == (col.min, col.max), (name, prop)
        elif col.kind == "datetime":
            assert (
                prop["format"] == "date-time"
                and flights.calendar.start_datetime.astimezone(UTC).isoformat() in prop["description"]
            )


def test_routing_sends_traffic_only_to_weighted_slots():
    doc = routing_config({"blue": 90, "green": 10}, {"blue": "http://a:1", "green": "http://b:2"})
    http = doc["http"]
    assert http["services"]["predictor"]["weighted"]["services"] == [
        {"name": "blue", "weight": 90},
        {"name": "green", "weight": 10},
    ]
    assert http["services"]["green"]["loadBalancer"]["healthCheck"]["path"] == "/readyz"
    assert http["routers"]["predictor"]["middlewares"] == ["retry"]
    solo = routing_config({"blue": 0, "green": 100}, {"green": "http://b:2"})["http"]["services"]
    assert set(solo) == {"predictor", "green"}
    with pytest.raises(ValueError, match="positive weight"):
        routing_config({"blue": 0}, {})
    with pytest.raises(ValueError, match="unknown slots"):
        routing_config({"red": 100}, {"red": "http://c:3"})


TRAEFIK_METRICS = """
# TYPE traefik_service_requests_total counter
traefik_service_requests_total{code="200",method="POST",protocol="http",service="blue@file"} 900
traefik_service_requests_total{code="500",method="POST",protocol="http",service="blue@file"} 30
traefik_service_requests_total{code="200",method="POST",protocol="http",service="green@file"} 5000
# TYPE traefik_service_request_duration_seconds histogram
traefik_service_request_duration_seconds_sum{code="200",method="POST",protocol="http",service="blue@file"} 9.3
traefik_service_request_duration_seconds_count{code="200",method="POST",protocol="http",service="blue@file"} 930
"""

BENTOML_METRICS = """
# TYPE loop_request_duration_seconds histogram
loop_request_duration_seconds_sum{endpoint="/predict",http_response_code="200",service_name="s"} 2.0
loop_request_duration_seconds_count{endpoint="/predict",http_response_code="200",service_name="s"} 400
loop_request_duration_seconds_sum{endpoint="/predict",http_response_code="500",service_name="s"} 0.5
loop_request_duration_seconds_count{endpoint="/predict",http_response_code="500",service_name="s"} 100
loop_request_duration_seconds_count{endpoint="/readyz",http_response_code="503",service_name="s"} 50
"""


def test_counters_are_read_per_slot_and_per_scoring_endpoint():
    from include.rollout.canary import bentoml_counters, traefik_counters

    assert traefik_counters(TRAEFIK_METRICS, "blue") == {"requests": 930, "errors": 30, "seconds": 9.3}
    assert traefik_counters(TRAEFIK_METRICS, "green")["requests"] == 5000
    assert bentoml_counters(BENTOML_METRICS) == {"requests": 500, "errors": 100, "seconds": 2.5}


@pytest.mark.parametrize(
    ("delta", "breach"),
    [
        ({"requests": 100, "errors": 1, "seconds": 1.0}, None),  # 1% errors, 10 ms
        ({"requests": 100, "errors": 5, "seconds": 1.0}, "5xx rate 5.0%"),
        ({"requests": 10, "errors": 10, "seconds": 0.1}, None),  # too few requests to judge the rate
        ({"requests": 100, "errors": 0, "seconds": 50.0}, "mean latency 500 ms"),
        ({"requests": 0, "errors": 0, "seconds": 0.0}, None),
    ],
)
def test_judge_applies_the_rollback_thresholds(delta, breach, monkeypatch):
    from include.rollout.canary import judge
    from include.settings import get_settings

    monkeypatch.setenv("LOOP_CANARY_MIN_REQUESTS", "20")
    monkeypatch.setenv("LOOP_CANARY_MAX_ERROR_RATE", "0.02")
    monkeypatch.setenv("LOOP_CANARY_MAX_LATENCY_MS", "250")
    get_settings.cache_clear()
    found = judge({"traefik": delta}, get_settings())
    get_settings.cache_clear()
    assert (found is None) if breach is None else (breach in found and "traefik" in found)
