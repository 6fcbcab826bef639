"""Step 2, pull: read the recent window ``[end - window, end)`` and freeze it as a snapshot.

``end`` is the run's logical date (Airflow's data_interval_end), never "now", so reruns and backfills see the
same rows. The snapshot's content hash is logged with every model trained on it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ct_pipeline.context import StepContext
from ct_pipeline.domain.records import WindowSnapshot
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.domain.window import content_hash, window_bounds
from ct_pipeline.errors import DataError


def _canonical_types(df: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """One representation whatever the source stored (int32 vs int64, ns vs us): the hash is about values."""
    df = df.copy()
    df[spec.data.time_column] = df[spec.data.time_column].astype("datetime64[us, UTC]")
    df[spec.data.features] = df[spec.data.features].astype("float64")
    target = df[spec.data.target]
    if pd.api.types.is_bool_dtype(target) or pd.api.types.is_integer_dtype(target):
        df[spec.data.target] = target.astype("int64")
    return df


def pull(ctx: StepContext) -> WindowSnapshot:
    """Read rows with time in [end - window, end), validate them, and write the snapshot Parquet file."""
    spec = ctx.spec
    start, end = window_bounds(ctx.request.end, ctx.request.window or spec.data.window)
    df, source_uri = ctx.data.read(spec.data.source, spec, start, end)
    if df.empty:
        raise DataError(
            f"{spec.name}: empty data window: no rows with {spec.data.time_column} in "
            f"[{start.isoformat()}, {end.isoformat()}) in {source_uri}"
        )
    df = df.sort_values(spec.data.time_column, kind="mergesort").reset_index(drop=True)
    null_targets = int(df[spec.data.target].isna().sum())
    if null_targets:
        raise DataError(f"{spec.name}: {null_targets} row(s) in the window have no target {spec.data.target!r}")
    for column in spec.data.features:
        if not pd.api.types.is_numeric_dtype(df[column]) and not pd.api.types.is_bool_dtype(df[column]):
            raise DataError(f"{spec.name}: feature {column!r} is {df[column].dtype}, expected numeric")
    df = _canonical_types(df, spec)
    digest = content_hash(df)
    out_dir = ctx.settings.paths.snapshots_dir / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{digest.split(':')[1][:20]}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        df.to_parquet(tmp, index=False)
        tmp.replace(path)  # atomic: a reader never sees half a snapshot
    return WindowSnapshot(
        model=spec.name,
        source=source_uri,
        start=start,
        end=end,
        rows=len(df),
        content_hash=digest,
        path=str(path),
        time_column=spec.data.time_column,
        target=spec.data.target,
        features=list(spec.data.features),
    )


def load_snapshot(snapshot: WindowSnapshot) -> pd.DataFrame:
    path = Path(snapshot.path)
    if not path.exists():
        raise DataError(f"{snapshot.model}: snapshot {path} is gone; pull the window again")
    return pd.read_parquet(path)
