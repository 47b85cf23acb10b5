"""S3 unavailable: an endpoint that stalls (moto paused with SIGSTOP, so its in-memory data survives
the outage) or is gone (moto stopped; a restarted moto starts empty, so data kept across a real
restart cannot be shown with it). Every storage call fails within its bounded retries with
`StorageUnavailableError` naming the endpoint and the bucket, and after the outage the landed,
validated and quarantined data is as it was."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from include.data.gate import BatchQuarantined, LandingRefused, validate_partition
from include.data.partitions import Partition, land_partition, list_validated, read_validated
from include.data.storage import StorageUnavailableError, parquet_bytes
from include.local.faults import plant_fault, truncated

pytestmark = [pytest.mark.faults, pytest.mark.slow]
NY = ZoneInfo("America/New_York")
TIMEOUT, ATTEMPTS = 1, 2
# per attempt at most a timeout each to connect, send and read; botocore's backoff between attempts
# (at most 2 s after the first); slack for a loaded machine. Before the fix: 3 minutes per call.
FAIL_WITHIN = ATTEMPTS * 3 * TIMEOUT + 2 + 3


def week(i: int) -> Partition:
    start = datetime(2013, 9, 3, tzinfo=NY) + timedelta(weeks=i)
    return Partition("flights", start, start + timedelta(weeks=1))


@pytest.fixture
def own_s3(start_moto, use_s3, monkeypatch):
    """A moto server of this test's own (it will be paused or stopped), with short S3 timeouts."""
    monkeypatch.setenv("LOOP_S3_TIMEOUT_SECONDS", str(TIMEOUT))
    monkeypatch.setenv("LOOP_S3_MAX_ATTEMPTS", str(ATTEMPTS))
    proc, url = start_moto()
    return proc, url, use_s3(url)


def snapshot(storage) -> dict[str, bytes]:
    return {k: storage.read_bytes(k) for k in storage.list("")}


def fails_fast_naming(url: str, call) -> str:
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as err:
        call()
    assert time.monotonic() - started < FAIL_WITHIN, "the call hung instead of failing"
    message = str(err.value)
    assert url in message and "'loop-test'" in message and f"after {ATTEMPTS} attempt(s)" in message, message
    return message


def test_a_stalled_s3_endpoint_fails_fast_naming_it_and_the_data_survives(own_s3, flights):
    proc, url, storage = own_s3
    land_partition(flights, week(0), replay=True)
    validate_partition(flights, week(0), max_bad_row_share=0.01)
    plant_fault(flights, week(1), "renamed_column")
    with pytest.raises(BatchQuarantined):
        validate_partition(flights, week(1), max_bad_row_share=0.01)
    before = snapshot(storage)
    assert any(k.startswith("quarantine/") for k in before) and any(k.startswith("validated/") for k in before)

    new = week(2)
    new_rows = flights.load_interval(new.start, new.end)
    proc.send_signal(signal.SIGSTOP)  # the endpoint accepts connections but never answers
    try:
        fails_fast_naming(url, lambda: land_partition(flights, new, replay=True))
        fails_fast_naming(url, lambda: validate_partition(flights, week(0), max_bad_row_share=0.01))
        fails_fast_naming(url, lambda: list_validated("flights"))
        fails_fast_naming(url, lambda: read_validated([{"validated_key": week(0).validated_key, "validated_sha256": "-"}]))
        fails_fast_naming(url, lambda: plant_fault(flights, new, "truncated"))  # a PUT of a landing file
    finally:
        proc.send_signal(signal.SIGCONT)

    after = snapshot(storage)
    assert {k: after[k] for k in before} == before, "landed, validated and quarantined data is intact"
    # A PUT that timed out may still have been applied once the server resumed (S3 gives no
    # answer either way): if so, it is the whole object, never a part of it.
    assert set(after) - set(before) <= {new.landing_key}
    if new.landing_key in after:
        assert after[new.landing_key] == parquet_bytes(truncated(new_rows, flights))
    else:  # nothing arrived: the interval lands as usual now the endpoint answers
        land_partition(flights, new, replay=True)
        assert validate_partition(flights, new, max_bad_row_share=0.01)["status"] == "passed"


def test_a_stopped_s3_endpoint_fails_fast_naming_it(own_s3):
    proc, url, storage = own_s3
    storage.write_bytes("landing/x", b"1")
    proc.terminate()
    proc.wait(10)
    message = fails_fast_naming(url, lambda: storage.read_bytes("landing/x"))
    assert "Could not connect" in message
    fails_fast_naming(url, lambda: storage.write_bytes("landing/y", b"2"))


def test_an_oversized_landing_object_on_s3_is_refused_unread(s3, flights, monkeypatch):
    from include.settings import get_settings

    p = week(3)
    land_partition(flights, p, replay=True)
    landed = s3.read_bytes(p.landing_key)
    monkeypatch.setenv("LOOP_MAX_LANDING_BYTES", "100000")
    get_settings.cache_clear()
    with pytest.raises(
        LandingRefused, match=rf"s3://loop-test/zones/{p.landing_key} is {len(landed):,} bytes, more than the 100,000"
    ):
        validate_partition(flights, p, max_bad_row_share=0.01)
    assert s3.read_bytes(p.landing_key) == landed and s3.list(f"quarantine/flights/{p.id}/") == []
