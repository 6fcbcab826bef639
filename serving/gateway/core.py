"""The gateway's state and logic, independent of the HTTP framework: the current upstream (its schema loaded
from the model server's ``/metadata``, installed and retired atomically on a switch), the micro-batcher and
the model-server call per upstream, the Prometheus metrics, the request ids, the prediction log, and
:meth:`Gateway.predict`, which both the raw-ASGI fast path (:mod:`gateway.asgi`) and the FastAPI route
(:mod:`gateway.routes`) serve ``POST /predict`` with.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from .batcher import BatcherClosed, MicroBatcher, QueueFull
from .predlog import PredictionLog
from .resilience import CircuitBreaker
from .schema import UpstreamMetadata, build_request_model, validation_errors
from .settings import GatewaySettings
from .upstream import Upstream, UpstreamCaller, UpstreamCallError, UpstreamError, new_client, rejected

__all__ = ["JSON_HEADER", "Gateway"]

logger = logging.getLogger("ct_gateway")

JSON_HEADER = (b"content-type", b"application/json")
_JSON_INVALID = [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]


def _error_parts(
    status: int,
    error: str,
    detail: Any,
    up: Upstream | None,
    request_id: tuple[bytes, bytes],
    retry_after: float | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body: dict[str, Any] = {"error": error, "detail": detail}
    if up is not None and status >= 500:
        body["upstream"] = up.url
    headers = [*up.headers, request_id] if up is not None else [request_id]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    return status, headers, to_json(body)


class _TooLarge(Exception):
    pass


async def _read_limited(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(int(declared))
    parts = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _TooLarge(size)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Gateway:
    def __init__(self, settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.transport = transport  # tests inject httpx.MockTransport / ASGITransport
        self.upstream: Upstream | None = None
        self.last_error: str | None = None
        self.swap_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        self._request_ids = itertools.count(1)
        self._request_prefix = f"{os.getpid():x}-{secrets.token_hex(3)}-"
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "ct_gateway_requests", "Gateway HTTP requests", ["endpoint", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "ct_gateway_request_duration_seconds",
            "Gateway request latency",
            ["endpoint", "method", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self._observers: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.rows = Counter("ct_gateway_predicted_rows", "Rows scored", ["model", "version"], registry=r)
        self.model_info = Gauge(
            "ct_gateway_model_info",
            "Model served behind the gateway (value 1)",
            ["model", "version", "run_id", "upstream"],
            registry=r,
        )
        self.image_info = Gauge(
            "ct_gateway_model_image_info",
            "Image the model server runs from (value 1; empty digest when it reports none)",
            ["model", "version", "image_digest"],
            registry=r,
        )
        self.swaps = Counter("ct_gateway_upstream_swaps", "Upstream swaps", registry=r)
        size_buckets = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
        self.batch_rows = Histogram(
            "ct_gateway_batch_rows", "Rows per model-server call", buckets=size_buckets, registry=r
        )
        self.batch_requests = Histogram(
            "ct_gateway_batch_requests", "Client requests per model-server call", buckets=size_buckets, registry=r
        )
        # the model-server call and its ct_gateway_upstream_* metrics (registered here: /metrics keeps its order)
        self.caller = UpstreamCaller(settings, r)
        self.call = self.caller.call  # (up, rows) -> scores; an attribute, so the hot path looks up no more
        self.circuit_state = Gauge(
            "ct_gateway_circuit_state", "Circuit breaker to the model server: 0 closed, 1 open, 2 half-open", registry=r
        )
        self.circuit_opens = Counter("ct_gateway_circuit_opens", "Times the circuit opened", registry=r)
        self.queued_rows = Gauge("ct_gateway_queued_rows", "Rows waiting for a model-server call", registry=r)
        self.queued_rows.set_function(lambda: self.upstream.batcher.queued_rows if self._has_batcher() else 0)
        self.shed = Counter("ct_gateway_shed_requests", "Requests refused: gateway queue full", registry=r)
        self.log_rows = Counter(
            "ct_gateway_prediction_log_rows", "Prediction-log rows by outcome", ["outcome"], registry=r
        )
        self.predlog: PredictionLog | None = None
        if settings.prediction_log_location:
            self.predlog = PredictionLog(
                settings.prediction_log_location,
                writer=settings.prediction_log_writer,
                flush_interval=settings.prediction_log_flush_interval,
                flush_rows=settings.prediction_log_flush_rows,
                max_pending_rows=settings.prediction_log_max_pending_rows,
                roll_seconds=settings.prediction_log_roll_seconds,
                on_written=self.log_rows.labels("written").inc,
                on_dropped=self.log_rows.labels("dropped").inc,
            )
            pending = Gauge(
                "ct_gateway_prediction_log_pending_rows", "Prediction-log rows buffered in memory", registry=r
            )
            pending.set_function(lambda: self.predlog.pending_rows if self.predlog else 0)

    def _has_batcher(self) -> bool:
        return self.upstream is not None and self.upstream.batcher is not None

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._observers.get(key)
        if children is None:
            labels = (endpoint, method, str(status))
            children = self._observers[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def request_id(self, given: str | None) -> str:
        if given and len(given) <= 128 and given.isprintable():
            return given
        return f"{self._request_prefix}{next(self._request_ids):x}"

    # -- upstream lifecycle ---------------------------------------------------------------------------------

    def _on_circuit_change(self, state: str) -> None:
        self.circuit_state.set(CircuitBreaker.STATE_VALUES[state])
        if state == CircuitBreaker.OPEN:
            self.circuit_opens.inc()
            up = self.upstream
            logger.warning("circuit to %s open: %s", up.url if up else "?", up.breaker.last_error if up else "")
        elif state == CircuitBreaker.CLOSED:
            logger.info("circuit to the model server closed again")

    async def load(self, url: str) -> Upstream:
        """Connect to ``url`` and build its request schema; raises UpstreamError when it is not usable."""
        settings = self.settings
        client = new_client(settings, url, self.transport)
        try:
            resp = await client.post("/metadata", json={}, timeout=settings.metadata_timeout)
            resp.raise_for_status()
            meta = UpstreamMetadata.model_validate(resp.json())
            request_model = build_request_model(meta, settings.max_rows)
        except (httpx.HTTPError, ValueError) as exc:  # ValidationError is a ValueError
            await client.aclose()
            raise UpstreamError(f"cannot load model metadata from {url}: {type(exc).__name__}: {exc}") from exc
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset, on_change=self._on_circuit_change)
        up = Upstream(url=url.rstrip("/"), client=client, meta=meta, request_model=request_model, breaker=breaker)
        up.rows_counter = self.rows.labels(meta.model, meta.version)
        if settings.batching:
            up.batcher = MicroBatcher(
                lambda rows: self.call(up, rows),
                max_rows=settings.batch_max_rows,
                max_wait=settings.batch_max_wait_ms / 1000,
                max_inflight=settings.batch_max_inflight,
                max_queue_rows=settings.batch_max_queue_rows,
                isolate=rejected,
                on_batch=self._on_batch,
            )
        return up

    def _on_batch(self, requests: int, rows: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)

    def install(self, upstream: Upstream) -> Upstream | None:
        """Swap in a loaded upstream (atomic: no await); returns the previous one."""
        previous, self.upstream = self.upstream, upstream
        self.last_error = None
        self.model_info.clear()
        self.image_info.clear()
        meta = upstream.meta
        self.model_info.labels(meta.model, meta.version, meta.run_id or "", upstream.url).set(1)
        self.image_info.labels(meta.model, meta.version, meta.image_digest or "").set(1)
        self.circuit_state.set(CircuitBreaker.STATE_VALUES[upstream.breaker.state])
        return previous

    async def _close_upstream(self, upstream: Upstream) -> None:
        if upstream.batcher is not None:
            await upstream.batcher.close(timeout=self.settings.request_timeout)
        await upstream.client.aclose()

    async def retire(self, upstream: Upstream, timeout: float) -> bool:
        """Wait for requests in flight on ``upstream`` to finish, then close its client."""
        drained = True
        try:
            await asyncio.wait_for(upstream.idle.wait(), timeout)
        except TimeoutError:
            drained = False
        if drained:
            await self._close_upstream(upstream)
        else:  # still busy: close once the stragglers finish (bounded by the request timeout)

            async def _late_close() -> None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(upstream.idle.wait(), self.settings.request_timeout + 5)
                await self._close_upstream(upstream)

            task = asyncio.get_running_loop().create_task(_late_close())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return drained

    async def connect_initial(self, attempts: int | None = None) -> None:
        """Try the configured upstream until its metadata loads (readyz is 503 meanwhile)."""
        url = self.settings.upstream_url
        tried = 0
        while url and self.upstream is None and (attempts is None or tried < attempts):
            tried += 1
            try:
                upstream = await self.load(url)
            except UpstreamError as exc:
                self.last_error = str(exc)
                if attempts is None or tried < attempts:
                    await asyncio.sleep(self.settings.metadata_retry_interval)
                continue
            async with self.swap_lock:
                if self.upstream is None:  # an admin swap may have won meanwhile
                    self.install(upstream)
                    logger.info("upstream %s: %s v%s", url, upstream.meta.model, upstream.meta.version)
                    return
            await self._close_upstream(upstream)

    async def close(self) -> None:
        if self.upstream is not None:
            await self._close_upstream(self.upstream)
            self.upstream = None
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)

    # -- POST /predict --------------------------------------------------------------------------------------

    async def predict(
        self, chunks: AsyncIterator[bytes], content_length: str | None, given_request_id: str | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Validate, score (micro-batched), log; returns (status, headers, JSON body)."""
        settings = self.settings
        request_id = self.request_id(given_request_id)
        rid = (b"x-request-id", request_id.encode("latin-1", "replace"))
        up = self.upstream
        try:
            body = await _read_limited(chunks, content_length, settings.max_body_bytes)
        except _TooLarge as exc:
            detail = f"request body of {exc.args[0]}+ bytes exceeds the limit of {settings.max_body_bytes} bytes"
            return _error_parts(413, "payload_too_large", detail, up, rid)
        if up is None:
            try:
                from_json(body)
            except ValueError:
                return 422, [rid], to_json({"detail": _JSON_INVALID})
            detail = self.last_error or "model metadata not loaded yet"
            return _error_parts(503, "upstream_unavailable", detail, None, rid, retry_after=1.0)
        try:
            rows = up.request_model.model_validate_json(body).rows  # type: ignore[attr-defined]
        except ValidationError as exc:
            return 422, [*up.headers, rid], to_json({"detail": validation_errors(exc)})
        up.acquire()  # no await since reading self.upstream: a swap cannot slip in between
        try:
            if up.batcher is not None and len(rows) <= settings.batch_max_rows:
                predictions = await up.batcher.submit(rows)
            else:
                predictions = await self.call(up, rows)
        except UpstreamCallError as exc:
            return _error_parts(exc.status, exc.error, exc.detail, up, rid, exc.retry_after)
        except QueueFull as exc:
            self.shed.inc()
            return _error_parts(503, "gateway_overloaded", str(exc), up, rid, retry_after=1.0)
        except BatcherClosed as exc:
            return _error_parts(503, "upstream_unavailable", f"{up.url}: {exc}", up, rid, retry_after=1.0)
        finally:
            up.release()
        up.rows_counter.inc(len(rows))
        if self.predlog is not None:
            self.predlog.record(time.time(), request_id, up.lineage, rows, predictions)
        return 200, [*up.headers, rid], up.prefix + to_json(predictions) + b"}"
