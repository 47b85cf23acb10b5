"""The data gate: a Great Expectations suite generated from the use case's contract, and the
quarantine policy that acts on its result.

Policy (each expectation carries its level in `meta["level"]`):

* ``row`` expectations (nulls, ranges, allowed sets, key uniqueness, rows inside the interval)
  flag single rows. Flagged rows go to quarantine with one reason per row; the rest of the batch
  passes if the flagged share stays at or under LOOP_MAX_BAD_ROW_SHARE.
* ``batch`` expectations (schema, types, row count for the interval, freshness, column means,
  no column wholly null) judge the partition as a whole. Any failure, an unreadable file, a
  batch identical to another partition, or too many bad rows sends the whole batch to quarantine
  with the GX result and a readable report, and the task fails naming the partition and the
  failed expectations.
* ``batch`` expectations from recent history (`include.data.history`) hold the batch, column by
  column, to the last LOOP_GATE_HISTORY_PARTITIONS validated partitions before it: missing
  share, quartiles, values seen before, category shares. They catch a unit change inside the
  fixed bounds and a column that empties; the report says what moved, how far, and against which
  partitions. With fewer than LOOP_GATE_HISTORY_MIN_PARTITIONS before it they are absent, and the
  log, the record and the report say so. A passing batch's record keeps the small profile of its
  rows that later batches are held to.

Before a row is decoded, size is checked, so a huge file cannot exhaust the worker's memory: a
landing file over LOOP_MAX_LANDING_BYTES is refused unread (`LandingRefused`; it stays where it
is, nothing is copied), and a Parquet footer declaring more rows than the contract allows for the
interval, or more uncompressed bytes than that limit, quarantines the batch undecoded.

The landing input is never modified or deleted: quarantine stores a copy keyed by the input's
hash, so clearing the task after the upstream fix re-validates and nothing is lost. Repeated,
replaced and out-of-order deliveries follow the policy in `include.data.partitions`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from include.alerting.alerts import send_alert
from include.data.history import load_history, profile
from include.data.partitions import Partition, list_validated, quarantined_batches, read_json, sha256, write_json
from include.data.storage import (
    MalformedPartitionError,
    ObjectExistsError,
    ObjectTooLargeError,
    Storage,
    get_storage,
    parquet_bytes,
    parquet_metadata,
    parse_parquet,
    write_parquet,
)
from include.data.suite import BATCH, Failure, assess, build_suite, result_json, row_count_bounds, run_suite
from include.outcomes import FailNow
from include.settings import get_settings
from include.usecases import UseCase

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class BatchQuarantined(FailNow):
    """The whole partition failed the gate; its message names the partition and the failures."""

    alerted = True  # a `quarantined` alert went out already; the failure notifier does not repeat it


class LandingRefused(FailNow):
    """The landing file is larger than the gate may read (LOOP_MAX_LANDING_BYTES); it was left unread."""


class RevalidationRefused(FailNow, ValueError):
    """`revalidate` was asked for a partition never quarantined, or for the input that was."""


def _report(
    partition: Partition, landing_uri: str, status: str, failures: list[Failure], bad_rows: dict, n_rows: int, history: str = ""
) -> str:
    lines = [
        f"# Validation of {partition.usecase} {partition.id}: {status}",
        "",
        f"- input: `{landing_uri}`",
        f"- interval: {partition.start.isoformat()} – {partition.end.isoformat()}",
        f"- rows: {n_rows}, rows failing row checks: {len(bad_rows)}",
        *([f"- {history}"] if history else []),
        "",
    ]
    if failures:
        lines += ["## Batch-level failures", ""] + [f"- {f}" for f in failures] + [""]
    if bad_rows:
        counts: dict[str, int] = {}
        for reasons in bad_rows.values():
            for reason in reasons:
                counts[reason] = counts.get(reason, 0) + 1
        lines += ["## Row-level failures", ""] + [f"- {k}: {v} rows" for k, v in sorted(counts.items())] + [""]
    return "\n".join(lines)


def _decode(data: bytes, uri: str, max_rows: int, max_bytes: int) -> tuple[pd.DataFrame | None, list[Failure]]:
    """The landing file as a frame, or the batch failures that keep it undecoded: unreadable, or
    larger than the partition can be by its Parquet footer (read before any row)."""
    try:
        meta = parquet_metadata(data, uri)
        unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        too_big = []
        if meta.num_rows > max_rows:
            too_big.append(f"{meta.num_rows:,} rows, more than the {max_rows:,} the contract allows for the interval")
        if unpacked > max_bytes:
            too_big.append(f"{unpacked:,} uncompressed bytes, more than LOOP_MAX_LANDING_BYTES={max_bytes:,}")
        if too_big:
            return None, [Failure("parquet_footer", None, BATCH, f"declares {d}: not decoded") for d in too_big]
        return parse_parquet(data, uri), []
    except MalformedPartitionError as exc:
        return None, [Failure("readable_parquet", None, BATCH, str(exc))]


def _publish(storage: Storage, partition: Partition, content_sha: str, good: pd.DataFrame) -> str:
    """Write the rows that passed where no other input's rows are (validated files are written
    once); returns their key."""
    data = parquet_bytes(good)
    for key in (partition.validated_key, f"{partition.validated_prefix(content_sha)}/data.parquet"):
        try:
            storage.write_bytes(key, data, create_only=True)
            return key
        except ObjectExistsError:
            if storage.read_bytes(key) == data:  # these rows, published by an earlier run
                return key
    raise ObjectExistsError(f"{storage.uri(key)} holds other rows for input {content_sha[:12]}: inspect it before re-validating")


def validate_partition(
    usecase: UseCase, partition: Partition, *, max_bad_row_share: float, storage: Storage | None = None
) -> dict:
    """Run the gate on a landing partition; returns the validation record of a passing batch.

    Raises `BatchQuarantined` for a rejected batch (after writing the quarantine record), and
    `LandingRefused` for a file too large to read.
    """
    storage = storage or get_storage()
    settings = get_settings()
    max_bytes = settings.max_landing_bytes
    landing_uri = storage.uri(partition.landing_key)
    try:
        data = storage.read_bytes(partition.landing_key, max_bytes=max_bytes)
    except ObjectTooLargeError as exc:
        raise LandingRefused(
            f"partition {partition.id} refused: {exc} (LOOP_MAX_LANDING_BYTES). The gate validates a partition in memory: "
            "have upstream deliver smaller intervals, or raise the limit if the workers have the memory; then clear this task."
        ) from None
    content_sha = sha256(data)
    current = read_json(storage, partition.validation_key) if storage.exists(partition.validation_key) else None
    if current and current["status"] == "passed" and current["landing_sha256"] == content_sha:
        log.info("partition %s already passed with this input (sha256 %s): nothing to do", partition.id, content_sha[:12])
        return current
    replaced = current["landing_sha256"] if current and current["landing_sha256"] != content_sha else None
    if replaced:
        log.warning(
            "partition %s was re-delivered (sha256 %s, was %s): validating the new input",
            partition.id,
            content_sha[:12],
            replaced[:12],
        )
    qprefix = partition.quarantine_prefix(content_sha)
    record = {
        "partition": partition.id,
        "usecase": partition.usecase,
        "interval_start": partition.start.isoformat(),
        "interval_end": partition.end.isoformat(),
        "landing_uri": landing_uri,
        "landing_sha256": content_sha,
    }

    history_note = ""

    def quarantine_batch(failures: list[Failure], gx_json: dict | None, bad_rows: dict, n_rows: int):
        storage.write_bytes(f"{qprefix}/data.parquet", data)
        if replaced and current["status"] == "passed":
            # Upstream replaced a delivery that had passed: withdraw it from training (the
            # record and its data stay, marked superseded).
            write_json(storage, partition.validation_key, current | {"status": "superseded", "superseded_by": content_sha})
        result_uri = write_json(
            storage,
            f"{qprefix}/validation.json",
            {
                **record,
                "status": "quarantined",
                "failures": [str(f) for f in failures],
                "gx_result": gx_json,
            },
        )
        report_uri = storage.write_bytes(
            f"{qprefix}/report.md", _report(partition, landing_uri, "QUARANTINED", failures, bad_rows, n_rows, history_note).encode()
        )
        summary = "; ".join(str(f) for f in failures[:8]) + (f"; and {len(failures) - 8} more" if len(failures) > 8 else "")
        send_alert(
            get_settings(),
            "quarantined",
            f"partition {partition.id} quarantined: {summary}",
            {"partition": partition.id, "landing_uri": landing_uri, "gx_result": result_uri},
            links={"report": report_uri},
        )
        raise BatchQuarantined(
            f"partition {partition.id} ({landing_uri}) quarantined: {summary}. "
            f"Report: {report_uri}; GX result: {result_uri}. Fix the input upstream, then re-validate it with the `revalidate` DAG (or clear this task)."
        )

    df, undecoded = _decode(data, landing_uri, row_count_bounds(usecase.contract, partition)[1], max_bytes)
    if undecoded:
        quarantine_batch(undecoded, None, {}, 0)

    validated = list_validated(partition.usecase, storage)
    twins = [r["partition"] for r in validated if r["landing_sha256"] == content_sha and r["partition"] != partition.id]
    duplicate = [Failure("unique_batch", None, BATCH, f"identical to already validated partition(s) {twins}")] if twins else []

    df = df.reset_index(drop=True)
    history, history_note = load_history(
        validated,
        partition,
        usecase.contract,
        n=settings.gate_history_partitions,
        min_partitions=settings.gate_history_min_partitions,
        storage=storage,
    )
    record["history"] = {"partitions": list(history.partitions) if history else [], "note": history_note}
    suite = build_suite(usecase.contract, partition, history)
    log.info(
        "validating %s (%d rows) against suite %s (%d expectations; %s)",
        landing_uri,
        len(df),
        suite.name,
        len(suite.expectations),
        history_note,
    )
    gx_result = run_suite(df, suite)
    gx_json = result_json(gx_result)
    failures, bad_rows = assess(df, gx_result, max_bad_row_share)
    failures = duplicate + failures
    if failures:
        quarantine_batch(failures, gx_json, bad_rows, len(df))

    import pandas as pd

    bad_index = sorted(bad_rows)
    if bad_index:
        rows = df.loc[bad_index].copy()
        rows["_quarantine_reason"] = pd.Series({i: "; ".join(bad_rows[i]) for i in bad_index})
        write_parquet(storage, f"{qprefix}/rows.parquet", rows)
        storage.write_bytes(
            f"{qprefix}/report.md",
            _report(partition, landing_uri, "PASSED, rows quarantined", [], bad_rows, len(df), history_note).encode(),
        )
    good = df.drop(index=bad_index).reset_index(drop=True)
    validated_key = _publish(storage, partition, content_sha, good)
    gx_uri = write_json(storage, f"{validated_key.rsplit('/', 1)[0]}/gx_result.json", gx_json)
    record |= {
        "status": "passed",
        "validated_key": validated_key,
        "validated_uri": storage.uri(validated_key),
        "validated_sha256": sha256(storage.read_bytes(validated_key)),
        "gx_result_uri": gx_uri,
        "gx_statistics": gx_json.get("statistics", {}),
        "suite": suite.name,
        "rows_landed": len(df),
        "rows_validated": len(good),
        "rows_quarantined": len(bad_index),
        "quarantine_uri": storage.uri(f"{qprefix}/rows.parquet") if bad_index else None,
        "profile": profile(good, usecase.contract),  # what the history checks of later batches read
        **({"supersedes": replaced} if replaced else {}),
    }
    # validation.json is written last: its presence is what marks the partition validated, and
    # replacing it is what moves the partition from one input's rows to another's.
    write_json(storage, partition.validation_key, record)
    log.info("partition %s passed: %d rows validated, %d quarantined", partition.id, len(good), len(bad_index))
    return record


VALIDATED_REF_KEYS = (
    "partition",
    "interval_start",
    "interval_end",
    "validated_uri",
    "validated_sha256",
    "rows_validated",
    "rows_quarantined",
)


def validated_ref(record: dict) -> dict:
    """What the validated-data Asset event carries: a reference to the partition, not its rows."""
    return {k: record[k] for k in VALIDATED_REF_KEYS}


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
