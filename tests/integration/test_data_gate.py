"""Real GX validation of real partitions: what passes, what is quarantined, and that nothing is lost."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from include.data.gate import BatchQuarantined, validate_partition
from include.data.partitions import Partition, land_partition, list_validated, read_validated, sha256
from include.data.storage import get_storage, parquet_bytes, read_parquet
from include.data.suite import BATCH, ROW, build_suite
from include.local.faults import plant_fault

pytestmark = pytest.mark.integration
NY = ZoneInfo("America/New_York")
WEEK0 = datetime(2013, 4, 2, tzinfo=NY)


def week(i: int) -> Partition:
    return Partition("flights", WEEK0 + timedelta(weeks=i), WEEK0 + timedelta(weeks=i + 1))


def test_every_expectation_declares_its_policy_level(flights):
    suite = build_suite(flights.contract, week(0))
    levels = {e.meta.get("level") for e in suite.expectations}
    assert levels == {ROW, BATCH}
    types = {e.expectation_type for e in suite.expectations}
    for needed in (
        "expect_table_columns_to_match_set",
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_set",
        "expect_compound_columns_to_be_unique",
        "expect_column_max_to_be_between",
        "expect_column_mean_to_be_between",
    ):
        assert needed in types


def test_a_good_partition_passes_and_is_published(storage_root, flights):
    p = week(0)
    land_partition(flights, p, replay=True)
    rec = validate_partition(flights, p, max_bad_row_share=0.01)
    storage = get_storage()
    assert rec["status"] == "passed" and rec["rows_quarantined"] == 0
    assert rec["rows_validated"] == rec["rows_landed"] > 5000
    assert sha256(storage.read_bytes(p.validated_key)) == rec["validated_sha256"]
    gx = json.loads(storage.read_bytes(rec["gx_result_uri"].split("/zones/", 1)[1]))
    assert gx["success"] is True
    assert [r["partition"] for r in list_validated("flights")] == [p.id]
    # GX's own Data Docs page of the validation, beside its result
    docs = storage.read_bytes(rec["data_docs_key"]).decode()
    assert rec["data_docs_uri"] == storage.uri(rec["data_docs_key"]) and "<html" in docs and "flights.landing" in docs


def test_rerunning_validation_is_idempotent(storage_root, flights):
    p = week(0)
    land_partition(flights, p, replay=True)
    first = validate_partition(flights, p, max_bad_row_share=0.01)
    again = validate_partition(flights, p, max_bad_row_share=0.01)
    assert first == again
    assert len(list_validated("flights")) == 1
    assert get_storage().list("validated/flights/") == [
        f"validated/flights/{p.id}/{name}" for name in ("data.parquet", "data_docs.html", "gx_result.json", "validation.json")
    ]


def test_a_few_bad_rows_are_quarantined_with_reasons_and_the_rest_passes(storage_root, flights):
    p = week(0)
    plant_fault(flights, p, "some_bad_rows")
    rec = validate_partition(flights, p, max_bad_row_share=0.01)
    assert rec["rows_quarantined"] == 7
    assert rec["rows_validated"] == rec["rows_landed"] - 7
    rows = read_parquet(get_storage(), rec["quarantine_uri"].split("/zones/", 1)[1])
    reasons = set(rows["_quarantine_reason"])
    assert reasons == {"expect_column_values_to_be_between[distance]", "expect_column_values_to_be_in_set[carrier]"}
    validated = read_parquet(get_storage(), p.validated_key)
    assert (validated["distance"] > 0).all() and "ZZ" not in set(validated["carrier"])


@pytest.mark.parametrize(
    "fault,expected",
    [
        ("truncated", "expect_table_row_count_to_be_between"),
        ("empty", "expect_table_row_count_to_be_between"),
        ("distance_in_km", "expect_column_mean_to_be_between[distance]"),
        ("renamed_column", "expect_table_columns_to_match_set"),
        ("numbers_as_text", "expect_column_values_to_be_of_type[dep_delay]"),
        ("stale_rows", "expect_column_max_to_be_between[time_hour]"),
        ("corrupt_file", "readable_parquet"),
    ],
)
def test_broken_batches_are_quarantined_whole_and_nothing_is_lost(storage_root, flights, fault, expected):
    p = week(1)
    plant_fault(flights, p, fault)
    record = assert_quarantined_whole(flights, p, expected)
    assert (fault == "corrupt_file") == (record["gx_result"] is None)


def assert_quarantined_whole(usecase, p: Partition, expected: str) -> dict:
    """Validate `p`, expecting the whole batch in quarantine for `expected`; returns the quarantine record."""
    storage = get_storage()
    landed = storage.read_bytes(p.landing_key)
    with pytest.raises(BatchQuarantined) as err:
        validate_partition(usecase, p, max_bad_row_share=0.01)
    message = str(err.value)
    assert p.id in message and expected in message and "report.md" in message, message
    # the landed input is untouched, and quarantine holds a byte-identical copy plus the evidence
    assert storage.read_bytes(p.landing_key) == landed
    prefix = p.quarantine_prefix(sha256(landed))
    assert storage.read_bytes(f"{prefix}/data.parquet") == landed
    record = json.loads(storage.read_bytes(f"{prefix}/validation.json"))
    assert record["status"] == "quarantined" and any(expected in f for f in record["failures"])
    assert "QUARANTINED" in storage.read_bytes(f"{prefix}/report.md").decode()
    if record["gx_result"] is not None:  # GX's Data Docs page of the failed validation, with its statistics
        docs = storage.read_bytes(record["data_docs_key"]).decode()
        assert record["data_docs_key"] == f"{prefix}/data_docs.html" and "<html" in docs
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", docs))
        failed = record["gx_result"]["statistics"]["unsuccessful_expectations"]
        assert failed > 0 and f"Unsuccessful Expectations {failed} " in text
    # nothing was published for training
    assert not storage.exists(p.validated_key) and list_validated("flights") == []
    return record


def _as_csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def _truncated_bytes(df: pd.DataFrame) -> bytes:
    data = parquet_bytes(df)
    return data[: len(data) * 9 // 10]  # an upload cut off before the footer


def _footer_claims_millions_of_rows(df: pd.DataFrame) -> bytes:
    """A small file (all-null columns compress to nothing) that would decode to 50 million rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({c: pa.nulls(50_000_000, pa.int64()) for c in ("year", "month")}), buf)
    assert len(buf.getvalue()) < 1_000_000
    return buf.getvalue()


BAD_LANDINGS = {
    # fault: (what upstream delivers, made from the interval's correct rows; what the failure names)
    "truncated_bytes": (_truncated_bytes, "no footer after"),
    "dropped_column": (lambda d: parquet_bytes(d.drop(columns=["dep_delay"])), "missing columns ['dep_delay']"),
    "int_as_float": (
        lambda d: parquet_bytes(d.assign(flight=d["flight"].astype("float64"))),
        "expect_column_values_to_be_of_type[flight]",
    ),
    "temp_in_kelvin": (
        lambda d: parquet_bytes(d.assign(temp=(d["temp"] - 32) * 5 / 9 + 273.15)),
        "expect_column_mean_to_be_between[temp]",
    ),
    "required_column_all_null": (
        lambda d: parquet_bytes(d.assign(carrier=None)),
        "expect_column_values_to_not_be_null[carrier]",
    ),
    "nullable_column_all_null": (
        lambda d: parquet_bytes(d.assign(arr_delay=np.nan)),
        "expect_column_proportion_of_non_null_values_to_be_between[arr_delay]",
    ),
    "extreme_values": (lambda d: parquet_bytes(d.assign(dep_delay=1e300)), "expect_column_values_to_be_between[dep_delay]"),
    "duplicated_keys": (
        lambda d: parquet_bytes(pd.concat([d.head(4000), d.head(1000)], ignore_index=True)),
        "expect_compound_columns_to_be_unique[year,month,day,carrier,flight,origin]",
    ),
    "zero_bytes": (lambda d: b"", "the file is empty (0 bytes)"),
    "zero_rows": (lambda d: parquet_bytes(d.head(0)), "expect_table_row_count_to_be_between: observed 0"),
    "csv_named_parquet": (_as_csv, "it starts with text b'year,month,day"),
    "footer_claims_50m_rows": (_footer_claims_millions_of_rows, "parquet_footer: declares 50,000,000 rows"),
}


@pytest.mark.parametrize("fault", BAD_LANDINGS)
def test_bad_landing_data_is_quarantined_whole_naming_the_problem(storage_root, flights, fault):
    make, expected = BAD_LANDINGS[fault]
    p = week(2)
    get_storage().write_bytes(p.landing_key, make(flights.load_interval(p.start, p.end)), create_only=True)
    assert_quarantined_whole(flights, p, expected)


def test_a_duplicated_batch_is_quarantined(storage_root, flights):
    land_partition(flights, week(0), replay=True)
    validate_partition(flights, week(0), max_bad_row_share=0.01)
    plant_fault(flights, week(1), f"duplicate_of:{week(0).id}")
    with pytest.raises(BatchQuarantined, match=rf"unique_batch.*{week(0).id}"):
        validate_partition(flights, week(1), max_bad_row_share=0.01)


def test_too_many_bad_rows_fail_the_batch(storage_root, flights):
    p = week(0)
    plant_fault(flights, p, "some_bad_rows")
    with pytest.raises(BatchQuarantined, match=r"bad_row_share: 7 of \d+ rows"):
        validate_partition(flights, p, max_bad_row_share=0.0005)


def test_a_fixed_batch_passes_after_clearing(storage_root, flights):
    """Upstream re-delivers a fixed file: the rerun validates it and the old quarantine record stays."""
    p = week(1)
    plant_fault(flights, p, "truncated")
    with pytest.raises(BatchQuarantined):
        validate_partition(flights, p, max_bad_row_share=0.01)
    storage = get_storage()
    (storage_root / p.landing_key).unlink()  # the upstream owner replaces its delivery
    land_partition(flights, p, replay=True)
    rec = validate_partition(flights, p, max_bad_row_share=0.01)
    assert rec["status"] == "passed"
    assert len([k for k in storage.list(f"quarantine/flights/{p.id}/") if k.endswith("validation.json")]) == 1


def test_missing_landing_partition_is_named(storage_root, flights):
    with pytest.raises(FileNotFoundError, match=week(3).id):
        validate_partition(flights, week(3), max_bad_row_share=0.01)


def test_wrong_types_in_a_row_level_check_do_not_crash_the_gate(storage_root, flights):
    p = week(0)
    df = flights.load_interval(p.start, p.end).assign(distance=lambda d: d["distance"].astype("str"))
    from include.data.storage import write_parquet

    write_parquet(get_storage(), p.landing_key, df, create_only=True)
    with pytest.raises(BatchQuarantined, match=r"expect_column_values_to_be_of_type\[distance\]"):
        validate_partition(flights, p, max_bad_row_share=0.01)
    storage = get_storage()
    assert not storage.exists(p.validated_key)  # the whole batch was held back
    # and the landing input is untouched: the text column is still there, as delivered
    assert read_parquet(storage, p.landing_key)["distance"].tolist() == df["distance"].tolist()


def test_a_passed_partition_replaced_by_a_broken_delivery_is_withdrawn(storage_root, flights):
    p = week(0)
    land_partition(flights, p, replay=True)
    validate_partition(flights, p, max_bad_row_share=0.01)
    (storage_root / p.landing_key).unlink()  # upstream re-delivers, and this time it is broken
    plant_fault(flights, p, "renamed_column")
    with pytest.raises(BatchQuarantined):
        validate_partition(flights, p, max_bad_row_share=0.01)
    assert list_validated("flights") == [], "training must not keep using the replaced delivery"
    record = json.loads(get_storage().read_bytes(p.validation_key))
    assert record["status"] == "superseded" and get_storage().exists(p.validated_key)


def test_a_quarantined_partition_is_revalidated_only_after_a_fix_and_keeps_the_evidence(storage_root, flights):
    from include.data.revalidate import revalidate_quarantined

    p, storage = week(1), get_storage()
    plant_fault(flights, p, "truncated")
    with pytest.raises(BatchQuarantined):
        validate_partition(flights, p, max_bad_row_share=0.01)
    broken_sha = sha256(storage.read_bytes(p.landing_key))

    with pytest.raises(ValueError, match=r"never quarantined; quarantined: dt=2013-04-09T0400Z"):
        revalidate_quarantined(flights, week(0).id, refetch=False, max_bad_row_share=0.01)
    with pytest.raises(ValueError, match="is the one that was quarantined"):
        revalidate_quarantined(flights, p.id, refetch=False, max_bad_row_share=0.01)
    assert list_validated("flights") == []

    rec = revalidate_quarantined(flights, p.id, refetch=True, max_bad_row_share=0.01)
    assert rec["status"] == "passed" and rec["partition"] == p.id and rec["rows_validated"] > 5000
    assert [r["partition"] for r in list_validated("flights")] == [p.id]
    kept = storage.read_bytes(f"{p.quarantine_prefix(broken_sha)}/data.parquet")
    assert sha256(kept) == broken_sha, "the quarantined input is kept as evidence"
    again = revalidate_quarantined(flights, p.id, refetch=False, max_bad_row_share=0.01)
    assert again == rec, "a second run finds the partition already passed with this input"


def snapshot(storage) -> dict[str, bytes]:
    return {k: storage.read_bytes(k) for k in storage.list("")}


def test_the_same_delivery_again_is_a_no_op(storage_root, flights, monkeypatch):
    p, storage = week(0), get_storage()
    land_partition(flights, p, replay=True)
    first = validate_partition(flights, p, max_bad_row_share=0.01)
    storage.write_bytes(p.landing_key, storage.read_bytes(p.landing_key))  # upstream delivers the same bytes again
    before = snapshot(storage)

    def no_gx(*args):
        raise AssertionError("an input that already passed must not be validated again")

    monkeypatch.setattr("include.data.gate.run_suite", no_gx)
    assert validate_partition(flights, p, max_bad_row_share=0.01) == first
    assert snapshot(storage) == before, "nothing is rewritten"


def test_a_redelivery_with_new_content_is_validated_under_its_own_hash_and_the_old_rows_stay(storage_root, flights):
    p, storage = week(0), get_storage()
    land_partition(flights, p, replay=True)
    old = validate_partition(flights, p, max_bad_row_share=0.01)
    old_rows = storage.read_bytes(old["validated_key"])

    (storage_root / p.landing_key).unlink()  # upstream replaces its delivery: 25 late flights removed
    storage.write_bytes(p.landing_key, parquet_bytes(flights.load_interval(p.start, p.end).iloc[:-25]), create_only=True)
    new = validate_partition(flights, p, max_bad_row_share=0.01)

    assert new["status"] == "passed" and new["supersedes"] == old["landing_sha256"] != new["landing_sha256"]
    assert new["validated_key"] == f"{p.validated_prefix(new['landing_sha256'])}/data.parquet" != old["validated_key"]
    assert new["rows_validated"] == old["rows_validated"] - 25
    # training sees the new input's rows only, never a mix
    assert list_validated("flights") == [new]
    assert len(read_validated(list_validated("flights"))) == new["rows_validated"]
    # the old input's rows stay where its record (and any model's lineage) points, unchanged
    assert storage.read_bytes(old["validated_key"]) == old_rows
    assert len(read_validated([old])) == old["rows_validated"]
    assert validate_partition(flights, p, max_bad_row_share=0.01) == new, "a rerun is a no-op"


def test_a_backfill_is_validated_like_any_other_and_leaves_the_training_window_alone(storage_root, flights):
    from include.model.dataset import select_partitions

    for i in (1, 2, 3):
        land_partition(flights, week(i), replay=True)
        validate_partition(flights, week(i), max_bad_row_share=0.01)
    window = select_partitions(list_validated("flights"), window_weeks=3, eval_partitions=1, min_partitions=2)

    land_partition(flights, week(0), replay=True)  # the oldest interval arrives last
    rec = validate_partition(flights, week(0), max_bad_row_share=0.01)

    assert rec["status"] == "passed" and rec["rows_quarantined"] == 0
    assert [r["partition"] for r in list_validated("flights")] == [week(i).id for i in range(4)]
    assert select_partitions(list_validated("flights"), window_weeks=3, eval_partitions=1, min_partitions=2) == window


# --- The history checks (include/data/history.py) on a replay of 2013 ---------------------------

YEAR_WEEKS = 52  # the calendar's 53rd interval (31 Dec – 7 Jan) holds one day of data: not a full week
WINTER, SUMMER = datetime(2013, 12, 10, tzinfo=NY), datetime(2013, 7, 16, tzinfo=NY)


def interval(start: datetime) -> Partition:
    return Partition("flights", start, start + timedelta(weeks=1))


@pytest.fixture(scope="module")
def year_2013(tmp_path_factory, flights):
    """Every full week of 2013 landed and put through the gate in order, the history growing as
    each passes (the default LOOP_GATE_HISTORY_PARTITIONS and _MIN_PARTITIONS). Yields the storage
    root and each week's outcome: its record, or the failures that quarantined it."""
    from include.settings import get_settings

    root = tmp_path_factory.mktemp("year")
    outcomes = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOP_STORAGE_URI", str(root))
        get_settings.cache_clear()
        for start, end in flights.calendar.intervals()[:YEAR_WEEKS]:
            p = Partition("flights", start, end)
            land_partition(flights, p, replay=True)
            try:
                outcomes[p.id] = validate_partition(flights, p, max_bad_row_share=0.01)
            except BatchQuarantined as exc:
                outcomes[p.id] = str(exc)
    get_settings.cache_clear()
    yield root, outcomes


def test_a_year_of_real_weeks_passes_the_gate_with_its_history_checks(year_2013):
    _, outcomes = year_2013
    quarantined = {pid: out for pid, out in outcomes.items() if isinstance(out, str)}
    assert len(outcomes) == YEAR_WEEKS and quarantined == {}, "\n".join(quarantined.values())
    records = list(outcomes.values())
    for i, rec in enumerate(records):
        if i < 6:  # the first weeks: too little history, and the record says so
            assert rec["history"]["partitions"] == [] and "history checks absent" in rec["history"]["note"]
        else:
            assert rec["history"]["partitions"] == [r["partition"] for r in records[max(0, i - 8) : i]]
            assert rec["history"]["note"].startswith("history checks against the last")


def test_a_gate_started_in_spring_quarantines_nothing_while_its_history_grows(storage_root, flights):
    """The year's replay starts in January's calm; a deployment may start anywhere. From the end of
    April, through the spring's quickest change (a short history there once quarantined a late-May
    week on its dew point), every week passes, held to 6, 7, then 8 partitions."""
    held = []
    for start, end in flights.calendar.intervals()[16:31]:  # 23 April … 6 August
        p = Partition("flights", start, end)
        land_partition(flights, p, replay=True)
        held.append(len(validate_partition(flights, p, max_bad_row_share=0.01)["history"]["partitions"]))
    assert held == [0] * 6 + [6, 7] + [8] * 7


def test_history_expectations_are_batch_level_in_the_same_suite_and_name_their_history(year_2013, flights):
    from include.data.history import checked_columns, load_history

    root, outcomes = year_2013
    p = interval(SUMMER)
    history, _ = load_history(list(outcomes.values()), p, flights.contract, n=8, min_partitions=3, storage=None)
    suite = build_suite(flights.contract, p, history)
    recent = [e for e in suite.expectations if "history" in e.meta]
    assert {e.meta["level"] for e in recent} == {BATCH}
    assert {e.meta["history"]["check"] for e in recent} == {
        "missing share",
        "quantiles",
        "values seen",
        "category shares",
        "distinct values",
    }
    assert {e.column for e in recent} == {c.name for c in checked_columns(flights.contract)}
    assert not {"year", "month", "day", "time_hour"} & {e.column for e in recent}  # calendar columns opt out
    assert all(e.meta["history"]["against"].startswith("the last 8 validated partitions") for e in recent)
    fixed = build_suite(flights.contract, p)
    assert len(suite.expectations) > len(fixed.expectations) and "history" not in str([e.meta for e in fixed.expectations])


def test_partitions_validated_before_profiles_existed_are_profiled_from_their_rows(year_2013, flights):
    from include.data.history import load_history

    root, outcomes = year_2013
    p = interval(SUMMER)
    old = [{k: v for k, v in r.items() if k != "profile"} for r in outcomes.values()]  # as recorded before this change
    with_profiles, _ = load_history(list(outcomes.values()), p, flights.contract, n=4, min_partitions=3, storage=None)
    profiled, _ = load_history(old, p, flights.contract, n=4, min_partitions=3, storage=get_storage(str(root)))
    assert profiled == with_profiles


def hhmm_to_minutes(x):
    return x // 100 * 60 + x % 100


def scale(factor):
    return lambda x: x * factor


F_TO_C = lambda x: (x - 32) * 5 / 9  # noqa: E731
F_TO_K = lambda x: (x - 32) * 5 / 9 + 273.15  # noqa: E731
# The unit changes a column of the flights contract can meet (`year`, `month`, `day` move with the
# calendar and are left out of the history; `hour`, `minute` and `flight` have no unit; `engines`
# and `seats` are counts: they meet the generic factors below).
REALISTIC = {
    **{
        c: [("HHMM → minutes after midnight", hhmm_to_minutes)]
        for c in ("dep_time", "sched_dep_time", "arr_time", "sched_arr_time")
    },
    **{c: [("minutes → hours", scale(1 / 60)), ("minutes → seconds", scale(60))] for c in ("dep_delay", "arr_delay", "air_time")},
    "distance": [("miles → km", scale(1.609344)), ("miles → nautical miles", scale(0.868976))],
    **{c: [("°F → °C", F_TO_C), ("°F → K", F_TO_K)] for c in ("temp", "dewp")},
    "humid": [("% → fraction", scale(1 / 100))],
    "wind_dir": [("degrees → radians", scale(np.pi / 180))],
    **{
        c: [("mph → km/h", scale(1.609344)), ("mph → m/s", scale(0.44704)), ("mph → knots", scale(0.868976))]
        for c in ("wind_speed", "wind_gust")
    },
    "precip": [("inches → mm", scale(25.4)), ("inches → cm", scale(2.54))],
    "pressure": [("hPa → inHg", scale(0.02953)), ("hPa → kPa", scale(0.1))],
    "visib": [("miles → km", scale(1.609344)), ("miles → m", scale(1609.344))],
    "plane_year": [("year → two digits", lambda x: x % 100)],
}
QUANTITIES = (
    *("dep_delay", "arr_delay", "air_time", "distance", "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust"),
    *("precip", "pressure", "visib", "plane_year", "engines", "seats"),
)
GENERIC = {
    "×1.609344": 1.609344,
    "÷1.609344": 1 / 1.609344,
    "×0.453592": 0.453592,
    "×2.54": 2.54,
    "÷60": 1 / 60,
    "×0.3048": 0.3048,
}


def caught_columns(record: dict, n_rows: int, max_bad_row_share: float = 0.01) -> dict[str, list[str]]:
    """Per column, what in a quarantine record alone quarantines the batch for it: a batch failure
    naming the column, or row checks of the column failing more than the allowed share of rows."""
    caught: dict[str, list[str]] = {}
    for failure in record["failures"]:
        m = re.match(r"^(\w+)\[([^\]]+)\]", failure)
        if m:
            caught.setdefault(m.group(2), []).append(failure)
    for r in record["gx_result"]["results"]:
        cfg = r["expectation_config"]
        column, bad = cfg["kwargs"].get("column"), (r.get("result") or {}).get("unexpected_count") or 0
        if cfg["meta"].get("level") == ROW and column and bad > max_bad_row_share * n_rows:
            caught.setdefault(column, []).append(f"{cfg['type']}[{column}]: {bad} rows")
    return caught


def quarantine_record(flights, p: Partition, df: pd.DataFrame) -> dict:
    """Deliver `df` for `p` (replacing the previous delivery) and return its quarantine record."""
    storage = get_storage()
    if storage.exists(p.landing_key):
        (storage.root / p.landing_key).unlink()  # upstream replaces its delivery
    storage.write_bytes(p.landing_key, parquet_bytes(df), create_only=True)
    with pytest.raises(BatchQuarantined) as err:
        validate_partition(flights, p, max_bad_row_share=0.01)
    assert p.id in str(err.value)
    return json.loads(storage.read_bytes(f"{p.quarantine_prefix(sha256(storage.read_bytes(p.landing_key)))}/validation.json"))


@pytest.fixture
def week_with_history(year_2013, storage_root, request):
    """A storage root holding the 8 validated weeks before `request.param` (copied from the
    replay), and that week's partition."""
    import shutil

    root, outcomes = year_2013
    p = interval(request.param)
    before = [pid for pid, rec in outcomes.items() if datetime.fromisoformat(rec["interval_start"]) < p.start][-8:]
    for pid in before:
        shutil.copytree(root / "validated" / "flights" / pid, storage_root / "validated" / "flights" / pid)
    return p


# Generic factors no check can tell from a season, in both weeks: `humid` is computed (no value
# grid) and its quartiles span 25-92 % in two months, so only a factor of ten or more shows (the
# realistic % → fraction does); a ×1.6 `air_time` looks like a week of longer routes.
NOT_SEPARABLE = {"air_time ×1.609344", "humid ÷1.609344", "humid ×0.453592", "humid ×0.3048"}


@pytest.mark.parametrize("week_with_history", [WINTER, SUMMER], ids=["winter", "summer"], indirect=True)
def test_a_unit_change_in_any_numeric_column_is_quarantined_naming_the_column(flights, week_with_history):
    """Each run changes the unit of many columns at once (the checks are per column, and a column
    counts as caught only by a failure that alone quarantines the batch): the realistic changes of
    each column, then the generic factors on every quantity column."""
    p, clean = week_with_history, flights.load_interval(week_with_history.start, week_with_history.end)
    runs = [{c: convs[k] for c, convs in REALISTIC.items() if k < len(convs)} for k in range(3)]
    runs += [{c: (name, scale(f)) for c in QUANTITIES} for name, f in GENERIC.items()]
    missed, unchanged, caught_by = [], [], {}
    for run in runs:
        df = clean.copy()
        for column, (_, convert) in run.items():
            df[column] = convert(df[column])
        record = quarantine_record(flights, p, df)
        caught = caught_columns(record, len(df))
        for column, (name, _) in run.items():
            if df[column].equals(clean[column]):
                unchanged.append(f"{column} {name}")
            elif column not in caught:
                missed.append(f"{column} {name}")
            else:
                caught_by[f"{column} {name}"] = sorted({f.split("[")[0] for f in caught[column]})
        if run is runs[0]:  # the report says what moved, by how much, against which history
            report = get_storage().read_bytes(f"{p.quarantine_prefix(sha256(parquet_bytes(df)))}/report.md").decode()
            # °F → °C: in December the quartiles may stay inside a cold autumn's range, the grid of values does not
            moved = r"(median|25th percentile|75th percentile) of temp -?[\d.]+ outside -?[\d.]+–[\d.]+"
            off_grid = r"\d+% of the values of temp are among the \d+ values seen before, at least 20% expected"
            assert re.search(rf"\[temp\]: ({moved}|{off_grid}).* vs the last 8 validated partitions \(dt=", report), report
    print("\n".join(f"{k}: {', '.join(v)}" for k, v in sorted(caught_by.items())))
    assert unchanged == [], unchanged
    assert set(missed) == NOT_SEPARABLE, f"not quarantined: {missed}"


@pytest.mark.parametrize("week_with_history", [WINTER, SUMMER], ids=["winter", "summer"], indirect=True)
def test_a_column_that_empties_is_quarantined_naming_it(flights, week_with_history):
    """Every nullable column at once, wholly null and then 95 % null: each is named by its
    missing-share check against the history (95 % only where the history's share stays under 50 %)."""
    p, clean = week_with_history, flights.load_interval(week_with_history.start, week_with_history.end)
    history = [r["profile"] for r in list_validated("flights")]
    nullable = [c.name for c in flights.contract.columns if c.nullable]
    usual = {c: max(h["columns"][c]["missing"] / h["rows"] for h in history) for c in nullable}
    keep = pd.Series(np.random.default_rng(0).random(len(clean)) >= 0.95, index=clean.index)
    for share, kept, columns in [
        ("100%", keep & False, nullable),
        ("95%", keep, [c for c in nullable if usual[c] < 0.5]),
    ]:
        df = clean.assign(**{c: clean[c].where(kept) for c in columns})
        record = quarantine_record(flights, p, df)
        named = {
            c
            for c in columns
            for f in record["failures"]
            if f.startswith(f"expect_column_proportion_of_non_null_values_to_be_between[{c}]:")
            and "vs the last 8 validated partitions" in f
        }
        assert named == set(columns), f"{share} null, not named: {sorted(set(columns) - named)}"
    assert [c for c in nullable if usual[c] >= 0.5] == ["wind_gust"]  # normally 55-97 % empty: only wholly null is news
    report = get_storage().read_bytes(f"{p.quarantine_prefix(sha256(parquet_bytes(df)))}/report.md").decode()
    assert "missing share of dewp 9" in report and "- history checks against the last 8 validated partitions" in report
