"""How the backtest says what it does and reduces its figures: weeks without a score (no labels, one
class) are None, skipped by means and printed as a dash."""

from __future__ import annotations

import math


def say(message: str) -> None:
    print(message, flush=True)


def finite(value) -> float | None:
    """A metric as a float, or None when it is missing or undefined (NaN)."""
    return None if value is None or not math.isfinite(value) else float(value)


def mean(values: list[float | None]) -> float | None:
    """The mean of the known values (None if none is known)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)
