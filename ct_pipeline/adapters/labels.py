"""Labels that arrive after the predictions: a Parquet directory (any layout pyarrow reads, hive partitions
pruned on a ``date`` column when present) or a SQL query with ``:start``/``:end`` bind parameters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ct_pipeline.adapters.data_sources import _resolve
from ct_pipeline.domain.monitoring import LabelsSource
from ct_pipeline.errors import DataError


def _columns(source: LabelsSource) -> list[str]:
    columns = [source.key, source.label]
    if source.row:
        columns.append(source.row)
    if source.time_column:
        columns.append(source.time_column)
    return columns


def _check(available: list[str], source: LabelsSource, where: str) -> None:
    missing = [c for c in _columns(source) if c not in available]
    if missing:
        raise DataError(
            f"labels source {where} has no column(s) {missing} (key {source.key!r}, label {source.label!r}); "
            f"available: {sorted(available)}"
        )


@dataclass(frozen=True)
class LabelsSourceReader:
    """The :class:`~ct_pipeline.ports.LabelsReader`; relative paths resolve against CTPIPE_DATA_DIR."""

    data_root: Path

    def read(self, source: LabelsSource, start: datetime, end: datetime) -> pd.DataFrame:
        if source.kind == "parquet":
            return self._parquet(source, start, end)
        return self._sql(source, start, end)

    def _parquet(self, source: LabelsSource, start: datetime, end: datetime) -> pd.DataFrame:
        import pyarrow as pa
        import pyarrow.dataset as ds

        assert source.path is not None
        root = _resolve(source.path, self.data_root)
        if not root.exists():
            return pd.DataFrame(columns=_columns(source))  # no label has arrived yet: the check says "not judged"
        dataset = ds.dataset(root, format="parquet", partitioning="hive", exclude_invalid_files=True)
        _check(dataset.schema.names, source, str(root))
        condition = None
        if source.time_column:
            kind = dataset.schema.field(source.time_column).type
            if pa.types.is_timestamp(kind):
                lo = pa.scalar(start.astimezone(UTC) if kind.tz else start.replace(tzinfo=None), type=kind)
                hi = pa.scalar(end.astimezone(UTC) if kind.tz else end.replace(tzinfo=None), type=kind)
                condition = (ds.field(source.time_column) >= lo) & (ds.field(source.time_column) < hi)
        return dataset.to_table(columns=_columns(source), filter=condition).to_pandas()

    def _sql(self, source: LabelsSource, start: datetime, end: datetime) -> pd.DataFrame:
        import sqlalchemy as sa

        assert source.url is not None and source.query is not None
        engine = sa.create_engine(source.url)
        try:
            with engine.connect() as conn:
                frame = pd.read_sql(sa.text(source.query), conn, params={"start": start, "end": end})
        except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:  # pandas wraps the driver's error
            where = engine.url.render_as_string(hide_password=True)
            raise DataError(f"labels query on {where} failed: {exc.__class__.__name__}: {exc}") from None
        finally:
            engine.dispose()
        _check(frame.columns.tolist(), source, "the labels query's result")
        return frame[_columns(source)]
