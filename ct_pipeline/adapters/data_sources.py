"""Data sources: the spec's ``data.source`` read for ``[start, end)``, with filters pushed down where the source can
(pyarrow datasets prune hive ``date=`` partitions and row groups; SQL runs the spec's query with bind parameters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ct_pipeline.domain.spec import CsvSource, DataSource, ModelSpec, ParquetSource, SqlSource
from ct_pipeline.errors import DataError


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _resolve(path: str, data_root: Path) -> Path:
    p = Path(os.path.expandvars(path)).expanduser()
    return p if p.is_absolute() else data_root / p


def required_columns(spec: ModelSpec) -> list[str]:
    """Time, features, target, and the gate's slice columns (which need not be features)."""
    columns = [spec.data.time_column, *spec.data.features, spec.data.target]
    if spec.gate.slices:
        columns += [c for c in spec.gate.slices.columns if c not in columns]
    return columns


def _check_columns(available: list[str], spec: ModelSpec, where: str) -> None:
    missing = [c for c in required_columns(spec) if c not in available]
    if missing:
        raise DataError(f"{spec.name}: column(s) {missing} not found in {where}; available: {sorted(available)}")


def _read_parquet(source: ParquetSource, spec: ModelSpec, start: datetime, end: datetime, data_root: Path):
    import pyarrow as pa
    import pyarrow.dataset as ds

    root = _resolve(source.path, data_root)
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
    table = dataset.to_table(columns=required_columns(spec), filter=condition)
    return table.to_pandas(), root.as_uri()


def _read_csv(source: CsvSource, spec: ModelSpec, start: datetime, end: datetime, data_root: Path):
    path = _resolve(source.path, data_root)
    if not path.exists():
        raise DataError(f"{spec.name}: csv source {path} does not exist")
    header = pd.read_csv(path, nrows=0).columns.tolist()
    _check_columns(header, spec, f"csv source {path}")
    df = pd.read_csv(path, usecols=required_columns(spec))
    df[spec.data.time_column] = pd.to_datetime(df[spec.data.time_column], utc=True)
    t = df[spec.data.time_column]
    return df[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))], path.as_uri()


def _read_sql(source: SqlSource, spec: ModelSpec, start: datetime, end: datetime, data_root: Path):
    import sqlalchemy as sa

    engine = sa.create_engine(source.url)
    try:
        with engine.connect() as conn:
            df = pd.read_sql(sa.text(source.query), conn, params={"start": start, "end": end})
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:  # pandas wraps the driver's error
        raise DataError(f"{spec.name}: sql source query failed: {exc.__class__.__name__}: {exc}") from None
    finally:
        engine.dispose()
    _check_columns(df.columns.tolist(), spec, "the sql query's result")
    df[spec.data.time_column] = pd.to_datetime(df[spec.data.time_column], utc=True)
    # The query is expected to filter already; filtering again keeps the window exact whatever it did.
    t = df[spec.data.time_column]
    df = df[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))]
    return df[required_columns(spec)], engine.url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class SourceReader:
    """The :class:`~ct_pipeline.ports.DataReader` for parquet, csv and sql sources; relative paths resolve
    against ``data_root`` (CTPIPE_DATA_DIR)."""

    data_root: Path

    def read(self, source: DataSource, spec: ModelSpec, start: datetime, end: datetime) -> tuple[pd.DataFrame, str]:
        readers = {"parquet": _read_parquet, "csv": _read_csv, "sql": _read_sql}
        return readers[source.kind](source, spec, start, end, self.data_root)  # type: ignore[operator]
