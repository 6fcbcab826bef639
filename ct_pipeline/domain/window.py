"""The data window, pure: its bounds, the snapshot's content hash, the time-ordered holdout split."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pandas as pd

from ct_pipeline.domain.spec import parse_window
from ct_pipeline.errors import DataError


def utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def content_hash(df: pd.DataFrame) -> str:
    """Order-independent of the source's file layout: hash of the rows after a canonical sort."""
    canonical = df.sort_values(list(df.columns), kind="mergesort").reset_index(drop=True)
    digest = hashlib.sha256()
    digest.update(",".join(f"{c}:{canonical[c].dtype}" for c in canonical.columns).encode())
    digest.update(pd.util.hash_pandas_object(canonical, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def window_bounds(end: datetime, window: str) -> tuple[datetime, datetime]:
    end = utc(end)
    return end - parse_window(window), end


def split_holdout(df: pd.DataFrame, time_column: str, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Holdout = the most recent ``fraction`` of rows: the model is judged on the freshest data."""
    df = df.sort_values(time_column, kind="mergesort").reset_index(drop=True)
    cut = int(round(len(df) * (1 - fraction)))
    if cut < 1 or cut >= len(df):
        raise DataError(f"window of {len(df)} rows is too small to split off a {fraction:.0%} holdout")
    return df.iloc[:cut], df.iloc[cut:]


def default_end(now: datetime | None = None) -> datetime:
    """Midnight UTC of today: the end of the last complete day (for CLI runs without --end)."""
    now = utc(now or datetime.now(UTC))
    return datetime(now.year, now.month, now.day, tzinfo=UTC)
