"""The inference log's writer against a real local storage root: off the request path, bounded,
each row written once whatever fails, one part per event day and flush, late records kept out,
nothing lost on close."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from include.data.inference_layout import FEATURE_PREFIX
from include.data.inference_log import read_inference_log
from include.data.storage import get_storage
from include.serving.inference_log import InferenceLog
from tests.support.inference_log import END, START, event_days, hand_over, logged_ids, served_records


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
        flights,
        "1",
        "blue",
        storage=Hanging(),
        flush_seconds=3600,
        flush_records=100,
        max_queued=500,
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


def test_a_worker_writes_one_part_per_event_day_per_flush(flights, records, storage):
    """The part count follows flushes and event days, not requests: thousands of single-record
    requests over a week, flushed once, are one part per day."""
    week = records[:5000]
    sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600)
    hand_over(sink, flights, week, size=1)
    sink.close()
    assert len(storage.list("inference/")) == len(event_days(flights, week))


def test_a_worker_writes_at_most_one_part_per_event_day_per_flush_interval(flights, records, storage):
    """Within `flush_seconds` of its last write, a worker's background flushes convert what waits
    but write nothing; the next write merges all of it into one part per event day."""
    week = records[:3000]
    days = event_days(flights, week)
    sink = InferenceLog(flights, "1", "blue", storage=storage, flush_seconds=3600)
    hand_over(sink, flights, week[:1000])
    assert sink.flush(due_only=True) == 1000  # the first write is due at once
    first = len(storage.list("inference/"))
    for waiting in (1000, 2000):
        hand_over(sink, flights, week[waiting : waiting + 1000])
        assert sink.flush(due_only=True) == 0 and sink.waiting == waiting
    assert len(storage.list("inference/")) == first
    sink.close()  # the last write: both conversions in one part per day
    assert len(storage.list("inference/")) == first + len(event_days(flights, week[1000:]))
    assert len(logged_ids(flights, storage)) == len(week) and first <= len(days)


def test_a_flush_writes_a_part_per_event_day_with_the_model_version_slot_and_features(flights, storage_root):
    df = flights.load_interval(START, END).iloc[[0, 1, 2, -1]].reset_index(drop=True)
    records = served_records(flights, df)
    sink = InferenceLog(flights, "7", "blue", flush_seconds=3600)
    sink.append(records, flights.encode_records(records), [0.1, 0.2, 0.3, 0.9], [False, False, False, True])
    assert sink.flush() == 4
    sink.close()
    keys = get_storage().list("inference/flights/")
    days = {k.split("/")[2] for k in keys}
    assert days == {f"dt={df['time_hour'].min().date()}", f"dt={df['time_hour'].max().date()}"}
    log = read_inference_log(flights, START, END)
    assert sorted(log["request_id"]) == ["r0", "r1", "r2", "r3"]
    assert (log["model_version"] == "7").all() and (log["slot"] == "blue").all()
    assert list(log.filter(like=FEATURE_PREFIX).columns) == [FEATURE_PREFIX + f for f in flights.features]
