"""The inference log as the monitor reads it: the predictions logged for a window, the newest
event logged, the labels joined on the contract key from data that arrived later, and compaction.
Serving writes the log (`include/serving/inference_log.py`); the layout both share is
`include/data/inference_layout.py`.

Fewer parts: a worker writes at most one part per event day per flush, and `compact_day` merges
a day's parts into one, idempotently: the merged part is named by the parts it covers, and a
manifest (`_compacted.json`, written last) says which parts it replaces. Readers take the merged
part plus the parts the manifest does not name, so they see every row once whether compaction
ran, ran halfway, or ran twice. The storage layer cannot delete, so replaced parts stay in place
(unread) until it can.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from include.data.inference_layout import PREFIX, part_prefix
from include.data.storage import Storage, get_storage

if TYPE_CHECKING:
    import pandas as pd

    from include.usecases import UseCase

MANIFEST = "_compacted.json"
COMPACTED = "compacted-"
"""Name prefix of a merged part; a worker's parts start with their batch's timestamp."""


def _layout(storage: Storage, prefix: str) -> tuple[dict, list[str]]:
    """The day's manifest and the parts it does not cover (names under `prefix`). The manifest is
    read before the listing, so the two agree even while another compaction replaces it."""
    manifest = {"parts": [], "compacted": None}
    if storage.exists(prefix + MANIFEST):
        manifest = json.loads(storage.read_bytes(prefix + MANIFEST))
    covered = set(manifest["parts"])
    names = [key[len(prefix) :] for key in storage.list(prefix)]
    return manifest, [n for n in names if n.endswith(".parquet") and not n.startswith(COMPACTED) and n not in covered]


def day_parts(usecase: UseCase, day: date, storage: Storage | None = None) -> list[str]:
    """The keys that hold the day's log, each row once: the merged part of the last compaction,
    and the parts it does not cover."""
    prefix = part_prefix(usecase.name, day)
    manifest, uncovered = _layout(storage or get_storage(), prefix)
    return [prefix + name for name in [manifest["compacted"]] * bool(manifest["compacted"]) + uncovered]


def compact_day(usecase: UseCase, day: date, storage: Storage | None = None) -> dict:
    """Merge the day's parts into one. Idempotent and safe beside writers and readers: the merged
    part's name is a digest of the parts it covers (a rerun rewrites the same object), and the
    manifest naming them is written last. Parts written meanwhile are covered by the next run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    storage = storage or get_storage()
    prefix = part_prefix(usecase.name, day)
    manifest, new = _layout(storage, prefix)
    if not new:
        return {
            "event_day": day.isoformat(),
            "parts": len(manifest["parts"]),
            "compacted": manifest["compacted"],
            "changed": False,
        }
    inputs = [manifest["compacted"]] * bool(manifest["compacted"]) + new
    table = pa.concat_tables(
        [pq.read_table(pa.BufferReader(storage.read_bytes(prefix + n))) for n in inputs], promote_options="default"
    )
    parts = sorted({*manifest["parts"], *new})
    name = f"{COMPACTED}{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:16]}.parquet"
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    storage.write_bytes(prefix + name, buf.getvalue().to_pybytes())
    storage.write_bytes(prefix + MANIFEST, json.dumps({"parts": parts, "compacted": name, "rows": table.num_rows}).encode())
    return {"event_day": day.isoformat(), "parts": len(parts), "compacted": name, "changed": True}


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
    from include.data.storage import read_parquet

    storage = storage or get_storage()
    keys = storage.list(f"{PREFIX}/{usecase.name}/")
    days = sorted({k.split("/")[2][3:] for k in keys if k.count("/") >= 3 and k.split("/")[2].startswith("dt=")})
    for day in reversed(days):
        times = [
            read_parquet(storage, key)[usecase.contract.event_time].max()
            for key in day_parts(usecase, date.fromisoformat(day), storage)
        ]
        times = [t for t in times if t == t and t is not None]
        if times:
            return max(times).to_pydatetime()
    return None


def read_inference_log(usecase: UseCase, start: datetime, end: datetime, storage: Storage | None = None) -> pd.DataFrame:
    """Logged predictions whose event time is in [start, end), across slots and model versions."""
    import pandas as pd

    from include.data.storage import read_parquet

    storage = storage or get_storage()
    frames = []
    day = start.astimezone(UTC).date()
    while day <= end.astimezone(UTC).date():
        frames += [read_parquet(storage, key) for key in day_parts(usecase, day, storage)]
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
