"""The gateway's prediction log, read back as a stream of Arrow batches (the :class:`PredictionLogReader` port).

The log is hive-partitioned Parquet (``<root>/model=<m>/date=YYYY-MM-DD/hour=HH/*.parquet``, see
serving/gateway/predlog.py) on a local directory or an object store, reached through pyarrow's filesystem layer
(``s3://bucket/prefix`` with the endpoint, region and credentials of the standard ``AWS_*`` variables; any other
``pyarrow.fs.FileSystem.from_uri`` URL). Reading prunes before it opens anything: only the model's date folders
that intersect the window are listed (one listing of the model's folder, then one per date), hours outside the
window are dropped by path, ``*.parquet.tmp`` parts still being written are never listed, and the scan filters
``ts`` on row-group statistics. Batches are produced with small read-ahead, so memory stays bounded whatever the
window's size.

Files written by different model versions can carry different ``features`` structs: each feature is projected
with one type across the whole scan (numbers widened to float64 when the files disagree), and a feature a file
does not have is a null column.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from ct_pipeline.errors import MonitoringError

__all__ = ["BASE_COLUMNS", "ParquetPredictionLog", "open_filesystem"]

# The columns every scan yields before the features (the port's contract).
BASE_COLUMNS = ("ts", "request_id", "row", "version", "prediction")
_PARTITIONING = ds.partitioning(
    pa.schema([("model", pa.string()), ("date", pa.string()), ("hour", pa.string())]), flavor="hive"
)
_TS = pa.timestamp("us", tz="UTC")


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def open_filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, root)`` for a prediction-log location (same rules as the gateway's writer).

    A path or ``file://`` URL is the local filesystem; ``s3://bucket/prefix`` an S3FileSystem with
    ``endpoint_override`` from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` and the region from
    ``AWS_REGION``/``AWS_DEFAULT_REGION`` (query-string options win); anything else goes to ``from_uri``.
    """
    text = str(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return pafs.LocalFileSystem(), str(Path(parts.path).resolve())
    if scheme == "s3":
        if not parts.netloc:
            raise MonitoringError(f"prediction log URI {text!r} names no bucket (s3://bucket/prefix)")
        options: dict[str, Any] = dict(parse_qsl(parts.query))
        endpoint = options.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3")
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            if "://" in endpoint:
                scheme_, _, endpoint = endpoint.partition("://")
                options.setdefault("scheme", scheme_)
            options["endpoint_override"] = endpoint.rstrip("/")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options.setdefault("region", region)
        if "region" not in options and "endpoint_override" not in options:
            with contextlib.suppress(Exception):
                options["region"] = pafs.resolve_s3_region(parts.netloc)
        return pafs.S3FileSystem(**options), f"{parts.netloc}{parts.path}".rstrip("/")
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise MonitoringError(f"prediction log URI {text!r} is not a filesystem pyarrow can open: {exc}") from exc
    return fs, root.rstrip("/")


def _feature_type(types: set[pa.DataType]) -> pa.DataType:
    """One type for a feature the files disagree on: the type itself, float64 for mixed numbers, else string."""
    if not types:
        return pa.float64()
    if len(types) == 1:
        return next(iter(types))
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) for t in types):
        return pa.float64()
    return pa.string()


class ParquetPredictionLog:
    """:class:`ct_pipeline.ports.PredictionLogReader` over the gateway's Parquet log at ``uri``."""

    def __init__(self, uri: str | Path, *, batch_readahead: int = 2, fragment_readahead: int = 2) -> None:
        self.uri = str(uri)
        self.fs, self.root = open_filesystem(uri)
        self.batch_readahead = batch_readahead
        self.fragment_readahead = fragment_readahead

    @property
    def location(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"ParquetPredictionLog({self.uri!r})"

    # -- listing (the pruning) ----------------------------------------------------------------------------

    def _info(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(selector)
        except OSError as exc:  # an unreachable endpoint, a refused credential...
            raise MonitoringError(f"cannot list the prediction log at {self.uri}: {exc}") from exc

    def files(self, model: str, start: datetime, end: datetime) -> list[str]:
        """The complete Parquet parts of ``model`` whose hour intersects ``[start, end)`` (sorted)."""
        start, end = _utc(start), _utc(end)
        if end <= start:
            return []
        last = end - timedelta(microseconds=1)
        first_day, last_day = start.strftime("%Y-%m-%d"), last.strftime("%Y-%m-%d")
        first_hour, last_hour = start.strftime("%Y-%m-%d/%H"), last.strftime("%Y-%m-%d/%H")
        model_dir = f"{self.root}/model={model}"
        dates = [
            info.base_name.removeprefix("date=")
            for info in self._info(pafs.FileSelector(model_dir, allow_not_found=True))
            if info.type == pafs.FileType.Directory and info.base_name.startswith("date=")
        ]
        paths = []
        for date in sorted(d for d in dates if first_day <= d <= last_day):
            for info in self._info(pafs.FileSelector(f"{model_dir}/date={date}", recursive=True, allow_not_found=True)):
                if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
                    continue  # *.parquet.tmp: a part still being written
                folder = info.path.rsplit("/", 2)[-2]
                if not folder.startswith("hour="):
                    continue
                hour = f"{date}/{folder.removeprefix('hour=')}"
                if first_hour <= hour <= last_hour and info.size:
                    paths.append(info.path)
        return sorted(paths)

    def _dataset(self, paths: list[str]) -> ds.FileSystemDataset:
        return ds.dataset(
            paths, filesystem=self.fs, format="parquet", partitioning=_PARTITIONING, partition_base_dir=self.root
        )

    @staticmethod
    def _filter(model: str, start: datetime, end: datetime) -> pc.Expression:
        start, end = _utc(start), _utc(end)
        last = end - timedelta(microseconds=1)
        partitions = (
            (pc.field("model") == model)
            & (pc.field("date") >= start.strftime("%Y-%m-%d"))
            & (pc.field("date") <= last.strftime("%Y-%m-%d"))
        )
        return partitions & (pc.field("ts") >= pa.scalar(start, type=_TS)) & (pc.field("ts") < pa.scalar(end, type=_TS))

    # -- the port ---------------------------------------------------------------------------------------

    def count(self, model: str, start: datetime, end: datetime) -> int:
        """Rows logged for ``model`` with ``start <= ts < end`` (row-group statistics, reads ``ts`` at most)."""
        paths = self.files(model, start, end)
        if not paths:
            return 0
        return int(self._dataset(paths).count_rows(filter=self._filter(model, start, end)))

    def scan(
        self, model: str, start: datetime, end: datetime, features: Sequence[str], batch_size: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        """Batches of ``ts, request_id, row, version, prediction`` and one column per feature, for the rows of
        ``model`` with ``start <= ts < end``; nothing when no part of the log falls in the window."""
        features = list(features)
        clash = sorted(set(features) & set(BASE_COLUMNS))
        if clash:
            raise MonitoringError(f"feature name(s) {clash} clash with the prediction log's own columns")
        paths = self.files(model, start, end)
        if not paths:
            return
        dataset = self._dataset(paths)
        flt = self._filter(model, start, end)
        # Files of one schema scan together; each feature gets one type over all of them.
        groups: dict[str, tuple[pa.Schema, list[ds.Fragment]]] = {}
        for fragment in dataset.get_fragments(filter=flt):
            try:
                physical = fragment.physical_schema
            except OSError as exc:
                raise MonitoringError(f"cannot read {fragment.path} of the prediction log: {exc}") from exc
            key = str(physical.remove_metadata())
            groups.setdefault(key, (physical, []))[1].append(fragment)
        for physical, _ in groups.values():
            absent = [c for c in (*BASE_COLUMNS, "features") if c not in physical.names]
            if absent:
                raise MonitoringError(f"the prediction log at {self.uri} has files without column(s) {absent}")
        types: dict[str, set[pa.DataType]] = {f: set() for f in features}
        for physical, _ in groups.values():
            struct = physical.field("features").type
            for child in struct:
                if child.name in types:
                    types[child.name].add(child.type)
        out_types = {f: _feature_type(t) for f, t in types.items()}
        for physical, fragments in groups.values():
            present = {child.name for child in physical.field("features").type}
            projection: dict[str, pc.Expression] = {c: pc.field(c) for c in BASE_COLUMNS}
            for name in features:
                if name in present:
                    projection[name] = pc.field("features", name).cast(out_types[name])
                else:  # the model changed: this file does not log the feature
                    projection[name] = pc.scalar(pa.scalar(None, out_types[name]))
            schema = physical
            for field in _PARTITIONING.schema:
                if field.name not in schema.names:
                    schema = schema.append(field)
            group = ds.FileSystemDataset(fragments, schema=schema, format=ds.ParquetFileFormat(), filesystem=self.fs)
            try:
                yield from group.to_batches(
                    columns=projection,
                    filter=flt,
                    batch_size=batch_size,
                    batch_readahead=self.batch_readahead,
                    fragment_readahead=self.fragment_readahead,
                )
            except OSError as exc:
                raise MonitoringError(f"reading the prediction log at {self.uri} failed: {exc}") from exc
