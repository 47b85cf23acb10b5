"""Every field of every DAG's form (the Params a person fills in the UI, or a REST / webhook client
sends as conf), probed at each of its bounds, with wrong types, oversized values and injection
strings. The schema is read from the DAGs themselves, so a field added later is covered too.

The REST API validates the same schemas (HTTP 400) for the UI's form and for any client; what passes
is what the tasks get, unchanged: nothing in a value is evaluated (templates, SQL, shell). A number's
bounds sit under `allOf` so the UI does not clamp it silently (the browser test sees the refusal)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from include.model.params import PLAIN_TEXT

ROOT = Path(__file__).resolve().parents[2]

INJECTIONS = [
    "{{ var.value.loop_webhook_token }}",
    "{% for x in range(10**9) %}{% endfor %}",
    "'; DROP TABLE dag_run; --",
    "$(touch /tmp/pwned) `id` ; rm -rf /",
    "<script>alert(document.cookie)</script>",
    "line one\r\nERROR forged log line",
    "right-to-left \u202eoverride",
    "ünïcødé ✈ 🛫 飞机",
    "../../../../etc/passwd",
]
WRONG_TYPES = {
    "integer": ["8", 2.5, True, [8], {"value": 8}],
    "number": ["0.1", True, [0.1], {"value": 0.1}],
    "boolean": ["true", "yes", 1, 0, [True], None],
    "string": [5, 0.5, True, ["x"], {"x": 1}],
}


@functools.cache
def bag():
    from airflow.dag_processing.dagbag import DagBag

    parsed = DagBag(dag_folder=str(ROOT / "dags"))
    assert not parsed.import_errors
    return parsed


def raw_fields() -> list[tuple[str, str, dict]]:
    return [
        (dag_id, key, dict(dag.params.get_param(key).schema)) for dag_id, dag in sorted(bag().dags.items()) for key in dag.params
    ]


def fields() -> list[tuple[str, str, dict]]:
    """Each field's schema with its `allOf` parts merged in (where the number bounds are)."""
    return [(dag_id, key, flat(schema)) for dag_id, key, schema in raw_fields()]


def flat(schema: dict) -> dict:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema.get("allOf", []):
        assert not part.keys() & merged.keys(), f"{part} repeats a key of {schema}"
        merged |= part
    return merged


def types(schema: dict) -> set[str]:
    t = schema.get("type", [])
    return {t} if isinstance(t, str) else set(t)


def check(dag_id: str, conf: dict):
    """The DAG's params with `conf` applied and validated (what a run would get)."""
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(bag().dags[dag_id].params)
    params.update(conf)
    return params.validate()


def refused(dag_id: str, key: str, value) -> bool:
    from airflow.sdk.exceptions import ParamValidationError

    try:
        check(dag_id, {**required(dag_id, key), key: value})
    except ParamValidationError as exc:
        assert key in str(exc), f"{dag_id}.{key}={value!r}: the error does not name the field: {exc}"
        return True
    return False


def required(dag_id: str, but: str) -> dict:
    """Valid values for the DAG's fields that have no default (so only `but` can be wrong)."""
    valid = {"version": "3", "partition": "dt=2013-01-29T0500Z"}
    return {k: v for k, v in valid.items() if k != but and k in bag().dags[dag_id].params}


FIELDS = fields()
IDS = [f"{d}.{k}" for d, k, _ in FIELDS]


@pytest.mark.parametrize(("dag_id", "key", "schema"), FIELDS, ids=IDS)
def test_every_field_is_bounded(dag_id, key, schema):
    """No free-for-all field: numbers have both ends, strings a length, a pattern or a format."""
    t = types(schema)
    if t & {"integer", "number"}:
        assert "minimum" in schema or "exclusiveMinimum" in schema, schema
        assert "maximum" in schema or "exclusiveMaximum" in schema, schema
    if "string" in t:
        assert {"maxLength", "pattern", "format", "enum"} & schema.keys(), schema


@pytest.mark.parametrize(("dag_id", "key", "schema"), raw_fields(), ids=IDS)
def test_number_bounds_are_stated_and_out_of_the_ui_clamps_reach(dag_id, key, schema):
    """Airflow's UI clamps a number input to a top-level minimum/maximum without a word (100 becomes
    16); under `allOf` the same bounds refuse the value instead, and the description says them."""
    from include.airflow_glue import NUMBER_BOUNDS, describe_bounds

    if not types(schema) & {"integer", "number"}:
        return
    assert not set(NUMBER_BOUNDS) & schema.keys(), schema
    (bounds,) = schema["allOf"]
    description = bag().dags[dag_id].params.get_param(key).description
    assert description.endswith(describe_bounds(bounds)), (description, schema)


def test_the_stated_bounds_read_as_words():
    from include.airflow_glue import describe_bounds

    assert describe_bounds({"minimum": 1, "maximum": 16}) == "At least 1, at most 16."
    assert describe_bounds({"exclusiveMinimum": 0, "maximum": 1}) == "Above 0, at most 1."
    assert describe_bounds({"minimum": 0.5, "exclusiveMaximum": 1000}) == "At least 0.5, below 1000."


@pytest.mark.parametrize(("dag_id", "key", "schema"), FIELDS, ids=IDS)
def test_each_bound_admits_its_edge_and_refuses_one_step_past_it(dag_id, key, schema):
    t = types(schema)
    step = 1 if "integer" in t else 1e-6
    edges: list[tuple[object, bool]] = []
    if "minimum" in schema:
        edges += [(schema["minimum"], True), (schema["minimum"] - step, False)]
    if "maximum" in schema:
        edges += [(schema["maximum"], True), (schema["maximum"] + step, False)]
    if "exclusiveMinimum" in schema:
        edges += [(schema["exclusiveMinimum"], False), (schema["exclusiveMinimum"] + step, True), (-1e308, False)]
    if "maxLength" in schema:
        n = schema["maxLength"]
        edges += [("x" * n, True), ("x" * (n + 1), False), ("x" * (1 << 20), False)]
    if schema.get("pattern") == PLAIN_TEXT:
        edges += [("nul\x00byte", False), ("bell\x07", False), ("\x1b[31mred", False), ("tab\tand\nnewline", True)]
    elif "pattern" in schema:
        edges += [("3; rm -rf /", False), ("", False), (" 3", False)]
    if schema.get("format") == "date":
        edges += [("2013-02-28", True), ("2013-02-30", False), ("yesterday", False), ("2013-02-28T00:00:00Z", False)]
    if "null" in t:
        edges += [(None, True)]
    elif t:
        edges += [(None, False)]
    if not edges:
        assert t == {"boolean"}, f"{dag_id}.{key}: no bound to probe in {schema}"
        edges = [(True, True), (False, True)]
    for value, ok in edges:
        assert refused(dag_id, key, value) is not ok, (
            f"{dag_id}.{key}={str(value)[:40]!r} should be {'admitted' if ok else 'refused'}"
        )


@pytest.mark.parametrize(("dag_id", "key", "schema"), FIELDS, ids=IDS)
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(dag_id, key, schema):
    t = types(schema)
    wrong = [v for kind in t - {"null"} for v in WRONG_TYPES[kind]]
    # a value that is right for one of the field's types is not a wrong type
    wrong = [v for v in wrong if not any(_is(v, kind) for kind in t)]
    assert wrong
    for value in wrong:
        assert refused(dag_id, key, value), f"{dag_id}.{key} admitted {value!r}"


def _is(value, kind: str) -> bool:
    return {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "null": value is None,
    }[kind]


FREE_TEXT = [
    (d, k, s)
    for d, k, s in FIELDS
    if "string" in types(s) and s.get("pattern", PLAIN_TEXT) == PLAIN_TEXT and not {"format", "enum"} & s.keys()
]


@pytest.mark.parametrize(("dag_id", "key", "schema"), FREE_TEXT, ids=[f"{d}.{k}" for d, k, _ in FREE_TEXT])
def test_injection_strings_in_free_text_arrive_unchanged_and_unevaluated(dag_id, key, schema):
    assert schema.get("pattern") == PLAIN_TEXT, f"{dag_id}.{key}: free text without the control-character check"
    for text in INJECTIONS:
        assert check(dag_id, {**required(dag_id, key), key: text})[key] == text


def test_the_forms_have_free_text_fields():
    assert {f"{d}.{k}" for d, k, _ in FREE_TEXT} >= {"train.reason", "train.report_uri", "rollback.reason", "revalidate.reason"}


def test_the_trainer_takes_a_reason_full_of_markup_as_plain_text():
    from include.model.params import TrainParams

    for text in INJECTIONS:
        params = TrainParams.from_mapping(check("train", {"reason": text}))
        assert params.reason == text
