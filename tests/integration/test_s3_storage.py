"""The storage layer on S3 through boto3, against a real S3 endpoint on loopback (moto's server)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from include.data.gate import validate_partition
from include.data.partitions import Partition, land_partition, list_validated
from include.data.storage import ObjectExistsError, S3Storage

pytestmark = pytest.mark.integration


def test_s3_roundtrip_listing_and_create_only(s3):
    assert isinstance(s3, S3Storage)
    uri = s3.write_bytes("a/b.bin", b"one", create_only=True)
    assert uri == "s3://loop-test/zones/a/b.bin"
    assert s3.exists("a/b.bin") and not s3.exists("a/missing")
    with pytest.raises(ObjectExistsError, match="refusing to overwrite s3://loop-test/zones/a/b.bin"):
        s3.write_bytes("a/b.bin", b"two", create_only=True)
    assert s3.read_bytes("a/b.bin") == b"one"
    s3.write_bytes("a/c.bin", b"3")
    assert s3.list("a/") == ["a/b.bin", "a/c.bin"]
    with pytest.raises(FileNotFoundError, match="s3://loop-test/zones/nope"):
        s3.read_bytes("nope")
    s3.delete("a/b.bin")
    s3.delete("a/b.bin")  # already gone: no error
    assert s3.list("a/") == ["a/c.bin"] and not s3.exists("a/b.bin")


def test_the_data_gate_runs_unchanged_on_s3(s3, flights):
    start = datetime(2013, 8, 6, tzinfo=ZoneInfo("America/New_York"))
    p = Partition("flights", start, start + timedelta(weeks=1))
    assert land_partition(flights, p, replay=True).startswith("s3://loop-test/zones/landing/")
    record = validate_partition(flights, p, max_bad_row_share=0.01)
    assert record["validated_uri"] == f"s3://loop-test/zones/{p.validated_key}"
    assert [r["partition"] for r in list_validated("flights")] == [p.id]


def test_the_inference_log_goes_to_s3_too(s3, flights):
    from include.data.inference_log import read_inference_log
    from include.local.traffic import interval_records
    from include.serving.inference_log import InferenceLog

    start = datetime(2013, 3, 4, tzinfo=ZoneInfo("UTC"))
    records = interval_records(flights, start, start + timedelta(hours=12))[:20]
    for r in records:
        r["time_hour"] = datetime.fromisoformat(r["time_hour"])
        r["request_id"] = f"req-{r['flight']}"
    sink = InferenceLog(flights, "4", "green", flush_seconds=3600)
    sink.append(records, flights.encode_records(records), [0.25] * 20, [False] * 20)
    sink.close()
    assert sink.written == 20
    assert all(k.startswith("inference/flights/dt=2013-03-04/") for k in s3.list("inference/"))
    log = read_inference_log(flights, start, start + timedelta(days=1))
    assert len(log) == 20 and set(log["model_version"]) == {"4"}

    # a second worker's part, then compaction: one merged part; the replaced ones go once it is old enough
    from include.data.inference_log import GRACE, compact_day

    sink = InferenceLog(flights, "4", "blue", flush_seconds=3600)
    sink.append(records[:5], flights.encode_records(records[:5]), [0.5] * 5, [True] * 5)
    sink.close()
    t = datetime(2026, 12, 7, tzinfo=ZoneInfo("UTC"))
    day = start.date()
    assert compact_day(flights, day, s3, now=lambda: t)["parts"] == 2
    assert compact_day(flights, day, s3, now=lambda: t + GRACE)["deleted"] == 2
    assert [k.rsplit("/", 1)[1][:10] for k in s3.list("inference/")] == ["_compacted", "compacted-"]
    assert len(read_inference_log(flights, start, start + timedelta(days=1))) == 25
