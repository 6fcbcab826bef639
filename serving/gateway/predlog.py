"""Prediction log for monitoring: requests, predictions and lineage, appended to Parquet in the background.

The request path only appends a reference to an in-memory buffer (O(1), no I/O, no encoding). A background
task flushes the buffer every ``flush_interval`` seconds (or as soon as ``flush_rows`` rows are pending):
the rows are turned into Arrow columns and written in a worker thread. Memory is bounded: beyond
``max_pending_rows`` buffered rows new records are dropped and counted, never queued without limit.

Where: a local directory (a path or ``file://...``) or an object store URL such as ``s3://bucket/prefix``
(pyarrow's filesystem layer; for S3 the endpoint comes from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` and the
region from ``AWS_REGION``/``AWS_DEFAULT_REGION``, credentials from the standard AWS chain: environment variables,
config files, web identity; options given in the URL's query string, e.g. ``?endpoint_override=...``, win).
Layout, one row per predicted row::

    <root>/model=<model>/date=YYYY-MM-DD/hour=HH/v<version>-<HHMMSS>-<writer>-<pid>-<n>.parquet

``writer`` names the process (the pod name in Kubernetes, else the host name), so replicas writing to one
volume or bucket never collide. A file is written as row groups (one per flush) and closed when its hour ends,
after ``roll_seconds``, on a model version change or at shutdown. Readers only ever see complete files: locally a
part is written as ``*.parquet.tmp`` and renamed on close; on an object store (no rename) it is spooled to a
local temporary file and uploaded as the final object once, when closed (an upload that fails is retried at the
next flush; its rows count as written once uploaded, as dropped when given up).

Columns: ``ts`` (UTC), ``request_id``, ``row`` (index in the request), ``model``, ``version``, ``run_id``,
``data_hash``, ``image_digest``, ``prediction`` and ``features`` (a struct with one field per model feature).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger("ct_gateway.predlog")


@dataclass(frozen=True)
class Lineage:
    model: str
    version: str
    run_id: str | None
    data_hash: str | None
    image_digest: str | None
    features: tuple[str, ...]
    dtypes: tuple[str, ...] = ()  # MLflow signature types, parallel to features ("double" when unknown)


@dataclass
class _Part:
    path: str  # the final name: a local path, or the object's path on ``fs``
    local: str  # where the writer writes: path + ".tmp", or the local spool file of an object-store part
    writer: Any  # pyarrow.parquet.ParquetWriter
    opened: float
    hour: str
    rows: int = 0


@dataclass
class _Upload:
    local: str
    path: str
    rows: int
    attempts: int = 0


_ARROW_TYPES = {
    "double": "float64",
    "float": "float64",
    "long": "int64",
    "integer": "int64",
    "boolean": "bool_",
    "string": "string",
}


def _arrow_type(dtype: str) -> Any:
    import pyarrow as pa

    return getattr(pa, _ARROW_TYPES.get(dtype, "float64"))()


def _safe(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in value)[:100] or "unknown"


def _s3_endpoint(options: dict[str, Any]) -> None:
    """endpoint_override/scheme from AWS_ENDPOINT_URL[_S3] and region from AWS_REGION, unless given already."""
    endpoint = (
        options.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        if "://" in endpoint:
            scheme, _, endpoint = endpoint.partition("://")
            options.setdefault("scheme", scheme)
        options["endpoint_override"] = endpoint.rstrip("/")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options.setdefault("region", region)


def open_filesystem(uri: str | Path) -> tuple[Any, str]:
    """``(filesystem, root)`` for a prediction-log location; filesystem is None for a local directory.

    ``s3://bucket/prefix`` gets an S3FileSystem configured from the standard AWS variables (endpoint, region;
    credentials through the AWS SDK's chain); any other URL goes to ``pyarrow.fs.FileSystem.from_uri``.
    """
    text = str(uri)
    if "://" not in text:
        return None, str(Path(text))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return None, str(Path(parts.path))
    import pyarrow.fs as pafs

    if scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"prediction log URI {text!r} names no bucket (s3://bucket/prefix)")
        options: dict[str, Any] = dict(parse_qsl(parts.query))
        _s3_endpoint(options)
        if "region" not in options and "endpoint_override" not in options:
            with contextlib.suppress(Exception):  # real AWS: the bucket's region (network; once, at start)
                options["region"] = pafs.resolve_s3_region(parts.netloc)
        return pafs.S3FileSystem(**options), f"{parts.netloc}{parts.path}".rstrip("/")
    fs, root = pafs.FileSystem.from_uri(text)
    return fs, root.rstrip("/")


def writer_id() -> str:
    """Names this process's files when no writer is given: the host name (in Kubernetes the pod name, which the
    chart also passes explicitly as CT_GATEWAY_PREDICTION_LOG_WRITER)."""
    return _safe(socket.gethostname() or "gateway")[:63]


class PredictionLog:
    def __init__(
        self,
        uri: str | Path,
        *,
        flush_interval: float = 2.0,
        flush_rows: int = 5_000,
        max_pending_rows: int = 50_000,
        roll_seconds: float = 300.0,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        writer: str | None = None,
        spool_dir: str | Path | None = None,
        max_upload_attempts: int = 10,
    ) -> None:
        self.uri = str(uri)
        self.fs, self.root = open_filesystem(uri)  # fs None: a local directory (tmp + rename)
        self.directory = Path(self.root) if self.fs is None else None  # the local directory, if local
        self.writer = _safe(writer)[:63] if writer else writer_id()
        self.spool_dir = Path(spool_dir) if spool_dir else Path(tempfile.gettempdir()) / "ct-gateway-predlog"
        self.max_upload_attempts = max_upload_attempts
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.max_pending_rows = max_pending_rows
        self.roll_seconds = roll_seconds
        self.on_written = on_written
        self.on_dropped = on_dropped
        self._pending: list[tuple[float, str, Lineage, list, list]] = []
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._parts: dict[tuple[Lineage, str], _Part] = {}
        self._uploads: list[_Upload] = []  # object-store parts closed but not uploaded yet (retried)
        self._seq = 0
        self.written_rows = 0
        self.dropped_rows = 0
        self.files_closed = 0
        self.last_error: str | None = None

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    # -- request path -------------------------------------------------------------------------------------

    def record(self, ts: float, request_id: str, lineage: Lineage, rows: list, predictions: list) -> bool:
        """Buffer one request's rows and predictions (no I/O). False when dropped (buffer full)."""
        n = len(rows)
        if self._pending_rows + n > self.max_pending_rows:
            self.dropped_rows += n
            if self.on_dropped is not None:
                self.on_dropped(n)
            return False
        self._pending.append((ts, request_id, lineage, rows, predictions))
        self._pending_rows += n
        if self._pending_rows >= self.flush_rows:
            self._wake.set()
        return True

    # -- background ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background flusher (imports pyarrow now rather than on the first flush)."""
        import pyarrow.parquet  # noqa: F401

        if self.fs is None:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        else:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        if self._task is None:
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="prediction-log")

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            await self.flush(close_all=self._closing)

    async def flush(self, close_all: bool = False) -> None:
        """Write what is buffered (one flush at a time: the writers belong to the worker thread)."""
        async with self._lock:
            await self._flush(close_all)

    async def _flush(self, close_all: bool) -> None:
        batch, self._pending, self._pending_rows = self._pending, [], 0
        if not batch and not close_all and not self._parts and not self._uploads:
            return
        work = asyncio.ensure_future(asyncio.to_thread(self._write, batch, close_all))
        try:
            written, dropped = await asyncio.shield(work)
        except asyncio.CancelledError:
            # a cancelled caller must not release the lock while the thread still writes
            await asyncio.wait([work])
            raise
        except Exception as exc:  # disk full, permissions...: count and keep serving
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("prediction log: writing %d records failed", len(batch))
            lost = sum(len(r[3]) for r in batch)
            self.dropped_rows += lost
            if self.on_dropped is not None:
                self.on_dropped(lost)
            return
        self.written_rows += written
        if written and self.on_written is not None:
            self.on_written(written)
        if dropped:
            self.dropped_rows += dropped
            if self.on_dropped is not None:
                self.on_dropped(dropped)

    async def close(self, timeout: float = 30.0) -> None:
        """Write what is buffered and close every file (bounded by ``timeout``)."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(close_all=True), timeout)

    # -- worker thread ------------------------------------------------------------------------------------

    def _write(self, batch: list[tuple[float, str, Lineage, list, list]], close_all: bool) -> tuple[int, int]:
        """Append ``batch`` to the open parts, close the parts that are done; (rows written, rows given up).
        Locally rows count as written once in the part; on an object store once their part is uploaded."""
        import pyarrow as pa

        groups: dict[tuple[Lineage, str], list[tuple[float, str, Lineage, list, list]]] = {}
        for record in batch:
            hour = datetime.fromtimestamp(record[0], UTC).strftime("%Y-%m-%d/%H")
            groups.setdefault((record[2], hour), []).append(record)
        written = 0
        for (lineage, hour), records in groups.items():
            ts, request_ids, index, predictions = [], [], [], []
            columns: list[list] = [[] for _ in lineage.features]
            for t, request_id, _, rows, preds in records:
                for i, (row, pred) in enumerate(zip(rows, preds, strict=False)):
                    ts.append(int(t * 1_000_000))
                    request_ids.append(request_id)
                    index.append(i)
                    predictions.append(pred)
                    for column, feature in zip(columns, lineage.features, strict=True):
                        column.append(row.get(feature))
            n = len(ts)
            if not n:
                continue
            dtypes = lineage.dtypes or ("double",) * len(lineage.features)
            features = pa.StructArray.from_arrays(
                [pa.array(c, _arrow_type(d)) for c, d in zip(columns, dtypes, strict=True)],
                names=list(lineage.features),
            )
            table = pa.table(
                {
                    "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                    "request_id": pa.array(request_ids, pa.string()),
                    "row": pa.array(index, pa.int32()),
                    "model": pa.array([lineage.model] * n, pa.string()),
                    "version": pa.array([lineage.version] * n, pa.string()),
                    "run_id": pa.array([lineage.run_id] * n, pa.string()),
                    "data_hash": pa.array([lineage.data_hash] * n, pa.string()),
                    "image_digest": pa.array([lineage.image_digest] * n, pa.string()),
                    "prediction": pa.array(predictions, pa.float64()),
                    "features": features,
                }
            )
            part = self._parts.get((lineage, hour))
            if part is None:
                part = self._open_part(lineage, hour, table.schema)
            part.writer.write_table(table)
            part.rows += n
            written += n
        now = time.monotonic()
        current_hour = datetime.now(UTC).strftime("%Y-%m-%d/%H")
        for key, part in list(self._parts.items()):
            if close_all or part.hour != current_hour or now - part.opened >= self.roll_seconds:
                self._close_part(key)
        if self.fs is None:
            return written, 0
        return self._upload_pending()

    def _open_part(self, lineage: Lineage, hour: str, schema: Any) -> _Part:
        import pyarrow.parquet as pq

        date, hh = hour.split("/")
        folder = f"{self.root}/model={_safe(lineage.model)}/date={date}/hour={hh}"
        self._seq += 1
        name = f"v{_safe(lineage.version)}-{datetime.now(UTC):%H%M%S}-{self.writer}-{os.getpid()}-{self._seq}.parquet"
        path = f"{folder}/{name}"
        if self.fs is None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            local = path + ".tmp"
        else:  # no rename on an object store: spool locally, upload the finished file once
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            local = str(self.spool_dir / name)
        writer = pq.ParquetWriter(local, schema, compression="zstd")
        part = _Part(path=path, local=local, writer=writer, opened=time.monotonic(), hour=hour)
        self._parts[(lineage, hour)] = part
        return part

    def _close_part(self, key: tuple[Lineage, str]) -> None:
        part = self._parts.pop(key)
        part.writer.close()
        if self.fs is None:
            os.replace(part.local, part.path)
            self.files_closed += 1
        else:
            self._uploads.append(_Upload(local=part.local, path=part.path, rows=part.rows))

    def _upload_pending(self) -> tuple[int, int]:
        """Upload closed object-store parts; a failure keeps the spool file for the next flush, up to
        ``max_upload_attempts`` times. (rows uploaded, rows given up)."""
        uploaded = given_up = 0
        for upload in list(self._uploads):
            try:
                self._upload(upload)
                uploaded += upload.rows
            except Exception as exc:  # endpoint down, credentials...: retried at the next flush
                upload.attempts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if upload.attempts < self.max_upload_attempts:
                    logger.warning("prediction log: upload to %s failed (%s), will retry", upload.path, exc)
                    continue
                logger.error("prediction log: gave up on %s after %d attempts: %s", upload.path, upload.attempts, exc)
                with contextlib.suppress(OSError):
                    os.unlink(upload.local)
                given_up += upload.rows
            self._uploads.remove(upload)
        return uploaded, given_up

    def _upload(self, upload: _Upload) -> None:
        # An S3 object appears only when its (multipart) upload completes, i.e. when the stream closes: readers
        # never see a partial object. A failure before that leaves nothing behind.
        with open(upload.local, "rb") as src, self.fs.open_output_stream(upload.path) as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
        os.unlink(upload.local)
        self.files_closed += 1
