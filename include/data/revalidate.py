"""A quarantined partition through the gate again, once its input is fixed (the `revalidate` DAG)."""

from __future__ import annotations

import logging

from include.data.gate import validate_partition
from include.data.partitions import Partition, quarantined_batches, read_json, sha256
from include.data.storage import Storage, get_storage, write_parquet
from include.outcomes import FailNow
from include.usecases import UseCase

log = logging.getLogger(__name__)


class RevalidationRefused(FailNow, ValueError):
    """`revalidate` was asked for a partition never quarantined, or for the input that was."""


def revalidate_quarantined(
    usecase: UseCase, partition_id: str, *, refetch: bool, max_bad_row_share: float, storage: Storage | None = None
) -> dict:
    """Put a quarantined partition through the gate again, after a fix (the `revalidate` form).

    The fix is either a corrected file the upstream system delivered to the partition's landing
    path, or, with `refetch`, a fresh pull of the interval from the use case's source. The
    quarantined bytes stay under `quarantine/` either way. Refused, with the reason, when the
    partition was never quarantined or its landing input is unchanged since. Returns the new
    validation record; raises `BatchQuarantined` if the input still fails.
    """
    from datetime import datetime

    storage = storage or get_storage()
    quarantined = quarantined_batches(usecase.name, storage)
    found = [r for r in quarantined if r["partition"] == partition_id]
    if not found:
        known = sorted({r["partition"] for r in quarantined})
        raise RevalidationRefused(
            f"partition {partition_id!r} of {usecase.name} was never quarantined; quarantined: {', '.join(known) or 'none'}"
        )
    last = found[-1]
    partition = Partition(
        usecase.name, datetime.fromisoformat(last["interval_start"]), datetime.fromisoformat(last["interval_end"])
    )
    if refetch:
        kept = f"{partition.quarantine_prefix(last['landing_sha256'])}/data.parquet"
        if not storage.exists(kept):
            raise RuntimeError(f"the quarantined input {storage.uri(kept)} is missing: refusing to overwrite the landing file")
        uri = write_parquet(storage, partition.landing_key, usecase.load_interval(partition.start, partition.end))
        log.info("re-fetched %s from the source into %s (the quarantined input stays at %s)", partition.id, uri, kept)
    landing_sha = sha256(storage.read_bytes(partition.landing_key))
    if storage.exists(partition.validation_key):
        current = read_json(storage, partition.validation_key)
        if current.get("status") == "passed" and current["landing_sha256"] == landing_sha:
            log.info("partition %s already passed with this input; nothing to do", partition.id)
            return current
    if landing_sha in {r["landing_sha256"] for r in found}:
        raise RevalidationRefused(
            f"the landing input of {partition.id} ({storage.uri(partition.landing_key)}) is the one that was quarantined: "
            "deliver the fixed file there first, or re-fetch it from the source"
        )
    return validate_partition(usecase, partition, max_bad_row_share=max_bad_row_share, storage=storage)
