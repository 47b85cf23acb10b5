"""What the data gate knows of recent history: a small profile of every validated partition, and
the bounds they set for the next batch.

Fixed bounds in the contract cannot see a unit change that stays inside them (°F → °C, miles →
km, mph → km/h) or a column that fills less and less. So each landing batch is also held to the
last LOOP_GATE_HISTORY_PARTITIONS validated partitions before its interval, column by column
(generated from the contract; a column with `history_check=False` is left out):

* **missing share** (nullable columns) within the history's range widened by twice that range,
  and by at least 0.2: a storm week's cancellations (2 % → 16 % missing times) pass, a column
  that goes 95 % empty does not;
* **25th, 50th and 75th percentiles** (numbers) within the range each took in the history,
  widened by three times that range, and at least by 0.55 of the column's widest lower spread
  (q05 to median) below and widest upper spread (median to q95) above: the seasons move them
  less in a week, a unit change or a format change (HHMM → minutes) further. A column the
  contract keeps non-negative (a ratio scale) may not move them below a tenth or beyond ten
  times the history's (% → fraction, minutes → hours: whatever the season);
* **values seen before** (numbers measured at a fixed resolution: the history's 60 most frequent
  non-zero values make up 60 % of its non-zero values or more): at least 20 % of the batch's
  values must be among them. A unit change puts nearly every value off that grid (in real weeks
  40 % or more are on it). Zero is the same in every unit: it counts as seen where it is rare,
  and is left out where it is common (rain);
* **category shares** (columns with an allowed set): the KL divergence from the history's pooled
  shares at most 3 × the largest any history partition has from the others, and at least 0.05;
* **distinct values** (other text columns) between half the history's fewest and twice its most.

Means and standard deviations are not bounded: one storm moves them further than a unit change.
The numbers were measured by replaying 2013 of the flights use case week by week through the gate
(`tests/integration/test_data_gate.py`): no week is quarantined, and the closest call uses 89 % of
a margin (the Christmas week's seat counts). 0.55 of the spread sits between 0.5 (that call at
98 %) and 0.6 (HHMM → minutes unseen in `arr_time` in 13 of 49 weeks). Eight partitions (two
months of weeks) give each check a season's worth of variation without holding on to last
season. Fewer say too little of a range in spring and autumn: every week of 2013 held to exactly
the n weeks before it fails a check in 11 weeks with n = 3 (a late-May dew point, wind direction),
5 with n = 4, 1 with n = 5 and none with n = 6, 7 or 8; so the checks start at six.

With fewer than LOOP_GATE_HISTORY_MIN_PARTITIONS validated partitions before the batch (the first
weeks) the history checks are absent, and the log and the report say so. The profile of a
partition is computed from its validated rows when it is published and kept in its validation
record (`profile`), so the gate reads N small records, not N partitions; a record without one
(validated before profiles existed) is profiled from its Parquet file, one partition at a time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from include.usecases import Column, Contract

if TYPE_CHECKING:
    import pandas as pd

    from include.data.partitions import Partition
    from include.data.storage import Storage

log = logging.getLogger(__name__)

PROFILE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
CHECKED_QUANTILES = (0.25, 0.5, 0.75)
MISSING_WIDENING = 2.0
MIN_MISSING_MARGIN = 0.2
QUANTILE_WIDENING = 3.0
SPREAD_SHARE = 0.55
RATIO_LIMIT = 10.0
SEEN_VALUES_MAX = 500  # more distinct non-zero values in a partition: a continuous column, no grid kept
SEEN_VALUES_KEPT = 60  # the most frequent values a profile keeps and the check lists (GX copies the list often)
SEEN_VALUES_MIN_COVERAGE = 0.6
SEEN_VALUES_MIN_SHARE = 0.2
KL_WIDENING = 3.0
KL_MIN_THRESHOLD = 0.05
KL_HOLDOUT = 0.001  # weight for categories the history has not seen (a KL divergence needs one)


@dataclass(frozen=True)
class History:
    """The validated partitions a batch is compared with (oldest first) and their profiles."""

    partitions: tuple[str, ...]
    profiles: tuple[dict, ...]

    @property
    def words(self) -> str:
        """How the report names this history."""
        n = len(self.partitions)
        span = self.partitions[0] if n == 1 else f"{self.partitions[0]} … {self.partitions[-1]}"
        return f"the last {n} validated partition{'s' if n != 1 else ''} ({span})"


def checked_columns(contract: Contract) -> list[Column]:
    """The contract's columns the history checks cover (not datetimes, not the opted-out)."""
    return [c for c in contract.columns if c.history_check and c.kind != "datetime"]


def profile(df: pd.DataFrame, contract: Contract) -> dict:
    """The summary of a partition the history checks need: per column the missing count and, by
    kind, quantiles and the distinct non-zero values (numbers), category counts (allowed sets) or
    the distinct count (other text). Plain JSON types only, so a record reads back equal."""
    columns = {}
    for col in checked_columns(contract):
        values = df[col.name]
        present = values.dropna()
        entry: dict = {"missing": int(len(values) - len(present))}
        if col.kind in ("int", "float") and len(present):
            numbers = present.astype("float64")
            entry["quantiles"] = [float(v) for v in numbers.quantile(list(PROFILE_QUANTILES), interpolation="nearest")]
            counts = numbers[numbers != 0].value_counts()
            entry["nonzero"] = int(counts.sum())
            # the most frequent non-zero values and their counts, keyed by the value's exact repr
            entry["grid"] = (
                {repr(float(v)): int(n) for v, n in counts.iloc[:SEEN_VALUES_KEPT].items()}
                if len(counts) <= SEEN_VALUES_MAX
                else None
            )
        elif col.kind == "str" and col.allowed is not None:
            entry["counts"] = {str(k): int(v) for k, v in present.value_counts().items()}
        elif col.kind == "str":
            entry["distinct"] = int(present.nunique())
        columns[col.name] = entry
    return {"rows": len(df), "columns": columns}


def select_history(records: list[dict], partition: Partition, n: int) -> list[dict]:
    """The last `n` validated records whose interval starts before `partition`'s (oldest first)."""
    earlier = [
        r for r in records if r["partition"] != partition.id and datetime.fromisoformat(r["interval_start"]) < partition.start
    ]
    earlier.sort(key=lambda r: datetime.fromisoformat(r["interval_start"]))
    return earlier[-n:] if n > 0 else []


def load_history(
    records: list[dict], partition: Partition, contract: Contract, *, n: int, min_partitions: int, storage: Storage
) -> tuple[History | None, str]:
    """The history of `partition` and a sentence for the log and the report; None when fewer than
    `min_partitions` validated partitions precede it (or `n` is 0: history checks switched off)."""
    if n <= 0:
        return None, "history checks off (LOOP_GATE_HISTORY_PARTITIONS=0)"
    chosen = select_history(records, partition, n)
    if len(chosen) < min_partitions:
        return None, (
            f"history checks absent: {len(chosen)} validated partition(s) before {partition.id}, "
            f"they need {min_partitions} (LOOP_GATE_HISTORY_MIN_PARTITIONS)"
        )
    profiles = []
    for rec in chosen:
        if "profile" in rec:
            profiles.append(rec["profile"])
        else:  # validated before profiles were kept: read its rows once, keep only the summary
            from include.data.partitions import read_validated

            log.info("profiling %s from its validated rows (its record has no profile)", rec["partition"])
            profiles.append(profile(read_validated([rec], storage), contract))
    history = History(tuple(r["partition"] for r in chosen), tuple(profiles))
    return history, f"history checks against {history.words}"


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if values else 0.0


def missing_bounds(shares: list[float]) -> tuple[float, float]:
    """Allowed missing share: the history's range widened by twice that range, at least by 0.2."""
    margin = max(MISSING_WIDENING * _spread(shares), MIN_MISSING_MARGIN)
    return max(0.0, min(shares) - margin), min(1.0, max(shares) + margin)


def quantile_bounds(quantiles: list[list[float]], *, ratio_scale: bool = False) -> list[tuple[float, float]]:
    """Allowed range of each of CHECKED_QUANTILES, from the history's PROFILE_QUANTILES (one list
    per partition): the range the quantile took, widened by three times that range, and at least
    by 0.55 of the widest lower spread (q05 to median) below and of the widest upper spread (median
    to q95) above. A history without spread on a side (a column at one value) gets 10 % of its
    median. On a ratio scale (`ratio_scale`: the contract allows no negative values) a positive
    quantile is also held within a tenth and ten times its history's range."""
    at = {q: i for i, q in enumerate(PROFILE_QUANTILES)}
    median = sorted(q[at[0.5]] for q in quantiles)[len(quantiles) // 2]
    fallback = 0.1 * abs(median) or 1e-9
    below = SPREAD_SHARE * max(q[at[0.5]] - q[at[0.05]] for q in quantiles) or fallback
    above = SPREAD_SHARE * max(q[at[0.95]] - q[at[0.5]] for q in quantiles) or fallback
    bounds = []
    for p in CHECKED_QUANTILES:
        seen = [q[at[p]] for q in quantiles]
        widened = QUANTILE_WIDENING * _spread(seen)
        lo, hi = min(seen) - max(widened, below), max(seen) + max(widened, above)
        if ratio_scale and min(seen) > 0:
            lo, hi = max(lo, min(seen) / RATIO_LIMIT), min(hi, max(seen) * RATIO_LIMIT)
        bounds.append((lo, hi))
    return bounds


def seen_values(entries: list[dict]) -> list[float] | None:
    """The SEEN_VALUES_KEPT non-zero values the history holds most often, if the column is
    measured on a grid: every partition has at most SEEN_VALUES_MAX distinct non-zero values, and
    the kept ones make up SEEN_VALUES_MIN_COVERAGE of the history's non-zero values or more."""
    if not entries or any(e.get("grid") is None for e in entries):
        return None
    pooled: dict[float, int] = {}
    for e in entries:
        for v, n in e["grid"].items():
            pooled[float(v)] = pooled.get(float(v), 0) + n
    total = sum(e["nonzero"] for e in entries)
    kept = sorted(pooled, key=lambda v: (-pooled[v], v))[:SEEN_VALUES_KEPT]
    if not total or sum(pooled[v] for v in kept) < SEEN_VALUES_MIN_COVERAGE * total:
        return None
    return sorted(kept)


def kl_divergence(observed: dict[str, float], expected: dict[str, float]) -> float:
    """KL(observed ‖ expected) of category shares, as GX computes it with KL_HOLDOUT spread over
    the observed categories the expected shares lack."""
    p_total = sum(observed.values())
    unseen = [k for k in observed if k not in expected]
    q_total = sum(expected.values())
    kl = 0.0
    for k, count in observed.items():
        p = count / p_total
        q = KL_HOLDOUT / len(unseen) if k in unseen else expected[k] / q_total * (1 - KL_HOLDOUT)
        if p > 0:
            kl += p * math.log(p / q)
    return kl


def category_bounds(counts: list[dict[str, int]]) -> tuple[dict[str, float], float]:
    """The history's pooled category shares and the largest KL divergence allowed from them."""
    pooled: dict[str, float] = {}
    for c in counts:
        for k, v in c.items():
            pooled[k] = pooled.get(k, 0) + v
    total = sum(pooled.values())
    shares = {k: v / total for k, v in sorted(pooled.items())}
    own = []
    for i, c in enumerate(counts):
        others: dict[str, float] = {}
        for j, d in enumerate(counts):
            if j != i:
                for k, v in d.items():
                    others[k] = others.get(k, 0) + v
        if c and others:
            own.append(kl_divergence(c, others))
    return shares, max(KL_WIDENING * max(own, default=0.0), KL_MIN_THRESHOLD)


def history_expectations(contract: Contract, history: History) -> list:
    """The batch-level GX expectations `history` sets for the next batch of `contract`. Each
    carries `meta["history"]`: what it checks, in the words and numbers the report uses."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column as GXColumn

    exps = []

    def meta(column: str, check: str, **numbers) -> dict:
        return {"level": "batch", "history": {"column": column, "check": check, "against": history.words, **numbers}}

    for col in checked_columns(contract):
        entries = [p["columns"][col.name] for p in history.profiles if col.name in p.get("columns", {})]
        rows = [p["rows"] for p in history.profiles if col.name in p.get("columns", {})]
        if len(entries) < len(history.profiles):
            continue  # a profile from before the column existed: no like-for-like history
        if col.nullable:
            lo, hi = missing_bounds([e["missing"] / r if r else 0.0 for e, r in zip(entries, rows, strict=True)])
            exps.append(  # strict_min: wholly null fails even where the history allows 100 % missing
                gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                    column=col.name,
                    min_value=1 - hi,
                    max_value=1 - lo,
                    strict_min=True,
                    meta=meta(col.name, "missing share", bounds=[lo, hi]),
                )
            )
        if col.kind in ("int", "float"):
            quantiles = [e["quantiles"] for e in entries if "quantiles" in e]
            if len(quantiles) == len(entries):
                ranges = quantile_bounds(quantiles, ratio_scale=col.min is not None and col.min >= 0)
                exps.append(
                    gxe.ExpectColumnQuantileValuesToBeBetween(
                        column=col.name,
                        quantile_ranges={"quantiles": list(CHECKED_QUANTILES), "value_ranges": [list(r) for r in ranges]},
                        meta=meta(col.name, "quantiles"),
                    )
                )
            grid = seen_values(entries)
            if grid is not None:
                # Zero reads the same in every unit. Where zeros are rare they count as seen (a unit
                # change still leaves under SEEN_VALUES_MIN_SHARE seen); where they are common they
                # are left out of the check (a row condition, which costs GX a filtered copy).
                counted = [e["nonzero"] / (r - e["missing"]) for e, r in zip(entries, rows, strict=True) if r > e["missing"]]
                zeros = 1 - min(counted, default=1.0)
                rare = zeros <= SEEN_VALUES_MIN_SHARE / 2
                exps.append(
                    gxe.ExpectColumnValuesToBeInSet(
                        column=col.name,
                        value_set=([0] if rare else []) + grid,
                        mostly=SEEN_VALUES_MIN_SHARE,
                        **({} if rare else {"row_condition": GXColumn(col.name) != 0}),
                        meta=meta(col.name, "values seen", values=len(grid), min_share=SEEN_VALUES_MIN_SHARE, zeros=not rare),
                    )
                )
        elif col.allowed is not None:
            shares, threshold = category_bounds([e["counts"] for e in entries])
            if shares:
                exps.append(
                    gxe.ExpectColumnKLDivergenceToBeLessThan(
                        column=col.name,
                        partition_object={"values": list(shares), "weights": list(shares.values())},
                        threshold=threshold,
                        tail_weight_holdout=KL_HOLDOUT,
                        meta=meta(col.name, "category shares"),
                    )
                )
        else:
            counts = [e["distinct"] for e in entries]
            lo, hi = math.floor(min(counts) / 2), math.ceil(max(counts) * 2)
            exps.append(
                gxe.ExpectColumnUniqueValueCountToBeBetween(
                    column=col.name, min_value=lo, max_value=hi, meta=meta(col.name, "distinct values")
                )
            )
    return exps


QUANTILE_NAMES = {0.25: "25th percentile", 0.5: "median", 0.75: "75th percentile"}


def _num(x: float) -> str:
    """A number as a report shows it: about four significant digits, no exponent."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "none"
    ax = abs(x)
    digits = 0 if ax >= 100 else 1 if ax >= 10 else 2 if ax >= 1 else 3 if ax >= 0.01 else 5
    return f"{x:.{digits}f}"


def describe(meta: dict, kwargs: dict, result: dict) -> str:
    """A history failure in a data engineer's words: the statistic, the column, what was observed
    and what the history allowed, e.g. "median of temp 2.1 outside 28.4–51.0 vs the last 8
    validated partitions (… )"."""
    column, check, against = meta["column"], meta["check"], meta["against"]
    observed = result.get("observed_value")
    if check == "missing share":
        lo, hi = meta["bounds"]
        if observed is None:
            what = f"missing share of {column} unknown"
        elif observed == 0:
            what = f"{column} is wholly null (missing share up to {hi:.1%} allowed)"
        else:
            what = f"missing share of {column} {1 - observed:.1%} outside {lo:.1%}–{hi:.1%}"
    elif check == "quantiles":
        ranges = kwargs["quantile_ranges"]
        values = (observed or {}).get("values") or [None] * len(ranges["quantiles"])
        if all(v is None for v in values):
            return f"{column} has no values to take quantiles of vs {against}"
        parts = [
            f"{QUANTILE_NAMES.get(q, f'{q:.0%} quantile')} of {column} {_num(v)} outside {_num(lo)}–{_num(hi)}"
            for q, v, (lo, hi) in zip(ranges["quantiles"], values, ranges["value_ranges"], strict=True)
            if v is None or not lo <= v <= hi
        ]
        what = "; ".join(parts) or f"quantiles of {column} {values} outside {ranges['value_ranges']}"
    elif check == "values seen":
        unexpected = result.get("unexpected_percent") or 0.0
        sample = [_num(v) for v in (result.get("partial_unexpected_list") or [])[:5]]
        which = "non-zero values" if meta.get("zeros") else "values"
        what = (
            f"{100 - unexpected:.0f}% of the {which} of {column} are among the {meta['values']} values seen before, "
            f"at least {meta['min_share']:.0%} expected (a unit change?), e.g. new values {', '.join(sample)}"
        )
    elif check == "category shares":
        details = result.get("details") or {}
        obs, exp = details.get("observed_partition") or {}, details.get("expected_partition") or {}
        now = dict(zip(obs.get("values", []), obs.get("weights", []), strict=False))
        before = dict(zip(exp.get("values", []), exp.get("weights", []), strict=False))
        moved = sorted(set(now) | set(before), key=lambda k: -abs(now.get(k, 0) - before.get(k, 0)))[:3]
        changes = ", ".join(f"{k} {before.get(k, 0):.1%} → {now.get(k, 0):.1%}" for k in moved)
        kl = "infinite" if observed is None else f"{observed:.3f}"
        what = f"category shares of {column} moved: KL divergence {kl}, at most {kwargs['threshold']:.3f} allowed; largest changes {changes}"
    else:  # distinct values
        what = f"distinct values of {column} {observed} outside {kwargs['min_value']}–{kwargs['max_value']}"
    return f"{what} vs {against}"
