"""Real GX validation of real partitions: what passes, what is quarantined, and that nothing is lost."""

from __future__ import annotations

import io
import json
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


def test_rerunning_validation_is_idempotent(storage_root, flights):
    p = week(0)
    land_partition(flights, p, replay=True)
    first = validate_partition(flights, p, max_bad_row_share=0.01)
    again = validate_partition(flights, p, max_bad_row_share=0.01)
    assert first == again
    assert len(list_validated("flights")) == 1
    assert get_storage().list("validated/flights/") == [
        f"validated/flights/{p.id}/{name}" for name in ("data.parquet", "gx_result.json", "validation.json")
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
    "int_as_float": (lambda d: parquet_bytes(d.assign(flight=d["flight"].astype("float64"))), "expect_column_values_to_be_of_type[flight]"),
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
    from include.data.gate import revalidate_quarantined

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
