"""The inference log's readers, compaction and label join against a real local storage root (the
writer lays down the parts): readers see every row once whether a compaction ran, stopped halfway,
or raced another and a writer; each logged prediction gets the outcome that landed later."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from include.data.inference_layout import part_prefix
from include.data.inference_log import (
    COMPACTED,
    MANIFEST,
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
