"""A landing file far larger than a partition can be is refused before it is read, so it can never
exhaust a worker's memory, and it stays where it was delivered. No GX, no server: the refusal
comes before either."""

from __future__ import annotations

import os
import resource
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from include.data.gate import LandingRefused, validate_partition
from include.data.partitions import Partition
from include.data.storage import get_storage, write_parquet

START = datetime(2013, 4, 2, tzinfo=ZoneInfo("America/New_York"))
PARTITION = Partition("flights", START, START + timedelta(weeks=1))
GIB = 1 << 30


def test_a_landing_file_of_several_gb_is_refused_unread_and_left_as_delivered(storage_root, flights):
    path = storage_root / PARTITION.landing_key
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.truncate(3 * GIB)  # sparse: 3 GiB to every reader, no disk used
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    with pytest.raises(LandingRefused) as err:
        validate_partition(flights, PARTITION, max_bad_row_share=0.01)

    message = str(err.value)
    assert PARTITION.id in message and str(path) in message and "3,221,225,472 bytes" in message
    assert "LOOP_MAX_LANDING_BYTES" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before < GIB, "the file was read into memory"
    # byte-identical: still 3 GiB and still all holes (any write would have allocated blocks)
    assert os.stat(path).st_size == 3 * GIB and os.stat(path).st_blocks == 0
    assert get_storage().list("quarantine/") == [] and get_storage().list("validated/") == [], "nothing is copied"


def test_the_landing_size_limit_is_a_setting(storage_root, flights, monkeypatch):
    from include.settings import get_settings

    storage = get_storage()
    write_parquet(storage, PARTITION.landing_key, flights.load_interval(PARTITION.start, PARTITION.end), create_only=True)
    landed = storage.read_bytes(PARTITION.landing_key)
    monkeypatch.setenv("LOOP_MAX_LANDING_BYTES", str(len(landed) - 1))
    get_settings.cache_clear()
    with pytest.raises(LandingRefused, match=rf"{len(landed):,} bytes, more than the {len(landed) - 1:,} allowed"):
        validate_partition(flights, PARTITION, max_bad_row_share=0.01)
    assert storage.read_bytes(PARTITION.landing_key) == landed
