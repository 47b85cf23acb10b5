"""Data zones and partitions: landing → validated | quarantine.

A partition is one Airflow data interval. Its id comes from the interval start (UTC), never from
the wall clock, so a rerun of an interval addresses the same objects:

    landing/<usecase>/dt=<id>/data.parquet              the delivery; the loop writes it once, never rewrites it
    validated/<usecase>/dt=<id>/validation.json         the partition's record: which input passed, where its rows are
    validated/<usecase>/dt=<id>/data.parquet            the rows that passed, of the first input validated
    validated/<usecase>/dt=<id>/<sha12>/data.parquet    ... of a later, different input of the interval
    quarantine/<usecase>/dt=<id>/<sha12>/...            rejected rows or batches, keyed by input hash

Deliveries do not always arrive once and in order. The policy (enforced by `include.data.gate`):

* The same bytes again (a repeated delivery, a rerun): validating them is a no-op that returns
  the partition's record as it is.
* Different bytes for an interval already validated (upstream re-delivered it): they go through
  the gate like any input, under their own hash. If they pass, the record moves to their rows; if
  they fail, the earlier record is withdrawn (status ``superseded``), so training stops using the
  replaced delivery. Validated rows are written once and never rewritten: the earlier input's
  rows stay where its record, and any model's lineage, point. The record is written last and
  names one input, so a reader gets the rows of one input or the other, never a mix.
* The same bytes as another partition (a file delivered under the wrong interval): quarantined.
* An older interval arriving after newer ones (a backfill): validated like any other; its checks
  depend on its own interval, never on the clock, and training windows select partitions by
  interval, not by arrival.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from include.data.storage import ObjectExistsError, Storage, get_storage, parse_parquet, write_parquet
from include.usecases import UseCase

log = logging.getLogger(__name__)


class MissingPartitionError(FileNotFoundError):
    """The landing zone has no partition for the interval (and replay is off)."""


@dataclass(frozen=True)
class Partition:
    usecase: str
    start: datetime
    end: datetime

    def __post_init__(self):
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"partition bounds must be timezone-aware, got {self.start!r}, {self.end!r}")
        if self.end <= self.start:
            raise ValueError(f"empty interval: end {self.end} is not after start {self.start}")

    @property
    def id(self) -> str:
        return "dt=" + self.start.astimezone(UTC).strftime("%Y-%m-%dT%H%MZ")

    @property
    def landing_key(self) -> str:
        return f"landing/{self.usecase}/{self.id}/data.parquet"

    @property
    def validated_key(self) -> str:
        return f"validated/{self.usecase}/{self.id}/data.parquet"

    def validated_prefix(self, content_sha256: str) -> str:
        """Where the rows of a later input go, once `validated_key` holds an earlier input's."""
        return f"validated/{self.usecase}/{self.id}/{content_sha256[:12]}"

    @property
    def validation_key(self) -> str:
        return f"validated/{self.usecase}/{self.id}/validation.json"

    def quarantine_prefix(self, content_sha256: str) -> str:
        return f"quarantine/{self.usecase}/{self.id}/{content_sha256[:12]}"

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def land_partition(usecase: UseCase, partition: Partition, *, replay: bool, storage: Storage | None = None) -> str:
    """Make sure the landing partition exists; with `replay`, write it from the use case's source.

    An existing partition is never replaced (whatever its content: a broken file stays as
    evidence and goes through the gate). Returns the partition's URI.
    """
    storage = storage or get_storage()
    if storage.exists(partition.landing_key):
        log.info("landing partition already present: %s", storage.uri(partition.landing_key))
        return storage.uri(partition.landing_key)
    if not replay:
        raise MissingPartitionError(
            f"no landing partition at {storage.uri(partition.landing_key)} for interval "
            f"{partition.start.isoformat()} – {partition.end.isoformat()}; the upstream system has not delivered it"
        )
    df = usecase.load_interval(partition.start, partition.end)
    try:
        uri = write_parquet(storage, partition.landing_key, df, create_only=True)
    except ObjectExistsError:  # a concurrent writer landed it first; theirs stands
        return storage.uri(partition.landing_key)
    log.info("landed %d rows at %s", len(df), uri)
    return uri


def read_json(storage: Storage, key: str) -> dict:
    return json.loads(storage.read_bytes(key))


def write_json(storage: Storage, key: str, payload: dict) -> str:
    return storage.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def list_validated(usecase: str, storage: Storage | None = None) -> list[dict]:
    """Validation records of every partition currently validated (not superseded), oldest first."""
    storage = storage or get_storage()
    keys = [k for k in storage.list(f"validated/{usecase}/") if k.endswith("/validation.json")]
    records = (read_json(storage, k) for k in keys)
    return sorted((r for r in records if r.get("status") == "passed"), key=lambda r: r["interval_start"])


def quarantined_batches(usecase: str, storage=None) -> list[dict]:
    """Whole-batch quarantine records (one per distinct rejected input), oldest first."""
    storage = storage or get_storage()
    keys = [k for k in storage.list(f"quarantine/{usecase}/") if k.endswith("/validation.json")]
    return sorted((read_json(storage, k) for k in keys), key=lambda r: r["interval_start"])


def read_validated(records: list[dict], storage: Storage | None = None):
    """Concatenate validated partitions, checking each against the hash it was validated with."""
    import pandas as pd

    storage = storage or get_storage()
    frames = []
    for rec in records:
        data = storage.read_bytes(rec["validated_key"])
        if sha256(data) != rec["validated_sha256"]:
            raise ValueError(
                f"{storage.uri(rec['validated_key'])} changed after validation "
                f"(sha256 {sha256(data)[:12]}, recorded {rec['validated_sha256'][:12]}); re-run its validation"
            )
        frames.append(parse_parquet(data, storage.uri(rec["validated_key"])).assign(_partition=rec["partition"]))
    return pd.concat(frames, ignore_index=True)
