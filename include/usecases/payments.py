"""Card payments: predict whether a payment will be charged back as fraud.

A second use case, different in shape from the flights: one row per payment with a single-column
key, daily partitions cut in Berlin time, a label (the chargeback) that lands with the data. The
data is generated deterministically, day by day (the same day always gives the same rows), by a
process that moves on its own over the half-year:

* more payments go through the app (20% in January, 50% by June) and fewer at the till;
* prices rise about 1% a month, and travel picks up towards the summer;
* from April a new fraud pattern appears: gaming top-ups through the app on cards a few days old,
  which the model of the winter has never seen (concept drift, not only feature drift).

Nothing here is imported by the machinery: it reaches these rows only through `USECASE`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from include.usecases import Calendar, Column, Contract, Demo, UseCase, Wording

if TYPE_CHECKING:
    import pandas as pd

LOCAL_TZ = ZoneInfo("Europe/Berlin")
HOME = "DE"
CATEGORIES = ("grocery", "fuel", "restaurants", "fashion", "electronics", "travel", "gaming")
CHANNELS = ("pos", "web", "app")
COUNTRIES = ("DE", "AT", "FR", "NL", "PL", "ES", "IT", "GB", "US")
DRIFT_STARTS = date(2024, 4, 1)

CONTRACT = Contract(
    columns=(
        Column("payment_id", "str"),
        Column("created_at", "datetime"),
        Column("amount_eur", "float", min=0.5, max=20_000, mean_between=(15, 250)),
        Column("merchant_category", "str", allowed=CATEGORIES),
        Column("channel", "str", allowed=CHANNELS),
        Column("card_country", "str", allowed=COUNTRIES),
        Column("card_age_days", "int", min=0, max=4000),
        Column("payments_last_24h", "int", min=0, max=200),
        Column("km_from_home", "float", nullable=True, min=0, max=20_000),
        Column("chargeback", "int", nullable=True, min=0, max=1),
    ),
    key=("payment_id",),
    event_time="created_at",
    rows_per_day=(250, 800),
    freshness_hours=6,
)

NUMERIC_FEATURES = (
    "log_amount",
    "local_hour",
    "day_of_week",
    "card_age_days",
    "payments_last_24h",
    "km_from_home",
    "foreign_card",
)
CATEGORICAL_FEATURES = {"merchant_category": CATEGORIES, "channel": CHANNELS, "card_country": COUNTRIES}
FEATURES = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)
SERVING_INPUTS = (
    "payment_id",
    "created_at",
    "amount_eur",
    "merchant_category",
    "channel",
    "card_country",
    "card_age_days",
    "payments_last_24h",
    "km_from_home",
)


def _day_rows(day: date):
    """The payments of one local day: same day, same rows (seeded by the date)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"payments/{day.isoformat()}".encode()).digest()[:8], "little"))
    months = (day - date(2024, 1, 1)).days / 30.4
    n = int(rng.normal(520 if day.weekday() < 5 else 430, 25))
    # time of day: few at night, a lunch and an evening peak (minutes after local midnight)
    minute = np.concatenate([rng.normal(12.5 * 60, 110, n // 2), rng.normal(19 * 60, 150, n - n // 2)])
    minute = np.clip(minute, 0, 24 * 60 - 1)
    night = rng.random(n) < 0.06
    minute[night] = rng.uniform(0, 6 * 60, night.sum())
    minute = np.sort(minute)
    start = datetime.combine(day, time(), LOCAL_TZ)
    created = pd.to_datetime([start + timedelta(minutes=float(m)) for m in minute]).tz_convert("UTC")

    app_share = min(0.2 + 0.06 * months, 0.5)
    channel = rng.choice(CHANNELS, n, p=[0.75 - app_share * 0.9, 0.25 - app_share * 0.1, app_share])
    travel = 0.05 + 0.012 * months
    gaming = 0.05 if day < DRIFT_STARTS else 0.09
    cat_p = np.array([0.30, 0.12, 0.16, 0.12, 0.10, travel, gaming])
    category = rng.choice(CATEGORIES, n, p=cat_p / cat_p.sum())
    base = {"grocery": 3.3, "fuel": 3.9, "restaurants": 3.4, "fashion": 4.1, "electronics": 4.9, "travel": 5.4, "gaming": 3.0}
    amount = np.exp(np.array([base[c] for c in category]) + rng.normal(0, 0.7, n)) * (1 + 0.01 * months)
    amount = np.clip(np.round(amount, 2), 0.5, 20_000)
    country = np.where(rng.random(n) < 0.82, HOME, rng.choice(COUNTRIES[1:], n))
    card_age = np.clip(rng.gamma(1.4, 500, n), 0, 4000).astype("int64")
    velocity = np.clip(rng.poisson(2.0, n), 0, 200).astype("int64")
    km = np.clip(rng.lognormal(1.8, 1.2, n), 0, 20_000)
    km = np.where(country != HOME, km + rng.uniform(300, 3000, n), km)
    km = np.where(channel == "pos", np.round(km, 1), np.nan)  # only card-present payments have a place

    attack = (category == "gaming") & (channel == "app")
    if day >= DRIFT_STARTS:  # the new pattern: gaming top-ups in the app, half of them on fresh cards
        card_age = np.where(attack & (rng.random(n) < 0.5), rng.integers(0, 20, n), card_age)
    hour = minute // 60
    risk = (
        -4.6
        + 1.2 * (channel == "web")
        + 0.6 * (channel == "app")
        + 1.4 * (hour < 5)
        + 0.8 * np.log1p(amount / 100)
        + 1.0 * (card_age < 30)
        + 1.2 * (country != HOME)
        + 0.35 * np.minimum(velocity, 8)
        + 0.9 * (category == "electronics")
    )
    if day >= DRIFT_STARTS:
        risk += 3.5 * (attack & (card_age < 30))
    chargeback = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype("float64")
    return pd.DataFrame(
        {
            "payment_id": [f"p{day:%Y%m%d}-{i:05d}" for i in range(n)],
            "created_at": created,
            "amount_eur": amount.astype("float64"),
            "merchant_category": category.astype("str"),
            "channel": channel.astype("str"),
            "card_country": country.astype("str"),
            "card_age_days": card_age.astype("int64"),
            "payments_last_24h": velocity,
            "km_from_home": km.astype("float64"),
            "chargeback": chargeback.astype("int64"),
        }
    )


def load_interval(start: datetime, end: datetime) -> pd.DataFrame:
    """Payments created in [start, end) (tz-aware bounds), generated day by day."""
    import pandas as pd

    first, last = start.astimezone(LOCAL_TZ).date(), (end - timedelta(microseconds=1)).astimezone(LOCAL_TZ).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    df = pd.concat([_day_rows(d) for d in days], ignore_index=True)
    df = df[(df["created_at"] >= start) & (df["created_at"] < end)].reset_index(drop=True)
    for name in ("payment_id", "merchant_category", "channel", "card_country"):
        df[name] = df[name].astype("str")
    return df


def build_features(df: pd.DataFrame) -> pd.DataFrame:
    """Model inputs known when the payment is made, all float64 (categories as vocabulary codes)."""
    import numpy as np
    import pandas as pd

    local = df["created_at"].dt.tz_convert(LOCAL_TZ.key)
    out = pd.DataFrame(
        {
            "log_amount": np.log1p(df["amount_eur"].astype("float64")),
            "local_hour": local.dt.hour.astype("float64"),
            "day_of_week": local.dt.dayofweek.astype("float64"),
            "card_age_days": df["card_age_days"].astype("float64"),
            "payments_last_24h": df["payments_last_24h"].astype("float64"),
            "km_from_home": df["km_from_home"].astype("float64"),
            "foreign_card": (df["card_country"].astype("object") != HOME).astype("float64"),
        },
        index=df.index,
    )
    for name, categories in CATEGORICAL_FEATURES.items():
        codes = pd.Categorical(df[name].astype("object"), categories=list(categories)).codes
        out[name] = pd.Series(codes, index=df.index, dtype="float64").where(codes >= 0)
    return out[list(FEATURES)]


_CODES = {name: {value: float(i) for i, value in enumerate(values)} for name, values in CATEGORICAL_FEATURES.items()}
_NAN = float("nan")


def encode_records(records: Sequence[Mapping]) -> list[list[float]]:
    """`build_features` for request records, in plain Python (the serving hot path)."""
    rows = []
    for r in records:
        local = r["created_at"].astimezone(LOCAL_TZ)
        km = r.get("km_from_home")
        rows.append(
            [
                math.log1p(float(r["amount_eur"])),
                float(local.hour),
                float(local.weekday()),
                float(r["card_age_days"]),
                float(r["payments_last_24h"]),
                _NAN if km is None else float(km),
                float(r["card_country"] != HOME),
                *(codes.get(r.get(name), _NAN) for name, codes in _CODES.items()),
            ]
        )
    return rows


def build_target(df: pd.DataFrame) -> pd.Series:
    """1.0 if the payment was charged back, 0.0 if not, NaN while unknown."""
    return df["chargeback"].astype("float64")


# Broken deliveries particular to payments (the generic ones are the machinery's).


def amount_in_cents(df: pd.DataFrame) -> pd.DataFrame:
    """A unit change upstream: amounts delivered in cents."""
    return df.assign(amount_eur=(df["amount_eur"] * 100).clip(upper=20_000))


def channel_renamed(df: pd.DataFrame) -> pd.DataFrame:
    """Schema drift: the producer renamed a column."""
    return df.rename(columns={"channel": "sales_channel"})


def some_bad_rows(df: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """A few impossible rows (negative amount, an unknown card country) in an otherwise good batch."""
    out = df.copy()
    idx = out.index[:: max(1, len(out) // n)][:n]
    out.loc[idx[:2], "amount_eur"] = -5.0
    out["card_country"] = out["card_country"].astype("object")
    out.loc[idx[2:], "card_country"] = "XX"
    out["card_country"] = out["card_country"].astype("str")
    return out


USECASE = UseCase(
    name="payments",
    model_name="payments-chargeback",
    contract=CONTRACT,
    calendar=Calendar(start=date(2024, 1, 1), end=date(2024, 6, 30), timezone=LOCAL_TZ.key, cadence="daily"),
    load_interval=load_interval,
    build_features=build_features,
    build_target=build_target,
    features=FEATURES,
    categorical=tuple(CATEGORICAL_FEATURES),
    slices=("channel", "merchant_category"),
    serving_inputs=SERVING_INPUTS,
    encode_records=encode_records,
    wording=Wording(record="payment", records="payments", positive="charged back"),
    faults={f.__name__: f for f in (amount_in_cents, channel_renamed, some_bad_rows)},
    # Day index → fault: two whole-batch rejections and a batch that passes with a few rows quarantined.
    demo=Demo(end=date(2024, 1, 31), faults={8: "truncated", 16: "amount_in_cents", 22: "some_bad_rows"}),
    description=__doc__.splitlines()[0],
)
