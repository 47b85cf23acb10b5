"""The inference log: every prediction, as Parquet parts in the storage layer, and its label join.

A serving worker appends records to an in-memory buffer (a list append under a lock: the request
path does no I/O) and a background thread writes the buffer as one Parquet part every few seconds,
or sooner when it fills, and at shutdown. Parts are partitioned by the event date of the record
(`inference/<usecase>/dt=YYYY-MM-DD/`), so the monitor reads a window by listing prefixes, and
labels that arrive with later data join on the contract key.

Columns of a part: request_id, the request's fields as sent (the contract key, the event time and
every input), the model features computed from them (`feature.<name>`), score, decision,
model_version, slot and served_at (UTC).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from include.data.storage import Storage, get_storage

if TYPE_CHECKING:
    import pandas as pd

    from include.usecases import UseCase

log = logging.getLogger(__name__)

PREFIX = "inference"
CHUNK = 1000
"""Records converted at a time when a flush builds its table (see `InferenceLog._write`)."""
FEATURE_PREFIX = "feature."
"""Model features are logged beside the request fields they came from, as `feature.<name>`."""


def part_prefix(usecase: str, day: date) -> str:
    return f"{PREFIX}/{usecase}/dt={day.isoformat()}/"


class InferenceLog:
    """Buffered, thread-safe writer of prediction records; `append` never blocks on I/O.

    The buffer is bounded: beyond `max_buffered` records (storage down for a long time) the oldest
    are dropped and counted in `dropped`, rather than letting a worker run out of memory.
    """

    def __init__(
        self,
        usecase: UseCase,
        model_version: str,
        slot: str,
        storage: Storage | None = None,
        flush_seconds: float = 5.0,
        flush_records: int = 20_000,
        max_buffered: int = 500_000,
    ):
        self.usecase = usecase
        self.model_version = model_version
        self.slot = slot
        self.storage = storage or get_storage()
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self.max_buffered = max_buffered
        self.dropped = 0
        self.written = 0
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def append(self, records: list[dict[str, Any]], features: list[list[float]], scores: list[float], decisions: list[bool]):
        served_at = datetime.now(UTC)
        with self._lock:
            self._rows.extend(zip(records, features, scores, decisions, [served_at] * len(records), strict=True))
            excess = len(self._rows) - self.max_buffered
            if excess > 0:
                del self._rows[:excess]
                self.dropped += excess
            full = len(self._rows) >= self.flush_records
        if full:
            self._wake.set()

    def _run(self):
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write what is buffered; on a storage error the records go back to the buffer."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            self._write(rows)
        except Exception:
            log.exception("inference log: writing %d records failed; keeping them for the next flush", len(rows))
            with self._lock:
                self._rows[:0] = rows
            return 0
        self.written += len(rows)
        return len(rows)

    def close(self):
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()

    def _write(self, rows: list[tuple]):
        """One Parquet part per event day, built column-wise with pyarrow, a few microseconds per
        record. Conversion holds the GIL, which the worker's requests need too: it runs in chunks
        with a yield between them, so a flush stalls no request by more than a few milliseconds."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        uc = self.usecase
        chunks = []
        for i in range(0, len(rows), CHUNK):
            chunks.append(self._table(rows[i : i + CHUNK]))
            time.sleep(0.001)
        table = pa.concat_tables(chunks)
        days = table.column(uc.contract.event_time).to_numpy().astype("datetime64[D]")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for day in np.unique(days):
            part = table.filter(pa.array(days == day))
            buf = pa.BufferOutputStream()
            pq.write_table(part, buf)
            key = f"{part_prefix(uc.name, day.item())}{stamp}-{self.slot}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
            self.storage.write_bytes(key, buf.getvalue().to_pybytes())

    def _table(self, rows: list[tuple]):
        import numpy as np
        import pyarrow as pa

        table = pa.Table.from_pylist([r[0] for r in rows], schema=self._schema)
        features = np.asarray([r[1] for r in rows], dtype=np.float32)
        for j, name in enumerate(self.usecase.features):
            table = table.append_column(FEATURE_PREFIX + name, pa.array(features[:, j]))
        return (
            table.append_column("score", pa.array([r[2] for r in rows], pa.float64()))
            .append_column("decision", pa.array([r[3] for r in rows], pa.bool_()))
            .append_column("model_version", pa.array([self.model_version] * len(rows), pa.string()))
            .append_column("slot", pa.array([self.slot] * len(rows), pa.string()))
            .append_column("served_at", pa.array([r[4] for r in rows], pa.timestamp("us", tz="UTC")))
        )

    @property
    def _schema(self):
        if self.__schema is None:
            self.__schema = input_schema(self.usecase)
        return self.__schema

    __schema = None


def input_schema(usecase: UseCase):
    """Arrow schema of the logged request fields, from the contract (stable across parts, even
    when a part has only nulls in a column)."""
    import pyarrow as pa

    types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "datetime": pa.timestamp("us", tz="UTC")}
    fields = [pa.field("request_id", pa.string())]
    fields += [pa.field(name, types[usecase.contract.column(name).kind]) for name in usecase.serving_inputs]
    return pa.schema(fields)


def read_inference_log(usecase: UseCase, start: datetime, end: datetime, storage: Storage | None = None) -> pd.DataFrame:
    """Logged predictions whose event time is in [start, end), across slots and model versions."""
    import pandas as pd

    from include.data.storage import read_parquet

    storage = storage or get_storage()
    frames = []
    day = start.astimezone(UTC).date()
    while day <= end.astimezone(UTC).date():
        for key in storage.list(part_prefix(usecase.name, day)):
            if key.endswith(".parquet"):
                frames.append(read_parquet(storage, key))
        day += timedelta(days=1)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    t = df[usecase.contract.event_time]
    return df[(t >= start) & (t < end)].reset_index(drop=True)


def join_labels(usecase: UseCase, predictions: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Attach the label to each logged prediction from data that arrived later (the validated
    zone): `label` is 1/0, or NaN while the outcome is unknown. A record predicted twice (a retry,
    two slots) keeps both predictions; data is deduplicated on the key first."""
    key = list(usecase.contract.key)
    labels = data[key].copy()
    labels["label"] = usecase.build_target(data).to_numpy()
    labels = labels.drop_duplicates(key, keep="last")
    return predictions.merge(labels, on=key, how="left", validate="many_to_one")
