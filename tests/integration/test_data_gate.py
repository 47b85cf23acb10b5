"""Real GX validation of real partitions: what passes, what is quarantined, and that nothing is lost."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from include.data.gate import BatchQuarantined, validate_partition
from include.data.partitions import Partition, land_partition, list_validated, sha256
from include.data.storage import get_storage, read_parquet
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
    storage = get_storage()
    landed = storage.read_bytes(p.landing_key)
    with pytest.raises(BatchQuarantined) as err:
        validate_partition(flights, p, max_bad_row_share=0.01)
    message = str(err.value)
    assert p.id in message and expected in message and "report.md" in message
    # the landed input is untouched, and quarantine holds a byte-identical copy plus the evidence
    assert storage.read_bytes(p.landing_key) == landed
    prefix = p.quarantine_prefix(sha256(landed))
    assert storage.read_bytes(f"{prefix}/data.parquet") == landed
    record = json.loads(storage.read_bytes(f"{prefix}/validation.json"))
    assert record["status"] == "quarantined" and any(expected in f for f in record["failures"])
    assert (fault == "corrupt_file") == (record["gx_result"] is None)
    assert "QUARANTINED" in storage.read_bytes(f"{prefix}/report.md").decode()
    # nothing was published for training
    assert not storage.exists(p.validated_key) and list_validated("flights") == []


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
