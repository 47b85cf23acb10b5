"""The expectation suite of a landing partition, generated from the use case's contract and the
recent history of validated partitions, and the reading of its result: which failures judge the
whole batch, which flag single rows.

Each expectation carries its level in `meta["level"]`: ``row`` expectations (nulls, ranges,
allowed sets, key uniqueness, rows inside the interval) flag single rows; ``batch`` expectations
(schema, types, row count for the interval, freshness, column means, no column wholly null, and
the history checks of `include.data.history`, marked by `meta["history"]`) judge the partition as
a whole. What happens to a failing batch or row is the gate's business (`include.data.gate`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from include.data.history import History, describe, history_expectations
from include.data.partitions import Partition
from include.usecases import Contract, Kind

if TYPE_CHECKING:
    import great_expectations as gx
    import pandas as pd

ROW = "row"
BATCH = "batch"

# The type name GX's expect_column_values_to_be_of_type observes for each kind under pandas 3
# (string columns are `str`; tz-aware timestamps are checked per value as `Timestamp`).
GX_TYPES: dict[Kind, str] = {"int": "int64", "float": "float64", "str": "str", "datetime": "Timestamp"}


@dataclass(frozen=True)
class Failure:
    expectation: str
    column: str | None
    level: str
    detail: str

    def __str__(self) -> str:
        where = f"[{self.column}]" if self.column else ""
        return f"{self.expectation}{where}: {self.detail}"


def import_gx():
    """Import great_expectations without its INFO flood in the task log (progress bars are
    switched off per context in `run_suite`)."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)  # GX sets some levels while importing
    return gx


def row_count_bounds(contract: Contract, partition: Partition) -> tuple[int, int]:
    """How many rows the partition may hold: the contract's rows per day, over the interval."""
    lo, hi = contract.rows_per_day
    return int(lo * partition.days), int(hi * partition.days) + 1


def build_suite(contract: Contract, partition: Partition, history: History | None = None) -> gx.ExpectationSuite:
    """The expectation suite for one partition of `contract` (bounds depend on the interval), with
    the history checks `history` sets when there is one."""
    gx = import_gx()
    import great_expectations.expectations as gxe

    row, batch = {"level": ROW}, {"level": BATCH}
    min_rows, max_rows = row_count_bounds(contract, partition)
    exps = [
        gxe.ExpectTableColumnsToMatchSet(column_set=contract.names, exact_match=True, meta=batch),
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max_rows, meta=batch),
        gxe.ExpectColumnMaxToBeBetween(
            column=contract.event_time,
            min_value=partition.end - timedelta(hours=contract.freshness_hours),
            max_value=partition.end,
            meta=batch,
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=contract.event_time,
            min_value=partition.start,
            max_value=partition.end - timedelta(microseconds=1),
            meta=row,
        ),
        # GX's compound-key expectation wants two columns or more; a one-column key is a column check.
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(contract.key), meta=row)
        if len(contract.key) > 1
        else gxe.ExpectColumnValuesToBeUnique(column=contract.key[0], meta=row),
    ]
    recent = history_expectations(contract, history) if history is not None else []
    # The history's missing-share check of a column also refuses it wholly null (strict_min): it
    # takes the place of the fixed check, one expectation fewer for GX to run per column.
    held = {e.column for e in recent if e.meta["history"]["check"] == "missing share"}
    for col in contract.columns:
        exps.append(gxe.ExpectColumnValuesToBeOfType(column=col.name, type_=GX_TYPES[col.kind], meta=batch))
        if not col.nullable:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col.name, meta=row))
        elif col.name not in held:  # sparse is fine; wholly null is a column the upstream stopped filling
            exps.append(
                gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column=col.name, min_value=0, strict_min=True, meta=batch)
            )
        if col.min is not None or col.max is not None:
            exps.append(gxe.ExpectColumnValuesToBeBetween(column=col.name, min_value=col.min, max_value=col.max, meta=row))
        if col.allowed is not None:
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=col.name, value_set=list(col.allowed), meta=row))
        if col.mean_between is not None:
            lo_mean, hi_mean = col.mean_between
            exps.append(gxe.ExpectColumnMeanToBeBetween(column=col.name, min_value=lo_mean, max_value=hi_mean, meta=batch))
    return gx.ExpectationSuite(name=f"{partition.usecase}.landing", expectations=exps + recent)


def run_suite(df: pd.DataFrame, suite: gx.ExpectationSuite):
    """Validate `df` with `suite` in an ephemeral GX context; COMPLETE results carry row indices."""
    gx = import_gx()

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (
        context.data_sources.add_pandas("landing").add_dataframe_asset("partition").add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(suite)
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    return batch.validate(suite, result_format={"result_format": "COMPLETE"})


def data_docs(gx_result) -> str:
    """The validation result as GX's own Data Docs page (the renderer and view a Data Docs site
    builds its validation pages with), one self-contained HTML file; its styles load from GX's CDNs."""
    import numpy as np
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    # GX's number formatting parses repr(value): under NumPy 2 a float64 reprs as `np.float64(0.83)`,
    # which it cannot parse (it logs a traceback per value and leaves the cell empty). NumPy 1.25's
    # repr, for the time of the rendering only, gives it `0.83`.
    with np.printoptions(legacy="1.25"):
        return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(gx_result))


ROW_LISTS = ("unexpected_list", "unexpected_index_list", "partial_unexpected_index_list", "unexpected_index_query")


def result_json(gx_result) -> dict:
    """The GX result as stored with the partition: row lists only where they flag rows (a batch-level
    check such as "values seen before" would otherwise store thousands of indices per batch)."""
    out = gx_result.to_json_dict()
    for r in out.get("results", []):
        if r["expectation_config"].get("meta", {}).get("level") != ROW:
            for key in ROW_LISTS:
                (r.get("result") or {}).pop(key, None)
    return out


def _exception(result) -> str | None:
    """The message of an exception GX raised while evaluating `result`, if any.

    GX reports it either at the top of `exception_info` or per metric in a nested dict.
    """
    info = result.exception_info or {}
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for item in candidates:
        if item.get("raised_exception"):
            return (str(item.get("exception_message") or "exception").splitlines() or ["exception"])[0]
    return None


def _plain(value):
    """A value as a reader wants it in a report: no numpy or Timestamp reprs, floats rounded."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    return round(value, 3) if isinstance(value, float) else value


def _describe(result) -> str:
    cfg, res = result.expectation_config, result.result or {}
    error = _exception(result)
    if error:
        return f"could not be evaluated: {error}"
    if "history" in cfg.meta:
        return describe(cfg.meta["history"], cfg.kwargs, res)
    if "observed_value" in res:
        observed = _plain(res["observed_value"])
        bounds = {k: _plain(v) for k, v in cfg.kwargs.items() if k in ("min_value", "max_value", "strict_min", "type_")}
        if "column_set" in cfg.kwargs and isinstance(observed, list):
            missing = sorted(set(cfg.kwargs["column_set"]) - set(observed))
            extra = sorted(set(observed) - set(cfg.kwargs["column_set"]))
            return f"missing columns {missing}, unexpected columns {extra}"
        return f"observed {observed!r}, expected {bounds}"
    sample = res.get("partial_unexpected_list", [])[:5]
    return f"{res.get('unexpected_count', '?')} rows ({res.get('unexpected_percent', 0):.2f}%), e.g. {sample}"


def assess(df: pd.DataFrame, gx_result, max_bad_row_share: float) -> tuple[list[Failure], dict[int, list[str]]]:
    """Apply the policy to a GX result: batch-level failures, and reasons per bad row index."""
    batch_failures: list[Failure] = []
    unevaluated: list[Failure] = []
    bad_rows: dict[int, list[str]] = {}
    for r in gx_result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        column = cfg.kwargs.get("column") or (",".join(cfg.kwargs.get("column_list", [])) or None)
        failure = Failure(cfg.type, column, cfg.meta.get("level", BATCH), _describe(r))
        indices = (r.result or {}).get("unexpected_index_list")
        errored = _exception(r) is not None
        if failure.level == ROW and indices is not None and not errored:
            reason = f"{cfg.type}[{column}]" if column else cfg.type
            for i in indices:
                bad_rows.setdefault(int(i), []).append(reason)
        elif errored:
            unevaluated.append(failure)  # a consequence (e.g. of a missing column): reported last
        else:
            batch_failures.append(failure)
    share = len(bad_rows) / len(df) if len(df) else 0.0
    if share > max_bad_row_share:
        counts = Counter(reason for reasons in bad_rows.values() for reason in reasons)
        top = ", ".join(f"{reason}: {n}" for reason, n in counts.most_common(3))
        batch_failures.append(
            Failure(
                "bad_row_share",
                None,
                BATCH,
                f"{len(bad_rows)} of {len(df)} rows ({share:.2%}) fail row checks ({top}); the limit is {max_bad_row_share:.2%}",
            )
        )
    return batch_failures + unevaluated, bad_rows
