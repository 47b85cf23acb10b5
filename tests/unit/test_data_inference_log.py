"""The inference log's readers, compaction and label join against a real local storage root (the
writer lays down the parts): readers see every row once whether a compaction ran, stopped halfway,
or raced another and a writer; each logged prediction gets the outcome that landed later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from include.data.inference_layout import part_prefix
from include.data.inference_log import (
    COMPACTED,
    GRACE,
    MANIFEST,
    compact_closed_days,
    compact_day,
    compact_window,
    day_parts,
    join_labels,
    read_inference_log,
)
from include.serving.inference_log import InferenceLog
from tests.support.inference_log import END, START, event_days, hand_over, logged_ids, served_records


def test_compaction_merges_a_days_parts_and_readers_see_each_row_once(flights, records, storage):
    day_records = [r for r in records if r["time_hour"].astimezone(UTC).date() == START.date()]
    day = START.date()
    for i in range(4):  # four flushes: four parts of the day
        sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600)
        hand_over(sink, flights, day_records[i::5])
        sink.close()
    expected = sorted(r["request_id"] for i in range(4) for r in day_records[i::5])
    assert len(day_parts(flights, day, storage)) == 4

    done = compact_day(flights, day, storage)
    assert done["changed"] and done["parts"] == 4
    assert day_parts(flights, day, storage) == [part_prefix(flights.name, day) + done["compacted"]]
    assert logged_ids(flights, storage) == expected
    assert compact_day(flights, day, storage)["changed"] is False, "a rerun with nothing new does nothing"

    # a part written after the compaction is read beside the merged part, then merged by the next run
    sink = InferenceLog(flights, "2", "green", storage=storage, flush_seconds=3600)
    hand_over(sink, flights, day_records[4::5])
    sink.close()
    everything = sorted(r["request_id"] for r in day_records)
    assert len(day_parts(flights, day, storage)) == 2 and logged_ids(flights, storage) == everything
    again = compact_day(flights, day, storage)
    assert again["parts"] == 5 and len(day_parts(flights, day, storage)) == 1
    assert logged_ids(flights, storage) == everything


def test_the_monitors_compaction_leaves_one_part_per_day_of_its_window_and_no_other(flights, records, storage):
    for i in range(3):  # three flushes over the whole week: three parts on each of its days
        sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600)
        hand_over(sink, flights, records[i::3])
        sink.close()
    days = sorted(event_days(flights, records))
    window = (datetime.combine(days[1], datetime.min.time(), UTC), datetime.combine(days[4], datetime.min.time(), UTC))
    done = compact_window(flights, *window, storage)
    assert [d["event_day"] for d in done] == [d.isoformat() for d in days[1:4]]  # the end is exclusive
    assert all(d["changed"] for d in done)
    assert [len(day_parts(flights, d, storage)) for d in days] == [3, 1, 1, 1, 3, 3, 3][: len(days)]
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in records)
    assert not any(d["changed"] for d in compact_window(flights, *window, storage)), "a rerun changes nothing"


def test_a_compaction_that_stopped_before_its_manifest_changes_nothing_for_readers(flights, records, storage):
    day = START.date()
    day_records = [r for r in records if r["time_hour"].astimezone(UTC).date() == day]
    for i in range(2):
        sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600)
        hand_over(sink, flights, day_records[i::2])
        sink.close()
    prefix = part_prefix(flights.name, day)

    class StopsAtTheManifest:
        def __getattr__(self, name):
            return getattr(storage, name)

        def write_bytes(self, key, data, **kw):
            if key.endswith(MANIFEST):
                raise OSError("injected: killed before the manifest")
            return storage.write_bytes(key, data, **kw)

    with pytest.raises(OSError, match="before the manifest"):
        compact_day(flights, day, StopsAtTheManifest())
    assert any(k[len(prefix) :].startswith(COMPACTED) for k in storage.list(prefix)), "the merged part was written"
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in day_records), "an orphan merged part is not read"
    merged = compact_day(flights, day, storage)  # the retry writes the same merged part, then the manifest
    assert sum(k[len(prefix) :].startswith(COMPACTED) for k in storage.list(prefix)) == 1
    assert day_parts(flights, day, storage) == [prefix + merged["compacted"]]
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in day_records)


def test_compactions_racing_each_other_and_a_writer_leave_each_row_once(flights, records, storage):
    """A compaction reads the manifest; before it lists the parts, another compaction replaces the
    manifest and a worker writes a new part. Whichever manifest is written last, readers see
    every row once."""
    day = START.date()
    day_records = [r for r in records if r["time_hour"].astimezone(UTC).date() == day]
    groups = [day_records[i::4] for i in range(4)]

    def write(group):
        sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600)
        hand_over(sink, flights, group)
        sink.close()

    write(groups[0])
    write(groups[1])
    compact_day(flights, day, storage)
    write(groups[2])

    class Interleaved:
        """The storage as the slow compaction sees it: the rival runs just before its listing."""

        raced = False

        def __getattr__(self, name):
            return getattr(storage, name)

        def list(self, prefix):
            if not self.raced:
                self.raced = True
                assert compact_day(flights, day, storage)["parts"] == 3
                write(groups[3])
            return storage.list(prefix)

    slow = compact_day(flights, day, Interleaved())
    assert slow["parts"] == 4
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in day_records)
    assert len(day_parts(flights, day, storage)) == 1


def write_parts(flights, storage, groups) -> None:
    """One part per group and event day: each group written by its own worker."""
    for group in groups:
        sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600)
        hand_over(sink, flights, group)
        sink.close()


def clock(at: datetime):
    return lambda: at


def test_what_a_manifest_replaced_is_deleted_once_the_manifest_is_grace_old(flights, records, storage):
    day = START.date()
    day_records = [r for r in records if r["time_hour"].astimezone(UTC).date() == day]
    prefix = part_prefix(flights.name, day)
    write_parts(flights, storage, [day_records[i::5] for i in range(4)])
    t0 = datetime(2026, 12, 7, 12, tzinfo=UTC)
    first = compact_day(flights, day, storage, now=clock(t0))
    assert first["changed"] and first["deleted"] == 0 and len(storage.list(prefix)) == 4 + 2  # parts, merged, manifest
    assert compact_day(flights, day, storage, now=clock(t0 + GRACE / 2))["deleted"] == 0, "too recent to delete"
    later = compact_day(flights, day, storage, now=clock(t0 + GRACE))
    assert later["deleted"] == 4 and not later["changed"]
    assert sorted(storage.list(prefix)) == sorted([prefix + first["compacted"], prefix + MANIFEST])
    assert logged_ids(flights, storage) == sorted(r["request_id"] for i in range(4) for r in day_records[i::5])

    # a part written later is merged; the merged part it supersedes goes a grace later, with it
    write_parts(flights, storage, [day_records[4::5]])
    t1 = t0 + 2 * GRACE
    second = compact_day(flights, day, storage, now=clock(t1))
    assert second["changed"] and second["parts"] == 5 and len(storage.list(prefix)) == 4  # old and new merged, the part
    assert compact_day(flights, day, storage, now=clock(t1 + GRACE))["deleted"] == 2
    assert sorted(storage.list(prefix)) == sorted([prefix + second["compacted"], prefix + MANIFEST])
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in day_records)


def test_a_compaction_slower_than_half_the_grace_writes_no_manifest(flights, records, storage):
    """Its manifest could overwrite a newer one that a rival wrote meanwhile (and whose replaced
    parts may be gone by the time it writes): it stops, and readers see what they saw."""
    day = START.date()
    day_records = [r for r in records if r["time_hour"].astimezone(UTC).date() == day]
    write_parts(flights, storage, [day_records[0::2], day_records[1::2]])
    ticks = iter([datetime(2026, 12, 7, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC) + GRACE / 2 + timedelta(seconds=1)])
    with pytest.raises(TimeoutError, match="manifest is not written"):
        compact_day(flights, day, storage, now=lambda: next(ticks))
    assert not storage.exists(part_prefix(flights.name, day) + MANIFEST)
    assert len(day_parts(flights, day, storage)) == 2
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in day_records)


def test_a_reader_whose_part_is_deleted_under_it_reads_the_day_again(flights, records, storage):
    day = START.date()
    day_records = [r for r in records if r["time_hour"].astimezone(UTC).date() == day]
    write_parts(flights, storage, [day_records[0::2], day_records[1::2]])

    class StalledReader:
        """The storage as a reader sees it that stalls past two compactions after its listing."""

        stalled = False

        def __getattr__(self, name):
            return getattr(storage, name)

        def read_bytes(self, key, **kw):
            if not self.stalled and not key.endswith(MANIFEST):
                self.stalled = True
                t = datetime(2026, 12, 7, tzinfo=UTC)
                compact_day(flights, day, storage, now=clock(t))
                assert compact_day(flights, day, storage, now=clock(t + GRACE))["deleted"] == 2
            return storage.read_bytes(key, **kw)

    reader = StalledReader()
    assert sorted(read_inference_log(flights, START, END, reader)["request_id"]) == sorted(r["request_id"] for r in day_records)
    assert reader.stalled


def test_every_closed_day_is_compacted_and_the_open_ones_are_left_to_their_writers(flights, records, storage):
    write_parts(flights, storage, [records[i::3] for i in range(3)])  # three parts on each day of the week
    days = sorted(event_days(flights, records))
    lateness = timedelta(days=2)
    newest = max(r["time_hour"] for r in records).astimezone(UTC)
    closed = [d for d in days if datetime.combine(d + timedelta(days=1), datetime.min.time(), UTC) + lateness <= newest]
    assert 0 < len(closed) < len(days)
    t0 = datetime(2026, 12, 7, tzinfo=UTC)
    done = compact_closed_days(flights, lateness, storage, now=clock(t0))
    assert [d["event_day"] for d in done] == [d.isoformat() for d in closed] and all(d["changed"] for d in done)
    assert [len(day_parts(flights, d, storage)) for d in days] == [1] * len(closed) + [3] * (len(days) - len(closed))
    assert compact_closed_days(flights, lateness, storage, now=clock(t0)) == [], "nothing new, nothing old enough"
    deleted = compact_closed_days(flights, lateness, storage, now=clock(t0 + GRACE))
    assert [d["deleted"] for d in deleted] == [3] * len(closed)
    assert len(storage.list("inference/")) == 2 * len(closed) + 3 * (len(days) - len(closed))
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in records)


def test_join_labels_attaches_the_outcome_of_each_logged_prediction(flights, storage_root):
    week = flights.load_interval(START, END)
    records = served_records(flights, week.iloc[[0, 1, 2, -1]].reset_index(drop=True))
    sink = InferenceLog(flights, "7", "blue", flush_seconds=3600)
    sink.append(records, flights.encode_records(records), [0.1, 0.2, 0.3, 0.9], [False, False, False, True])
    sink.close()
    log = read_inference_log(flights, START, END)
    joined = join_labels(flights, log, week)
    expected = flights.build_target(week.set_index(list(flights.contract.key))).reindex(
        pd.MultiIndex.from_frame(joined[list(flights.contract.key)])
    )
    np.testing.assert_array_equal(joined["label"].to_numpy(), expected.to_numpy())
