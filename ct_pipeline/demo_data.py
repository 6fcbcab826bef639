"""A realistic time-stamped stream for the demo: card transactions with a fraud label.

Weekly and daily seasonality in volume and fraud rate, and an optional drift (fraudsters move to small,
foreign, night-time purchases) from a given date, written as Parquet partitioned by day (hive ``date=``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = [
    "amount",
    "hour",
    "is_weekend",
    "merchant_risk",
    "distance_from_home_km",
    "card_age_days",
    "txn_count_24h",
    "is_foreign",
]
TARGET = "is_fraud"
TIME_COLUMN = "event_time"


def _day_frame(day: date, rows: int, drifted: bool, rng: np.random.Generator) -> pd.DataFrame:
    seconds = np.sort(rng.integers(0, 86_400, rows))
    campaign = np.zeros(rows, dtype=bool)
    if drifted:
        # A card-testing campaign: a third of the traffic is small, foreign, night-time purchases on new cards.
        # The feature distributions move (covariate shift, what drift monitors see) and so does what they
        # mean for fraud (concept drift, what only labels reveal).
        campaign = rng.random(rows) < 0.33
        night_hours = rng.choice([0, 1, 2, 3, 4, 23], size=int(campaign.sum()))
        seconds[campaign] = night_hours * 3600 + rng.integers(0, 3600, int(campaign.sum()))
        order = np.argsort(seconds, kind="stable")
        seconds, campaign = seconds[order], campaign[order]
    times = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(seconds, unit="s")
    hour = times.hour.to_numpy().astype("int64")
    is_weekend = np.full(rows, int(day.weekday() >= 5))
    amount = np.round(rng.lognormal(mean=3.4, sigma=1.0, size=rows), 2)
    merchant_risk = rng.beta(2, 8, rows)
    distance = rng.gamma(1.5, 12.0, rows)
    card_age = rng.integers(1, 3_000, rows)
    txn_count = rng.poisson(3, rows)
    is_foreign = (rng.random(rows) < 0.06).astype(int)

    if drifted:
        k = int(campaign.sum())
        amount[campaign] = np.round(rng.lognormal(mean=1.6, sigma=0.6, size=k), 2)
        is_foreign[campaign] = (rng.random(k) < 0.45).astype(int)
        card_age[campaign] = rng.integers(1, 120, k)
    night = ((hour < 6) | (hour >= 23)).astype(float)
    if not drifted:
        logit = (
            -8.9
            + 0.8 * np.log1p(amount)
            + 5.0 * merchant_risk
            + 0.02 * distance
            - 0.0008 * card_age
            + 0.25 * txn_count
            + 1.6 * is_foreign
            + 1.2 * night
            + 0.3 * is_weekend
        )
    else:
        # After the drift the same features mean different things: small foreign night purchases on new cards.
        logit = (
            -4.4
            - 0.3 * np.log1p(amount)
            + 2.0 * merchant_risk
            + 0.006 * distance
            - 0.0016 * card_age
            + 0.35 * txn_count
            + 2.6 * is_foreign
            + 2.0 * night
            + 0.3 * is_weekend
        )
    fraud = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            TIME_COLUMN: times,
            "amount": amount,
            "hour": hour,
            "is_weekend": is_weekend,
            "merchant_risk": merchant_risk.round(4),
            "distance_from_home_km": distance.round(2),
            "card_age_days": card_age,
            "txn_count_24h": txn_count,
            "is_foreign": is_foreign,
            TARGET: fraud,
        }
    )


def generate_transactions(
    start: date,
    end: date,
    rows_per_day: int = 1500,
    drift_from: date | None = None,
    seed: int = 7,
) -> pd.DataFrame:
    """Transactions for the days in [start, end)."""
    if end <= start:
        raise ValueError(f"end {end} must be after start {start}")
    rng = np.random.default_rng(seed)
    frames = []
    day = start
    while day < end:
        weekly = 1.25 if day.weekday() >= 5 else 1.0  # busier weekends
        rows = max(1, int(rng.normal(rows_per_day * weekly, rows_per_day * 0.05)))
        frames.append(_day_frame(day, rows, drift_from is not None and day >= drift_from, rng))
        day += timedelta(days=1)
    return pd.concat(frames, ignore_index=True)


def write_partitioned(df: pd.DataFrame, path: Path, time_column: str = TIME_COLUMN) -> int:
    """Write hive-partitioned Parquet (``date=YYYY-MM-DD``); existing days are replaced, others kept."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    path.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df.assign(date=df[time_column].dt.strftime("%Y-%m-%d")), preserve_index=False)
    ds.write_dataset(
        table,
        path,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        existing_data_behavior="delete_matching",
        basename_template="part-{i}.parquet",
    )
    return table.num_rows


def generate_demo_dataset(
    path: Path,
    days: int = 60,
    end: date | None = None,
    rows_per_day: int = 1500,
    drift_days: int | None = None,
    seed: int = 7,
) -> int:
    """The demo's data: ``days`` days up to ``end`` (exclusive, default today UTC); drift in the last ``drift_days``."""
    end = end or datetime.now(UTC).date()
    start = end - timedelta(days=days)
    drift_from = end - timedelta(days=drift_days) if drift_days else None
    df = generate_transactions(start, end, rows_per_day=rows_per_day, drift_from=drift_from, seed=seed)
    return write_partitioned(df, path)
