from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from include.data.partitions import MissingPartitionError, Partition, land_partition

NY = ZoneInfo("America/New_York")


def test_partition_id_is_keyed_on_the_interval_start_in_utc():
    p = Partition("flights", datetime(2013, 1, 1, tzinfo=NY), datetime(2013, 1, 8, tzinfo=NY))
    assert p.id == "dt=2013-01-01T0500Z"
    assert p.landing_key == "landing/flights/dt=2013-01-01T0500Z/data.parquet"
    assert p.validated_key == "validated/flights/dt=2013-01-01T0500Z/data.parquet"
    assert p.days == 7


def test_same_interval_gives_same_keys_whatever_the_clock():
    a = Partition("flights", datetime(2013, 3, 12, tzinfo=NY), datetime(2013, 3, 19, tzinfo=NY))
    b = Partition("flights", datetime(2013, 3, 12, 4, tzinfo=UTC), datetime(2013, 3, 19, 4, tzinfo=UTC))
    assert a.id == b.id == "dt=2013-03-12T0400Z"  # after the DST switch, midnight is 04:00 UTC
    assert a.quarantine_prefix("ab" * 32) == "quarantine/flights/dt=2013-03-12T0400Z/abababababab"
    assert a.validated_prefix("ab" * 32) == "validated/flights/dt=2013-03-12T0400Z/abababababab"


@pytest.mark.parametrize(
    "start,end,message",
    [
        (datetime(2013, 1, 1), datetime(2013, 1, 8), "timezone-aware"),
        (datetime(2013, 1, 8, tzinfo=UTC), datetime(2013, 1, 8, tzinfo=UTC), "empty interval"),
        (datetime(2013, 1, 8, tzinfo=UTC), datetime(2013, 1, 1, tzinfo=UTC), "empty interval"),
    ],
)
def test_bad_intervals_are_rejected_with_a_clear_error(start, end, message):
    with pytest.raises(ValueError, match=message):
        Partition("flights", start, end)


def test_missing_partition_without_replay_names_the_uri(storage_root, flights):
    start = datetime(2013, 1, 1, tzinfo=NY)
    p = Partition("flights", start, start + timedelta(weeks=1))
    with pytest.raises(MissingPartitionError, match=r"no landing partition at file://.*dt=2013-01-01T0500Z"):
        land_partition(flights, p, replay=False)
