"""Step 1: pull the recent window [end - window, end) of a model's data and freeze it as a snapshot.

``end`` is the run's logical date (Airflow's data_interval_end), never "now", so reruns and backfills see the
same rows. The snapshot's content hash is logged with every model trained on it.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ct_pipeline.domain.records import WindowSnapshot
from ct_pipeline.domain.spec import CsvSource, ModelSpec, ParquetSource, SqlSource, parse_window
from ct_pipeline.errors import DataError
from ct_pipeline.settings import Settings


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _resolve(path: str, settings: Settings) -> Path:
    p = Path(os.path.expandvars(path)).expanduser()
    return p if p.is_absolute() else settings.paths.data_root / p


def _required_columns(spec: ModelSpec) -> list[str]:
    """Time, features, target, and the gate's slice columns (which need not be features)."""
    columns = [spec.data.time_column, *spec.data.features, spec.data.target]
    if spec.gate.slices:
        columns += [c for c in spec.gate.slices.columns if c not in columns]
    return columns


def _check_columns(available: list[str], spec: ModelSpec, where: str) -> None:
    missing = [c for c in _required_columns(spec) if c not in available]
    if missing:
        raise DataError(f"{spec.name}: column(s) {missing} not found in {where}; available: {sorted(available)}")


def _read_parquet(source: ParquetSource, spec: ModelSpec, start: datetime, end: datetime, settings: Settings):
    import pyarrow as pa
    import pyarrow.dataset as ds

    root = _resolve(source.path, settings)
    if not root.exists():
        raise DataError(f"{spec.name}: parquet source {root} does not exist")
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    _check_columns(dataset.schema.names, spec, f"parquet source {root}")
    time_type = dataset.schema.field(spec.data.time_column).type
    if not pa.types.is_timestamp(time_type):
        raise DataError(f"{spec.name}: time column {spec.data.time_column!r} is {time_type}, not a timestamp")

    def bound(ts: datetime):
        ts = _utc(ts) if time_type.tz else _utc(ts).replace(tzinfo=None)
        return pa.scalar(ts, type=time_type)

    time = ds.field(spec.data.time_column)
    condition = (time >= bound(start)) & (time < bound(end))
    if "date" in dataset.schema.names and pa.types.is_string(dataset.schema.field("date").type):
        # Prune whole day partitions before touching row groups.
        condition &= (ds.field("date") >= start.strftime("%Y-%m-%d")) & (ds.field("date") <= end.strftime("%Y-%m-%d"))
    table = dataset.to_table(columns=_required_columns(spec), filter=condition)
    return table.to_pandas(), root.as_uri()


def _read_csv(source: CsvSource, spec: ModelSpec, start: datetime, end: datetime, settings: Settings):
    path = _resolve(source.path, settings)
    if not path.exists():
        raise DataError(f"{spec.name}: csv source {path} does not exist")
    header = pd.read_csv(path, nrows=0).columns.tolist()
    _check_columns(header, spec, f"csv source {path}")
    df = pd.read_csv(path, usecols=_required_columns(spec))
    df[spec.data.time_column] = pd.to_datetime(df[spec.data.time_column], utc=True)
    t = df[spec.data.time_column]
    return df[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))], path.as_uri()


def _read_sql(source: SqlSource, spec: ModelSpec, start: datetime, end: datetime, settings: Settings):
    import sqlalchemy as sa

    engine = sa.create_engine(source.url)
    try:
        with engine.connect() as conn:
            df = pd.read_sql(sa.text(source.query), conn, params={"start": start, "end": end})
    except sa.exc.SQLAlchemyError as exc:
        raise DataError(f"{spec.name}: sql source query failed: {exc.__class__.__name__}: {exc}") from None
    finally:
        engine.dispose()
    _check_columns(df.columns.tolist(), spec, "the sql query's result")
    df[spec.data.time_column] = pd.to_datetime(df[spec.data.time_column], utc=True)
    # The query is expected to filter already; filtering again keeps the window exact whatever it did.
    t = df[spec.data.time_column]
    df = df[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))]
    return df[_required_columns(spec)], engine.url.render_as_string(hide_password=True)


def _canonical_types(df: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """One representation whatever the source stored (int32 vs int64, ns vs us): the hash is about values."""
    df = df.copy()
    df[spec.data.time_column] = df[spec.data.time_column].astype("datetime64[us, UTC]")
    df[spec.data.features] = df[spec.data.features].astype("float64")
    target = df[spec.data.target]
    if pd.api.types.is_bool_dtype(target) or pd.api.types.is_integer_dtype(target):
        df[spec.data.target] = target.astype("int64")
    return df


def content_hash(df: pd.DataFrame) -> str:
    """Order-independent of the source's file layout: hash of the rows after a canonical sort."""
    canonical = df.sort_values(list(df.columns), kind="mergesort").reset_index(drop=True)
    digest = hashlib.sha256()
    digest.update(",".join(f"{c}:{canonical[c].dtype}" for c in canonical.columns).encode())
    digest.update(pd.util.hash_pandas_object(canonical, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def window_bounds(end: datetime, window: str) -> tuple[datetime, datetime]:
    end = _utc(end)
    return end - parse_window(window), end


def pull_window(spec: ModelSpec, end: datetime, settings: Settings, window: str | None = None) -> WindowSnapshot:
    """Read rows with time in [end - window, end), validate them, and write the snapshot Parquet file."""
    start, end = window_bounds(end, window or spec.data.window)
    readers = {"parquet": _read_parquet, "csv": _read_csv, "sql": _read_sql}
    df, source_uri = readers[spec.data.source.kind](spec.data.source, spec, start, end, settings)
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
    out_dir = settings.paths.snapshots_dir / spec.name
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


def split_holdout(df: pd.DataFrame, time_column: str, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Holdout = the most recent ``fraction`` of rows: the model is judged on the freshest data."""
    df = df.sort_values(time_column, kind="mergesort").reset_index(drop=True)
    cut = int(round(len(df) * (1 - fraction)))
    if cut < 1 or cut >= len(df):
        raise DataError(f"window of {len(df)} rows is too small to split off a {fraction:.0%} holdout")
    return df.iloc[:cut], df.iloc[cut:]


def default_end(now: datetime | None = None) -> datetime:
    """Midnight UTC of today: the end of the last complete day (for CLI runs without --end)."""
    now = _utc(now or datetime.now(UTC))
    return datetime(now.year, now.month, now.day, tzinfo=UTC)
