"""The inference log as the monitor reads it: the predictions logged for a window, the newest
event logged, the labels joined on the contract key from data that arrived later, and compaction.
Serving writes the log (`include/serving/inference_log.py`); the layout both share is
`include/data/inference_layout.py`.

Fewer parts: a worker writes at most one part per event day per LOOP_INFERENCE_LOG_FLUSH_SECONDS,
and `compact_day` merges a day's parts into one, idempotently: the merged part is named by the
parts it covers, and a manifest (`_compacted.json`, written before anything is deleted) says which
parts it replaces. Readers take the merged part plus the parts the manifest does not name, so they
see every row once whether compaction ran, ran halfway, or ran twice. What a manifest replaced
(the parts it covers, the merged part it superseded) is deleted by a later compaction once the
manifest is `GRACE` old; a reader that listed one just before reads the day again (the manifest
then names the merged part instead).

The monitor compacts the window it checks, and every closed day: a day older than the newest
logged event by more than the writers' lateness bound, which no writer adds to any more
(`compact_closed_days`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from include.data.inference_layout import PREFIX, part_prefix
from include.data.storage import Storage, get_storage

if TYPE_CHECKING:
    import pandas as pd

    from include.usecases import UseCase

T = TypeVar("T")
MANIFEST = "_compacted.json"
GRACE = timedelta(minutes=10)
"""What a day's manifest replaced is deleted once the manifest is this old; a compaction running
longer than half of it writes no manifest (`compact_day`)."""
COMPACTED = "compacted-"
"""Name prefix of a merged part; a worker's parts start with their batch's timestamp."""


def _layout(storage: Storage, prefix: str) -> tuple[dict, list[str], list[str]]:
    """The day's manifest, the parts it does not cover, and the objects it replaced that are still
    there (the parts it covers, the merged parts it superseded), as names under `prefix`. The
    manifest is read before the listing, so the two agree even while another compaction replaces it."""
    manifest = {"parts": [], "compacted": None}
    if storage.exists(prefix + MANIFEST):
        manifest = json.loads(storage.read_bytes(prefix + MANIFEST))
    covered = set(manifest["parts"])
    superseded = set(manifest.get("superseded", []))
    names = [key[len(prefix) :] for key in storage.list(prefix) if key.endswith(".parquet")]
    uncovered = [n for n in names if not n.startswith(COMPACTED) and n not in covered]
    return manifest, uncovered, [n for n in names if n in covered or n in superseded]


def day_parts(usecase: UseCase, day: date, storage: Storage | None = None) -> list[str]:
    """The keys that hold the day's log, each row once: the merged part of the last compaction,
    and the parts it does not cover."""
    prefix = part_prefix(usecase.name, day)
    manifest, uncovered, _ = _layout(storage or get_storage(), prefix)
    return [prefix + name for name in [manifest["compacted"]] * bool(manifest["compacted"]) + uncovered]


def _read_day(usecase: UseCase, day: date, storage: Storage, attempts: int = 3) -> list[pd.DataFrame]:
    """The day's log as frames, each row once. A part a compaction deleted after this listed it is
    no loss: the day is listed again, and its manifest then names the merged part instead."""
    from include.data.storage import read_parquet

    return _again_if_deleted(lambda: [read_parquet(storage, key) for key in day_parts(usecase, day, storage)], attempts)


def compact_day(
    usecase: UseCase, day: date, storage: Storage | None = None, attempts: int = 3, now: Callable[[], datetime] | None = None
) -> dict:
    """Merge the day's parts into one, and delete what an earlier merge replaced. Idempotent and
    safe beside writers, readers and another compaction (see the module docstring): the merged
    part's name is a digest of the parts it covers (a rerun rewrites the same object), the manifest
    naming them is written next, and what a manifest replaced is deleted only once that manifest is
    `GRACE` old, while a compaction that has run for half of `GRACE` writes no manifest. So no
    compaction still running can have read a manifest older than the one whose parts are deleted.
    Parts written meanwhile are covered by the next run; a part deleted under this one is read again
    from the merged part it went into. `now`: the wall clock (a test's own)."""
    storage = storage or get_storage()
    return _again_if_deleted(lambda: _compact_day(usecase, day, storage, now or (lambda: datetime.now(UTC))), attempts)


def _again_if_deleted(call: Callable[[], T], attempts: int) -> T:
    """`call()`, again (up to `attempts` in all) when a part it listed was deleted before it read
    it: listed afresh, the day's manifest names the merged part that part went into."""
    for attempt in range(attempts):
        try:
            return call()
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _compact_day(usecase: UseCase, day: date, storage: Storage, now: Callable[[], datetime]) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = now()
    prefix = part_prefix(usecase.name, day)
    manifest, new, replaced = _layout(storage, prefix)
    written_at = manifest.get("written_at")
    if not (written_at and datetime.fromisoformat(written_at) <= started - GRACE):
        replaced = []  # too recent: a compaction that read the manifest before it may still read them
    for n in replaced:
        storage.delete(prefix + n)
    name = manifest["compacted"]
    if new:
        inputs = [manifest["compacted"]] * bool(manifest["compacted"]) + new
        table = pa.concat_tables(
            [pq.read_table(pa.BufferReader(storage.read_bytes(prefix + n))) for n in inputs], promote_options="default"
        )
        parts = sorted({*manifest["parts"], *new})
        name = f"{COMPACTED}{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:16]}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        storage.write_bytes(prefix + name, buf.getvalue().to_pybytes())
        if now() - started > GRACE / 2:
            raise TimeoutError(
                f"compacting {prefix} took longer than {GRACE / 2}: its manifest is not written, since another "
                "compaction may have replaced the one it read; the next run merges the day again"
            )
        superseded = sorted({*manifest.get("superseded", []), *[manifest["compacted"]] * bool(manifest["compacted"])} - {name})
        manifest = {"parts": parts, "compacted": name, "superseded": superseded, "rows": table.num_rows}
        storage.write_bytes(prefix + MANIFEST, json.dumps(manifest | {"written_at": now().isoformat()}).encode())
    return {
        "event_day": day.isoformat(),
        "parts": len(manifest["parts"]),
        "compacted": name,
        "changed": bool(new),
        "deleted": len(replaced),
    }


def logged_days(usecase: UseCase, storage: Storage | None = None) -> list[date]:
    """The event days the log holds, oldest first."""
    storage = storage or get_storage()
    keys = storage.list(f"{PREFIX}/{usecase.name}/")
    return sorted(
        {date.fromisoformat(k.split("/")[2][3:]) for k in keys if k.count("/") >= 3 and k.split("/")[2].startswith("dt=")}
    )


def compact_closed_days(
    usecase: UseCase, lateness: timedelta, storage: Storage | None = None, now: Callable[[], datetime] | None = None
) -> list[dict]:
    """`compact_day` for every closed day that has more than its merged part: a day that ends more
    than `lateness` before the newest logged event, so no writer adds to it any more (a record
    that old is kept out of the log). Returns what changed."""
    storage = storage or get_storage()
    newest = newest_event(usecase, storage)
    if newest is None:
        return []
    newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
    out = []
    for day in logged_days(usecase, storage):
        if datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + lateness > newest:
            break
        done = compact_day(usecase, day, storage, now=now)
        if done["changed"] or done["deleted"]:
            out.append(done)
    return out


def compact_window(usecase: UseCase, start: datetime, end: datetime, storage: Storage | None = None) -> list[dict]:
    """`compact_day` for every event day (UTC, as the parts are laid out) of [start, end): what the
    monitor runs over the window it checks, so a day's log ends up as one part."""
    storage = storage or get_storage()
    out, day, last = [], start.astimezone(UTC).date(), (end - timedelta(microseconds=1)).astimezone(UTC).date()
    while day <= last:
        out.append(compact_day(usecase, day, storage))
        day += timedelta(days=1)
    return out


def newest_event(usecase: UseCase, storage: Storage | None = None) -> datetime | None:
    """The latest event time in the inference log (None if nothing is logged): only the newest
    day's parts are read."""
    storage = storage or get_storage()
    for day in reversed(logged_days(usecase, storage)):
        times = [frame[usecase.contract.event_time].max() for frame in _read_day(usecase, day, storage)]
        times = [t for t in times if t == t and t is not None]
        if times:
            return max(times).to_pydatetime()
    return None


def read_inference_log(usecase: UseCase, start: datetime, end: datetime, storage: Storage | None = None) -> pd.DataFrame:
    """Logged predictions whose event time is in [start, end), across slots and model versions."""
    import pandas as pd

    storage = storage or get_storage()
    frames = []
    day = start.astimezone(UTC).date()
    while day <= end.astimezone(UTC).date():
        frames += _read_day(usecase, day, storage)
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
