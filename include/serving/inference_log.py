"""The inference log's writer: every prediction, as Parquet parts in the storage layer, laid out
as `include/data/inference_layout.py` says (by event day); the monitor reads them with
`include/data/inference_log.py`.

Writing (`InferenceLog`, one per serving worker):

* Off the request path. `append` hands the predictions over (a deque append under a lock: no
  conversion, no I/O) and returns. A background thread converts them to Arrow column-wise every
  `flush_seconds`, sooner when `flush_records` wait, and writes them at most once per
  `flush_seconds` (and at `close`): whatever was converted since the last write goes out as one
  part per event day, so a worker writes at most one part per event day per `flush_seconds`
  (LOOP_INFERENCE_LOG_FLUSH_SECONDS, a minute by default).
* Bounded. Records waiting (queued, or built but not yet written) are capped at `max_queued`: a
  prediction beyond it is served but not logged, and counted `dropped`; a request never waits for
  the log, and a storage outage cannot exhaust the worker's memory.
* Once per part. A flush is a batch with its own id, written as one part per event day under a
  name derived from that id. A part that fails to write is retried at the next flush under the
  same name, and only that part: a retry never writes a row twice, and a write that "failed" but
  landed is overwritten, not duplicated.
* Late records (when `max_lateness` is set; the service sets it): a record whose event time is
  older than the newest event this log has seen (never counted later than the wall clock) by
  more than `max_lateness` was served but is not logged, and is counted `late`.
* Every outcome is counted (`written`, `dropped`, `late`, `failed`) and reported to `on_count`;
  the service exports the counts as the `loop_inference_log_records_total` metric.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from include.data.inference_layout import FEATURE_PREFIX, part_prefix
from include.data.storage import Storage, get_storage
from include.settings import get_settings

if TYPE_CHECKING:
    import pyarrow as pa

    from include.usecases import UseCase

log = logging.getLogger(__name__)

CHUNK = 1000
"""Records converted at a time by a flush; the thread yields between chunks (see `InferenceLog._table`)."""
OUTCOMES = ("written", "dropped", "late", "failed")
"""What becomes of a prediction handed to the log (the module docstring says when)."""


@dataclass
class _Batch:
    """One flush's records, split by event day; `parts` holds the days not written yet."""

    id: str
    stamp: str
    parts: dict[date, Any] = field(default_factory=dict)
    attempted: bool = False
    """A write of one of its parts was tried: its parts keep their names (a retry overwrites)."""


class InferenceLog:
    """Buffered, thread-safe writer of prediction records; `append` never blocks on I/O or on a
    full buffer (see the module docstring for what happens to each record). `flush_seconds` and
    `max_queued` default to LOOP_INFERENCE_LOG_FLUSH_SECONDS and LOOP_INFERENCE_LOG_MAX_QUEUED;
    `max_lateness` None keeps every record."""

    def __init__(
        self,
        usecase: UseCase,
        model_version: str,
        slot: str,
        storage: Storage | None = None,
        flush_seconds: float | None = None,
        flush_records: int = 20_000,
        max_queued: int | None = None,
        max_lateness: timedelta | None = None,
        on_count: Callable[[str, int], None] | None = None,
    ):
        import pyarrow.parquet  # noqa: F401 - imported here, not by the first flush while requests wait on the GIL

        settings = get_settings()
        self.usecase = usecase
        self.model_version = model_version
        self.slot = slot
        self.storage = storage or get_storage()
        self.flush_seconds = settings.inference_log_flush_seconds if flush_seconds is None else flush_seconds
        self.flush_records = flush_records
        self.max_queued = settings.inference_log_max_queued if max_queued is None else max_queued
        self.max_lateness = max_lateness
        self.on_count = on_count
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.newest: datetime | None = None
        """The newest event time logged (at most the wall clock): what `late` is measured from."""
        self._schema = input_schema(usecase)
        self._fields = itemgetter(*self._schema.names)
        self._queue: deque[tuple] = deque()
        self._queued = 0
        self._waiting = 0  # queued + built but not yet written: what max_queued bounds
        self._pending: list[_Batch] = []
        self._last_write = float("-inf")  # time.monotonic() of the last write
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        return self.counts["written"]

    @property
    def dropped(self) -> int:
        return self.counts["dropped"]

    @property
    def waiting(self) -> int:
        """Records handed over but not written yet."""
        return self._waiting

    def append(
        self, records: list[dict[str, Any]], features: Sequence, scores: Sequence[float], decisions: Sequence[bool]
    ) -> None:
        """Hand over one request's predictions (`features`: one row per record, a list of lists or
        an array). Returns at once; beyond `max_queued` waiting records they are counted, not logged."""
        n = len(records)
        if not n:
            return
        item = (records, features, scores, decisions, datetime.now(UTC))
        with self._lock:
            full = self._waiting + n > self.max_queued
            if not full:
                self._queue.append(item)
                self._queued += n
                self._waiting += n
                due = self._queued >= self.flush_records
        if full:
            self._count("dropped", n)
        elif due:
            self._wake.set()

    def _run(self):
        while not self._stop.is_set():
            # `flush_seconds`, or, with converted records waiting, until their write is due (a wake
            # by `flush_records` converts them, and writes them only if a write is due)
            due = self._last_write + self.flush_seconds - time.monotonic()
            self._wake.wait(max(0.0, min(self.flush_seconds, due)) if self._pending else self.flush_seconds)
            self._wake.clear()
            try:
                self.flush(due_only=True)
            except Exception:  # the thread must outlive any one flush
                log.exception("inference log: flush failed")

    def flush(self, due_only: bool = False) -> int:
        """Build what is queued into a batch; then (with `due_only`, the background thread's call:
        only if `flush_seconds` have passed since the last write) write every part not written yet, oldest first, the batches never tried
        merged into one part per event day; a part that fails stays for the next write. Returns
        the records written."""
        with self._flushing:
            with self._lock:
                items = list(self._queue)
                self._queue.clear()
                self._queued = 0
            if items:
                self._pending.append(self._batch(items))
            if not self._pending or (due_only and time.monotonic() - self._last_write < self.flush_seconds):
                return 0
            self._last_write = time.monotonic()
            self._merge_untried()
            return self._write_pending()

    def _merge_untried(self) -> None:
        """The batches no write has tried, as one batch: one part per event day per write."""
        import pyarrow as pa

        untried = [b for b in self._pending if not b.attempted]
        if len(untried) < 2:
            return
        merged = _Batch(id=uuid.uuid4().hex[:12], stamp=untried[-1].stamp)
        for day in sorted({day for b in untried for day in b.parts}):
            merged.parts[day] = pa.concat_tables([b.parts[day] for b in untried if day in b.parts])
        self._pending = [b for b in self._pending if b.attempted] + [merged]

    def close(self):
        """Stop the thread and write everything handed over (the service calls it on shutdown)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()
        if self._waiting:
            log.error("inference log: %d records could not be written before shutdown", self._waiting)
            self._settle("failed", self._waiting)
            self._pending.clear()

    def _count(self, outcome: str, n: int) -> None:
        with self._lock:
            self.counts[outcome] += n
        if self.on_count is not None:
            self.on_count(outcome, n)

    def _settle(self, outcome: str, n: int) -> None:
        """`n` waiting records are done with: written, late, or lost."""
        with self._lock:
            self._waiting -= n
        self._count(outcome, n)

    def _batch(self, items: list[tuple]) -> _Batch:
        import numpy as np
        import pyarrow as pa

        batch = _Batch(id=uuid.uuid4().hex[:12], stamp=datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))
        n = sum(len(item[0]) for item in items)
        try:
            table = self._admit(self._table(items))
        except Exception:  # records that cannot be converted cannot be written by a retry either
            log.exception("inference log: building a part of %d records failed; they are not logged", n)
            self._settle("failed", n)
            return batch
        if table.num_rows < n:
            self._settle("late", n - table.num_rows)
        days = table.column(self.usecase.contract.event_time).to_numpy().astype("datetime64[D]")
        for day in np.unique(days):
            batch.parts[day.item()] = table.filter(pa.array(days == day))
        return batch

    def _write_pending(self) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        written = 0
        while self._pending:
            batch = self._pending[0]
            batch.attempted = True
            for day, part in list(batch.parts.items()):
                buf = pa.BufferOutputStream()
                pq.write_table(part, buf)
                key = f"{part_prefix(self.usecase.name, day)}{batch.stamp}-{self.slot}-{os.getpid()}-{batch.id}.parquet"
                try:
                    self.storage.write_bytes(key, buf.getvalue().to_pybytes())
                except Exception:
                    log.exception("inference log: writing %s (%d records) failed; retrying at the next flush", key, part.num_rows)
                    return written
                del batch.parts[day]
                written += part.num_rows
                self._settle("written", part.num_rows)
            self._pending.pop(0)
        return written

    def _admit(self, table: pa.Table) -> pa.Table:
        """Without the records more than `max_lateness` older than the newest event seen."""
        if self.max_lateness is None or table.num_rows == 0:
            return table
        import numpy as np
        import pyarrow as pa

        times = table.column(self.usecase.contract.event_time).to_numpy()
        newest = min(times.max().astype("datetime64[us]").item().replace(tzinfo=UTC), datetime.now(UTC))
        self.newest = newest if self.newest is None else max(self.newest, newest)
        cutoff = np.datetime64((self.newest - self.max_lateness).replace(tzinfo=None), "us")
        return table.filter(pa.array(times >= cutoff))

    def _table(self, items: list[tuple]) -> pa.Table:
        """The items as one table, built column by column in chunks of CHUNK records. Conversion
        holds the GIL, which the worker's requests need too: the thread yields between chunks,
        so a flush delays no request by more than a chunk's few milliseconds."""
        import numpy as np
        import pyarrow as pa

        records = [r for item in items for r in item[0]]
        columns: list[list] = [[] for _ in self._schema.names]
        for i in range(0, len(records), CHUNK):
            for column, values in zip(columns, zip(*self._rows(records[i : i + CHUNK]), strict=True), strict=True):
                column.append(values)
            time.sleep(0.001)
        arrays = []
        for column, f in zip(columns, self._schema, strict=True):
            arrays.append(pa.chunked_array([pa.array(values, f.type) for values in column], f.type))
            time.sleep(0)
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        features = np.concatenate([np.asarray(item[1], dtype=np.float32).reshape(len(item[0]), -1) for item in items])
        for j, name in enumerate(self.usecase.features):
            table = table.append_column(FEATURE_PREFIX + name, pa.array(features[:, j]))
        n = len(records)
        served_at = np.concatenate([np.full(len(item[0]), np.datetime64(item[4].replace(tzinfo=None), "us")) for item in items])
        return (
            table.append_column("score", pa.array(np.concatenate([np.asarray(item[2], dtype=np.float64) for item in items])))
            .append_column("decision", pa.array(np.concatenate([np.asarray(item[3], dtype=bool) for item in items])))
            .append_column("model_version", pa.array([self.model_version] * n, pa.string()))
            .append_column("slot", pa.array([self.slot] * n, pa.string()))
            .append_column("served_at", pa.array(served_at, pa.timestamp("us", tz="UTC")))
        )

    def _rows(self, records: list[dict]) -> list[tuple]:
        """The logged fields of each record, in schema order; a field a record lacks is null."""
        try:
            return list(map(self._fields, records))  # C speed; the service's records have every field
        except KeyError:
            return [tuple(r.get(name) for name in self._schema.names) for r in records]


def input_schema(usecase: UseCase):
    """Arrow schema of the logged request fields, from the contract (stable across parts, even
    when a part has only nulls in a column)."""
    import pyarrow as pa

    types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "datetime": pa.timestamp("us", tz="UTC")}
    fields = [pa.field("request_id", pa.string())]
    fields += [pa.field(name, types[usecase.contract.column(name).kind]) for name in usecase.serving_inputs]
    return pa.schema(fields)
