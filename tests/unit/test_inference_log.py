"""The inference log's writer and reader against a real local storage root: off the request path,
bounded, each row written once whatever fails, late records kept out, nothing lost on close, and
compaction that readers see through."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from include.data.storage import LocalStorage
from include.serving.inference_log import (
    COMPACTED,
    MANIFEST,
    InferenceLog,
    compact_day,
    compact_window,
    day_parts,
    part_prefix,
    read_inference_log,
)
from include.serving.schema import request_bodies, request_model

START, END = datetime(2013, 2, 4, tzinfo=UTC), datetime(2013, 2, 11, tzinfo=UTC)


@pytest.fixture(scope="module")
def records(flights):
    """A week of validated records (seven event days), each with its own request id."""
    Record = request_model(flights)
    df = flights.load_interval(START, END)
    return [Record.model_validate(r).model_dump() | {"request_id": f"r{i}"} for i, r in enumerate(request_bodies(flights, df))]


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "zones")


def hand_over(sink: InferenceLog, flights, records: list[dict], size: int = 100) -> None:
    """What the service does: one `append` per request of `size` records."""
    for i in range(0, len(records), size):
        chunk = records[i : i + size]
        sink.append(chunk, flights.encode_records(chunk), [0.5] * len(chunk), [True] * len(chunk))


def logged_ids(flights, storage) -> list[str]:
    log = read_inference_log(flights, START - timedelta(days=1), END + timedelta(days=1), storage)
    return sorted(log["request_id"]) if len(log) else []


def event_days(flights, records) -> set:
    return {r[flights.contract.event_time].astimezone(UTC).date() for r in records}


class FailingOnce:
    """Storage whose `fail_at`-th write raises (after the earlier ones landed), once."""

    def __init__(self, inner, fail_at: int):
        self.inner, self.fail_at, self.writes = inner, fail_at, 0

    def write_bytes(self, key, data, **kw):
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError(f"injected: storage down while writing {key}")
        return self.inner.write_bytes(key, data, **kw)


def test_a_flush_failing_after_its_first_part_writes_each_row_once(flights, records, storage):
    batch = records[:1500]
    days = event_days(flights, batch)
    assert len(days) >= 2, "the batch must span several event days, one part each"
    sink = InferenceLog(flights, "1", "blue", storage=FailingOnce(storage, fail_at=2), flush_seconds=3600)
    hand_over(sink, flights, batch)
    first = sink.flush()
    assert 0 < first < len(batch), "the first part landed, then the storage failed"
    assert sink.waiting == len(batch) - first
    keys_before = set(storage.list("inference/"))
    assert sink.flush() == len(batch) - first  # the retry writes only the parts not written
    sink.close()
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in batch), "every row exactly once"
    keys = set(storage.list("inference/"))
    assert keys_before < keys and len(keys) == len(days), "one part per event day, none duplicated"
    assert sink.counts == {"written": len(batch), "dropped": 0, "late": 0, "failed": 0}


def test_a_retried_part_overwrites_rather_than_duplicates(flights, records, storage):
    """A write that raised although the object landed (a timeout after the PUT): the retry writes
    the same key again."""

    class LandsThenRaises:
        def __init__(self):
            self.raised = False

        def write_bytes(self, key, data, **kw):
            storage.write_bytes(key, data, **kw)
            if not self.raised:
                self.raised = True
                raise TimeoutError(f"injected: no answer after writing {key}")
            return storage.uri(key)

    batch = records[:300]
    sink = InferenceLog(flights, "1", "blue", storage=LandsThenRaises(), flush_seconds=3600)
    hand_over(sink, flights, batch)
    sink.flush()
    sink.close()
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in batch)


def test_append_returns_while_the_storage_hangs_and_drops_with_a_count_when_full(flights, records, storage):
    release = threading.Event()
    writing = threading.Event()

    class Hanging:
        def write_bytes(self, key, data, **kw):
            writing.set()
            assert release.wait(30), "the test never released the storage"
            return storage.write_bytes(key, data, **kw)

    counted: list[tuple[str, int]] = []
    sink = InferenceLog(
        flights, "1", "blue", storage=Hanging(), flush_seconds=3600, flush_records=100, max_queued=500,
        on_count=lambda outcome, n: counted.append((outcome, n)),
    )
    hand_over(sink, flights, records[:100])  # reaches flush_records: the thread starts writing, and hangs
    assert writing.wait(30), "the background thread did not start a flush"
    appended = threading.Thread(target=hand_over, args=(sink, flights, records[100:700]))
    appended.start()
    appended.join(5)
    assert not appended.is_alive(), "append blocked on a flush that waits for the storage"
    assert sink.dropped == 200 and sink.waiting == 500, "beyond max_queued records are counted, not held"
    release.set()
    sink.close()
    assert len(logged_ids(flights, storage)) == 500
    assert sink.counts == {"written": 500, "dropped": 200, "late": 0, "failed": 0}
    assert sum(n for outcome, n in counted if outcome == "dropped") == 200


def test_close_writes_everything_handed_over(flights, records, storage):
    sink = InferenceLog(flights, "3", "green", storage=storage, flush_seconds=3600)
    hand_over(sink, flights, records[:2500], size=1)
    sink.close()
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in records[:2500])
    assert sink.waiting == 0 and sink.written == 2500


def test_close_counts_what_the_storage_never_took(flights, records, storage):
    class Down:
        def write_bytes(self, key, data, **kw):
            raise OSError(f"injected: disk full writing {key}")

    sink = InferenceLog(flights, "3", "green", storage=Down(), flush_seconds=3600)
    hand_over(sink, flights, records[:50])
    sink.close()
    assert sink.counts["failed"] == 50 and sink.waiting == 0


def test_records_far_older_than_the_newest_event_are_served_but_not_logged(flights, records, storage):
    lateness = timedelta(days=2)
    newest = max(r["time_hour"] for r in records)
    fresh = [r for r in records if r["time_hour"] >= newest - lateness]
    stale = [r for r in records if r["time_hour"] < newest - lateness]
    assert fresh and stale
    sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600, max_lateness=lateness)
    hand_over(sink, flights, fresh)
    sink.flush()
    hand_over(sink, flights, stale)  # a client writing into an older window
    sink.close()
    assert logged_ids(flights, storage) == sorted(r["request_id"] for r in fresh)
    assert sink.counts["late"] == len(stale) and sink.newest == newest.astimezone(UTC)


def test_the_newest_event_never_runs_ahead_of_the_wall_clock(flights, records, storage):
    """A client sending an event time in the future cannot make everyone else's records late."""
    now = datetime.now(UTC)
    future = dict(records[0], request_id="future", time_hour=now + timedelta(hours=40))
    current = dict(records[1], request_id="current", time_hour=now - timedelta(hours=1))
    sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600, max_lateness=timedelta(hours=24))
    hand_over(sink, flights, [future])
    sink.flush()
    hand_over(sink, flights, [current])
    sink.close()
    assert sink.counts["late"] == 0 and sink.written == 2
    assert sink.newest <= datetime.now(UTC)


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


def test_a_worker_writes_one_part_per_event_day_per_flush(flights, records, storage):
    """The part count follows flushes and event days, not requests: thousands of single-record
    requests over a week, flushed once, are one part per day."""
    week = records[:5000]
    sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600)
    hand_over(sink, flights, week, size=1)
    sink.close()
    assert len(storage.list("inference/")) == len(event_days(flights, week))


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
