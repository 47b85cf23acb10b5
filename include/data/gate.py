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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from include.alerting.alerts import send_alert
from include.data.history import load_history, profile
from include.data.partitions import Partition, list_validated, read_json, sha256, write_json
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
from include.data.suite import BATCH, Failure, assess, build_suite, data_docs, result_json, row_count_bounds, run_suite
from include.outcomes import FailNow
from include.settings import get_settings
from include.usecases import UseCase

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DATA_DOCS = "data_docs.html"
"""GX's Data Docs page of a validation, beside its GX result (validated zone) or its quarantine record."""


class BatchQuarantined(FailNow):
    """The whole partition failed the gate; its message names the partition and the failures."""

    alerted = True  # a `quarantined` alert went out already; the failure notifier does not repeat it


class LandingRefused(FailNow):
    """The landing file is larger than the gate may read (LOOP_MAX_LANDING_BYTES); it was left unread."""


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


def _write_validated(storage: Storage, partition: Partition, content_sha: str, good: pd.DataFrame) -> str:
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


@dataclass(frozen=True)
class _Delivery:
    """The input in a landing partition, read for the gate, beside the partition's record before it."""

    partition: Partition
    uri: str
    data: bytes
    sha: str
    current: dict | None
    """The partition's validation record, if any: the outcome of the input delivered before."""

    @property
    def passed_before(self) -> bool:
        """This very input passed already (a repeated delivery): nothing to do."""
        return bool(self.current) and self.current["status"] == "passed" and self.current["landing_sha256"] == self.sha

    @property
    def replaced(self) -> str | None:
        """The hash of the earlier, different input this one replaces (a re-delivery), or None."""
        return self.current["landing_sha256"] if self.current and self.current["landing_sha256"] != self.sha else None

    @property
    def quarantine_prefix(self) -> str:
        return self.partition.quarantine_prefix(self.sha)

    def record(self) -> dict:
        """What the validation record of this input starts with, whatever the outcome."""
        return {
            "partition": self.partition.id,
            "usecase": self.partition.usecase,
            "interval_start": self.partition.start.isoformat(),
            "interval_end": self.partition.end.isoformat(),
            "landing_uri": self.uri,
            "landing_sha256": self.sha,
        }


@dataclass(frozen=True)
class _Findings:
    """What the gate found in a batch: batch failures, flagged rows (index → reasons), the GX result
    and the history the batch was held to. A batch never decoded has its failures only."""

    failures: list[Failure]
    rows: pd.DataFrame | None = None
    bad_rows: dict = field(default_factory=dict)
    gx_json: dict | None = None
    suite: str = ""
    history: dict | None = None
    """{"partitions", "note"}; None when the batch never reached the suite."""
    docs: str | None = None
    """GX's Data Docs page of the validation; None when the batch never reached the suite."""

    @property
    def n_rows(self) -> int:
        return 0 if self.rows is None else len(self.rows)

    @property
    def history_note(self) -> str:
        return self.history["note"] if self.history else ""


def validate_partition(
    usecase: UseCase, partition: Partition, *, max_bad_row_share: float, storage: Storage | None = None
) -> dict:
    """Run the gate on a landing partition; returns the validation record of a passing batch.

    Raises `BatchQuarantined` for a rejected batch (after writing the quarantine record), and
    `LandingRefused` for a file too large to read.
    """
    storage = storage or get_storage()
    max_bytes = get_settings().max_landing_bytes
    delivery = _receive(storage, partition, max_bytes)
    if delivery.passed_before:
        log.info("partition %s already passed with this input (sha256 %s): nothing to do", partition.id, delivery.sha[:12])
        return delivery.current
    df, undecoded = _decode(delivery.data, delivery.uri, row_count_bounds(usecase.contract, partition)[1], max_bytes)
    if undecoded:
        raise _quarantine(storage, delivery, _Findings(undecoded))
    found = _check(usecase, delivery, df, max_bad_row_share, storage)
    if found.failures:
        raise _quarantine(storage, delivery, found)
    good, published = _publish_batch(storage, delivery, found)
    record = _passed_record(usecase, delivery, found, good, published)
    # validation.json is written last: its presence is what marks the partition validated, and
    # replacing it is what moves the partition from one input's rows to another's.
    write_json(storage, partition.validation_key, record)
    log.info("partition %s passed: %d rows validated, %d quarantined", partition.id, len(good), len(found.bad_rows))
    return record


def _receive(storage: Storage, partition: Partition, max_bytes: int) -> _Delivery:
    """The partition's landing input, read whole (the gate validates in memory, so a file over
    `max_bytes` is refused unread), with the record of what it held before."""
    try:
        data = storage.read_bytes(partition.landing_key, max_bytes=max_bytes)
    except ObjectTooLargeError as exc:
        raise LandingRefused(
            f"partition {partition.id} refused: {exc} (LOOP_MAX_LANDING_BYTES). The gate validates a partition in memory: "
            "have upstream deliver smaller intervals, or raise the limit if the workers have the memory; then clear this task."
        ) from None
    current = read_json(storage, partition.validation_key) if storage.exists(partition.validation_key) else None
    delivery = _Delivery(partition, storage.uri(partition.landing_key), data, sha256(data), current)
    if delivery.replaced:
        log.warning(
            "partition %s was re-delivered (sha256 %s, was %s): validating the new input",
            partition.id,
            delivery.sha[:12],
            delivery.replaced[:12],
        )
    return delivery


def _check(usecase: UseCase, delivery: _Delivery, df: pd.DataFrame, max_bad_row_share: float, storage: Storage) -> _Findings:
    """Run the GX suite on the decoded batch, with the history checks of the partitions validated
    before it; a batch identical to another validated partition fails too."""
    settings, partition = get_settings(), delivery.partition
    validated = list_validated(partition.usecase, storage)
    df = df.reset_index(drop=True)
    history, history_note = load_history(
        validated,
        partition,
        usecase.contract,
        n=settings.gate_history_partitions,
        min_partitions=settings.gate_history_min_partitions,
        storage=storage,
    )
    suite = build_suite(usecase.contract, partition, history)
    log.info(
        "validating %s (%d rows) against suite %s (%d expectations; %s)",
        delivery.uri,
        len(df),
        suite.name,
        len(suite.expectations),
        history_note,
    )
    gx_result = run_suite(df, suite)
    gx_json = result_json(gx_result)
    failures, bad_rows = assess(df, gx_result, max_bad_row_share)
    docs = data_docs(gx_result)
    return _Findings(
        failures=_duplicates(validated, delivery) + failures,
        rows=df,
        bad_rows=bad_rows,
        gx_json=gx_json,
        suite=suite.name,
        history={"partitions": list(history.partitions) if history else [], "note": history_note},
        docs=docs,
    )


def _duplicates(validated: list[dict], delivery: _Delivery) -> list[Failure]:
    """The batch failure of an input identical to another validated partition's (a delivery to the
    wrong interval), or none."""
    twins = [r["partition"] for r in validated if r["landing_sha256"] == delivery.sha and r["partition"] != delivery.partition.id]
    return [Failure("unique_batch", None, BATCH, f"identical to already validated partition(s) {twins}")] if twins else []


def _quarantine(storage: Storage, delivery: _Delivery, found: _Findings) -> BatchQuarantined:
    """Quarantine the whole batch: a copy of the input with its GX result and report, keyed by its
    hash; withdraw the passed input it replaces; alert. Returns the error the caller raises, which
    names the partition, the failures and where the evidence is."""
    partition, qprefix = delivery.partition, delivery.quarantine_prefix
    storage.write_bytes(f"{qprefix}/data.parquet", delivery.data)
    _withdraw_replaced(storage, delivery)
    record = delivery.record() | ({"history": found.history} if found.history is not None else {})
    if found.docs is not None:
        record["data_docs_key"] = f"{qprefix}/{DATA_DOCS}"
        record["data_docs_uri"] = storage.write_bytes(record["data_docs_key"], found.docs.encode())
    result_uri = write_json(
        storage,
        f"{qprefix}/validation.json",
        {**record, "status": "quarantined", "failures": [str(f) for f in found.failures], "gx_result": found.gx_json},
    )
    report = _report(partition, delivery.uri, "QUARANTINED", found.failures, found.bad_rows, found.n_rows, found.history_note)
    report_uri = storage.write_bytes(f"{qprefix}/report.md", report.encode())
    failures = found.failures
    summary = "; ".join(str(f) for f in failures[:8]) + (f"; and {len(failures) - 8} more" if len(failures) > 8 else "")
    send_alert(
        get_settings(),
        "quarantined",
        f"partition {partition.id} quarantined: {summary}",
        {"partition": partition.id, "landing_uri": delivery.uri, "gx_result": result_uri},
        links={"report": report_uri, "data_docs": record.get("data_docs_uri")},
    )
    return BatchQuarantined(
        f"partition {partition.id} ({delivery.uri}) quarantined: {summary}. "
        f"Report: {report_uri}; GX result: {result_uri}. Fix the input upstream, then re-validate it with the `revalidate` DAG (or clear this task)."
    )


def _withdraw_replaced(storage: Storage, delivery: _Delivery) -> None:
    """Upstream replaced a delivery that had passed with one that fails: withdraw the old one from
    training (its record and data stay, marked superseded)."""
    if delivery.replaced and delivery.current["status"] == "passed":
        superseded = delivery.current | {"status": "superseded", "superseded_by": delivery.sha}
        write_json(storage, delivery.partition.validation_key, superseded)


def _publish_batch(storage: Storage, delivery: _Delivery, found: _Findings) -> tuple[pd.DataFrame, dict]:
    """Write a passing batch out: its flagged rows to quarantine with their reasons, the rest to the
    validated zone beside its GX result. Returns the rows published and where everything went."""
    bad_index = sorted(found.bad_rows)
    if bad_index:
        _quarantine_rows(storage, delivery, found, bad_index)
    good = found.rows.drop(index=bad_index).reset_index(drop=True)
    key = _write_validated(storage, delivery.partition, delivery.sha, good)
    folder = key.rsplit("/", 1)[0]
    gx_uri = write_json(storage, f"{folder}/gx_result.json", found.gx_json)
    docs_key = f"{folder}/{DATA_DOCS}"
    docs_uri = storage.write_bytes(docs_key, found.docs.encode())
    return good, {
        "validated_key": key,
        "validated_uri": storage.uri(key),
        "validated_sha256": sha256(storage.read_bytes(key)),
        "gx_result_uri": gx_uri,
        "data_docs_key": docs_key,
        "data_docs_uri": docs_uri,
        "quarantine_uri": storage.uri(f"{delivery.quarantine_prefix}/rows.parquet") if bad_index else None,
    }


def _quarantine_rows(storage: Storage, delivery: _Delivery, found: _Findings, bad_index: list) -> None:
    """The rows that failed row checks, each with its reasons, and a report; the batch passes without them."""
    import pandas as pd

    rows = found.rows.loc[bad_index].copy()
    rows["_quarantine_reason"] = pd.Series({i: "; ".join(found.bad_rows[i]) for i in bad_index})
    write_parquet(storage, f"{delivery.quarantine_prefix}/rows.parquet", rows)
    report = _report(
        delivery.partition, delivery.uri, "PASSED, rows quarantined", [], found.bad_rows, found.n_rows, found.history_note
    )
    storage.write_bytes(f"{delivery.quarantine_prefix}/report.md", report.encode())


def _passed_record(usecase: UseCase, delivery: _Delivery, found: _Findings, good: pd.DataFrame, published: dict) -> dict:
    """The validation record of a passing batch: where its rows went, what the gate found, and the
    small profile of its rows that the history checks of later batches read."""
    return delivery.record() | {
        "history": found.history,
        "status": "passed",
        **published,
        "gx_statistics": found.gx_json.get("statistics", {}),
        "suite": found.suite,
        "rows_landed": found.n_rows,
        "rows_validated": len(good),
        "rows_quarantined": len(found.bad_rows),
        "profile": profile(good, usecase.contract),
        **({"supersedes": delivery.replaced} if delivery.replaced else {}),
    }


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
