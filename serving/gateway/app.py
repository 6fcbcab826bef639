"""The gateway users call: validates requests against the served model's features, forwards them to the
BentoML model server, and answers with predictions plus the model's lineage.

A deployable of its own (it must not import ct_pipeline). Run it with
``python -m uvicorn gateway.app:app --app-dir serving``; configure it with ``CT_GATEWAY_*`` variables.

- ``POST /predict`` ``{"rows": [{feature: value, ...}, ...]}`` -> ``{model, version, run_id, data_hash,
  image_digest, predictions}`` (+ ``X-Model-Name`` / ``-Version`` / ``-Run-Id`` / ``-Image-Digest`` /
  ``X-Request-Id`` headers). The request model is generated from the upstream's ``/metadata``; client
  mistakes are 422 with field errors (413 for an oversized body), an unreachable upstream is 503.
- Concurrent requests are micro-batched into one model-server call (:mod:`gateway.batcher`); calls go over
  pooled keep-alive connections with timeouts, bounded retries with backoff on 503/429/connection errors,
  and a circuit breaker (:mod:`gateway.resilience`).
- Predictions are logged to Parquet in the background when ``CT_GATEWAY_PREDICTION_LOG_DIR`` is set
  (:mod:`gateway.predlog`).
- ``GET /healthz`` (process alive), ``GET /readyz`` (schema loaded and upstream ready), ``GET /metrics``,
  ``GET /metadata`` (the served model's lineage and features), ``GET /docs``, ``GET /openapi.json``.
- ``PUT /admin/upstream`` ``{"url": ...}`` (``Authorization: Bearer <token>`` when a token is configured):
  loads the new upstream's metadata first, swaps upstream + schema atomically, then waits for requests in
  flight on the previous upstream to finish (so the caller can stop the old model server, dropping none).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import from_json, to_json
from pydantic_settings import BaseSettings, SettingsConfigDict

from .batcher import BatcherClosed, MicroBatcher, QueueFull
from .predlog import Lineage, PredictionLog
from .resilience import CircuitBreaker, backoff_delay
from .schema import FIELD_TYPES, UpstreamMetadata, build_request_model, validation_errors

__all__ = [
    "FIELD_TYPES",
    "GatewaySettings",
    "UpstreamMetadata",
    "build_request_model",
    "create_app",
]

logger = logging.getLogger("ct_gateway")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CT_GATEWAY_", extra="ignore")

    upstream_url: str | None = Field(default=None, description="Model server base URL, e.g. http://127.0.0.1:3700")
    admin_token: SecretStr | None = Field(default=None, description="Bearer token for /admin/*; unset = open")
    # -- request limits
    max_rows: int = Field(default=1000, ge=1, description="Rows per request")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Request body size (413 beyond)")
    # -- upstream connections
    connect_timeout: float = Field(default=2.0, gt=0)
    request_timeout: float = Field(default=30.0, gt=0, description="Per upstream request (read/write/pool)")
    metadata_timeout: float = Field(default=5.0, gt=0)
    readiness_timeout: float = Field(default=2.0, gt=0)
    drain_timeout: float = Field(default=30.0, ge=0, description="Wait for in-flight requests after a swap")
    metadata_retry_interval: float = Field(default=1.0, gt=0)
    max_connections: int = Field(default=100, ge=1)
    max_keepalive_connections: int = Field(default=20, ge=0)
    # Below the model server's 5 s (uvicorn) keep-alive: never reuse a socket the server is closing.
    keepalive_expiry: float = Field(default=2.0, ge=0)
    # -- micro-batching (see gateway.batcher)
    batching: bool = Field(default=True, description="Micro-batch concurrent requests into one upstream call")
    batch_max_rows: int = Field(default=256, ge=1, description="Rows per upstream call")
    batch_max_wait_ms: float = Field(default=0.0, ge=0, le=1000, description="Linger for a fuller batch")
    # One call out at a time gives the largest batches and the fewest model-server calls (its per-call cost is
    # fixed, ~1 row or 60 rows alike): best measured on 2 shared cores. Raise it when the model server has
    # cores (workers) of its own, so a slow call does not hold the queue.
    batch_max_inflight: int = Field(default=1, ge=1, description="Upstream calls out at once")
    batch_max_queue_rows: int = Field(default=20_000, ge=1, description="Queued rows before shedding (503)")
    # -- retries and circuit breaker
    retries: int = Field(default=2, ge=0, description="Retries of an upstream call on 503/429/connection errors")
    retry_backoff: float = Field(default=0.05, ge=0, description="First retry delay (s), doubling, jittered")
    retry_backoff_max: float = Field(default=1.0, ge=0)
    breaker_failures: int = Field(default=5, ge=1, description="Consecutive failed calls that open the circuit")
    breaker_reset: float = Field(default=2.0, gt=0, description="Seconds open before a probe call")
    # -- prediction log (Parquet by hour; off when no directory)
    prediction_log_dir: str | None = None
    prediction_log_flush_interval: float = Field(default=2.0, gt=0)
    prediction_log_flush_rows: int = Field(default=5_000, ge=1)
    prediction_log_max_pending_rows: int = Field(default=50_000, ge=1)
    prediction_log_roll_seconds: float = Field(default=300.0, gt=0)


class PredictResponse(BaseModel):
    model: str
    version: str
    run_id: str | None
    data_hash: str | None
    image_digest: str | None
    predictions: list[float | None]


class ErrorResponse(BaseModel):
    error: str
    detail: Any
    upstream: str | None = None


class UpstreamSwap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://\S+$")


# ---------------------------------------------------------------------------------------------------------
# Upstream state


class UpstreamError(RuntimeError):
    pass


class UpstreamCallError(RuntimeError):
    """An upstream call failed; carries the gateway's answer (status, error code, detail)."""

    def __init__(self, status: int, error: str, detail: Any, retry_after: float | None = None) -> None:
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after


_JSON = (b"content-type", b"application/json")


@dataclass(eq=False)
class Upstream:
    url: str
    client: httpx.AsyncClient
    meta: UpstreamMetadata
    request_model: type[BaseModel]
    breaker: CircuitBreaker
    batcher: MicroBatcher | None = None
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # precomputed per upstream: the response prefix, lineage headers, the prediction-log lineage
    prefix: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    lineage: Lineage | None = None
    rows_counter: Any = None  # ct_gateway_predicted_rows{model, version}

    def __post_init__(self) -> None:
        self.idle.set()
        meta = self.meta
        lineage = {
            "model": meta.model,
            "version": meta.version,
            "run_id": meta.run_id,
            "data_hash": meta.data_hash,
            "image_digest": meta.image_digest,
        }
        self.prefix = to_json(lineage)[:-1] + b',"predictions":'
        self.headers = [
            (b"x-model-" + name.encode(), str(value).encode("latin-1", "replace"))
            for name, value in (
                ("name", meta.model),
                ("version", meta.version),
                ("run-id", meta.run_id),
                ("image-digest", meta.image_digest),
                ("data-hash", meta.data_hash),
            )
            if value
        ]
        self.lineage = Lineage(
            model=meta.model,
            version=meta.version,
            run_id=meta.run_id,
            data_hash=meta.data_hash,
            image_digest=meta.image_digest,
            features=tuple(meta.features),
            dtypes=tuple(meta.feature_dtypes.get(f, "double") for f in meta.features),
        )

    def acquire(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self.idle.set()


def _new_client(settings: GatewaySettings, url: str, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url.rstrip("/"),
        timeout=httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout),
        limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
            keepalive_expiry=settings.keepalive_expiry,
        ),
        transport=transport,
    )


def _rejected(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamCallError) and exc.error == "rejected_by_model_server"


def _upstream_detail(resp: httpx.Response) -> Any:
    """The model server's error, FastAPI-style locations when it names fields."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        out = []
        for err in detail[:20]:
            if isinstance(err, dict) and isinstance(err.get("loc"), list):
                err = {**err, "loc": ["body", *err["loc"]]}
            out.append(err)
        return out
    return detail


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
        self.upstream_calls = Counter(
            "ct_gateway_upstream_calls", "Model-server calls by outcome", ["outcome"], registry=r
        )
        self.upstream_latency = Histogram(
            "ct_gateway_upstream_call_duration_seconds",
            "Model-server call latency (one attempt)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.retries = Counter("ct_gateway_upstream_retries", "Model-server call retries", ["reason"], registry=r)
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
        if settings.prediction_log_dir:
            self.predlog = PredictionLog(
                settings.prediction_log_dir,
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
        client = _new_client(settings, url, self.transport)
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
                isolate=_rejected,
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

    # -- the model-server call --------------------------------------------------------------------------

    async def call(self, up: Upstream, rows: list[dict[str, Any]]) -> list[Any]:
        """POST rows to the model server: retries with backoff on 503/429/connection errors, circuit breaker.

        Returns one score per row; raises UpstreamCallError with the answer the client gets.
        """
        breaker = up.breaker
        if not breaker.allow():
            wait = breaker.retry_after()
            self.upstream_calls.labels("circuit_open").inc()
            raise UpstreamCallError(
                503,
                "upstream_unavailable",
                f"{up.url}: circuit open after {breaker.failures} consecutive failed calls "
                f"(last: {breaker.last_error}); next try in {wait:.1f}s",
                retry_after=max(wait, 0.1),
            )
        try:
            return await self._call(up, rows)
        except BaseException:
            breaker.release_probe()  # no-op when the call already gave its verdict; never leave a probe hanging
            raise

    async def _call(self, up: Upstream, rows: list[dict[str, Any]]) -> list[Any]:
        settings, breaker = self.settings, up.breaker
        body = to_json({"rows": rows})
        deadline = time.monotonic() + settings.request_timeout
        attempt = 0
        while True:
            start = time.perf_counter()
            retry_reason = None
            try:
                resp = await up.client.post("/predict", content=body, headers={"content-type": "application/json"})
            except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError) as exc:
                failure = UpstreamCallError(
                    503, "upstream_unavailable", f"{up.url}: {type(exc).__name__}: {exc}", retry_after=1.0
                )
                retry_reason = "connect"
            except httpx.TimeoutException as exc:  # read/write timeout: the server may still be working on it
                self.upstream_calls.labels("timeout").inc()
                breaker.failure(f"{type(exc).__name__} after {settings.request_timeout:.0f}s")
                raise UpstreamCallError(504, "upstream_timeout", f"{up.url}: {type(exc).__name__}") from None
            except httpx.TransportError as exc:  # connection dropped (server restarting): scoring is idempotent
                failure = UpstreamCallError(
                    503, "upstream_unavailable", f"{up.url}: {type(exc).__name__}: {exc}", retry_after=1.0
                )
                retry_reason = "connection"
            else:
                self.upstream_latency.observe(time.perf_counter() - start)
                status = resp.status_code
                if status == 200:
                    try:
                        scores = from_json(resp.content)
                    except ValueError:
                        scores = None
                    if not isinstance(scores, list) or len(scores) != len(rows):
                        self.upstream_calls.labels("malformed").inc()
                        breaker.failure("malformed prediction list")
                        raise UpstreamCallError(
                            502, "upstream_error", "model server returned a malformed prediction list"
                        )
                    breaker.success()
                    self.upstream_calls.labels("ok").inc()
                    return scores
                if status in (429, 503):
                    failure = UpstreamCallError(
                        503, "upstream_overloaded", f"{up.url} answered {status}: {resp.text[:300]}", retry_after=1.0
                    )
                    retry_reason = f"status_{status}"
                elif status in (400, 422):  # the model server refused the input: a client mistake
                    breaker.success()
                    self.upstream_calls.labels("rejected").inc()
                    raise UpstreamCallError(422, "rejected_by_model_server", _upstream_detail(resp))
                else:
                    self.upstream_calls.labels("error").inc()
                    if status >= 500:
                        breaker.failure(f"status {status}")
                    else:
                        breaker.success()
                    raise UpstreamCallError(502, "upstream_error", f"model server answered {status}: {resp.text[:500]}")
            # retryable failure
            delay = backoff_delay(attempt, settings.retry_backoff, settings.retry_backoff_max)
            if attempt >= settings.retries or time.monotonic() + delay > deadline:
                self.upstream_calls.labels(failure.error.removeprefix("upstream_")).inc()
                breaker.failure(str(failure.detail)[:300])
                raise failure
            attempt += 1
            self.retries.labels(retry_reason).inc()
            await asyncio.sleep(delay)


# ---------------------------------------------------------------------------------------------------------
# The app


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


def _raw_response(body: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> Response:
    """A Response with prebuilt raw headers (skips per-request header encoding)."""
    response = Response.__new__(Response)
    response.status_code = status
    response.background = None
    response.body = body
    response.raw_headers = [*headers, _JSON, (b"content-length", str(len(body)).encode())]
    return response


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


async def _receive_chunks(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


class _ClientGone(Exception):
    pass


class GatewayMiddleware:
    """Pure ASGI (no per-request task or stream): request count + latency by endpoint/method/status for every
    request, and the hot path: ``POST /predict`` served here directly, without the router, the dependency
    machinery and the Request/Response objects (measured: about a third of the gateway's CPU per request)."""

    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        if scope["path"] == "/predict" and scope["method"] == "POST":
            status = 500
            try:
                content_length = request_id = None
                for name, value in scope["headers"]:
                    if name == b"content-length":
                        content_length = value.decode("latin-1")
                    elif name == b"x-request-id":
                        request_id = value.decode("latin-1")
                try:
                    status, headers, body = await self.gateway.predict(
                        _receive_chunks(receive), content_length, request_id
                    )
                except _ClientGone:
                    status = 499  # client closed the connection: nothing to answer
                    return
                except Exception:
                    logger.exception("POST /predict failed")
                    status, headers, body = 500, [], b'{"error":"internal_error","detail":"see the gateway log"}'
                headers.append(_JSON)
                headers.append((b"content-length", str(len(body)).encode()))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            finally:
                self.gateway.observe("/predict", "POST", status, time.perf_counter() - start)
            return

        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            if endpoint != "/metrics":
                self.gateway.observe(endpoint, scope["method"], status, time.perf_counter() - start)


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body larger than CT_GATEWAY_MAX_BODY_BYTES"},
    422: {"description": "Invalid body: FastAPI-style field errors (loc names the row and feature)"},
    502: {"model": ErrorResponse, "description": "The model server answered with an error"},
    503: {"model": ErrorResponse, "description": "Model server unavailable/overloaded or circuit open"},
    504: {"model": ErrorResponse, "description": "Model server timed out"},
}


def create_app(settings: GatewaySettings | None = None, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    gw = Gateway(settings, transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if gw.predlog is not None:
            gw.predlog.start()
        await gw.connect_initial(attempts=1)  # ready at once when the upstream is up ...
        task = asyncio.get_running_loop().create_task(gw.connect_initial())  # ... else keep trying
        # Startup objects (FastAPI, pydantic, httpx, pyarrow) live for the process: freezing them keeps full
        # collections from walking them, which otherwise shows up as tail-latency pauses.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await gw.close()
            if gw.predlog is not None:
                await gw.predlog.close()

    app = FastAPI(
        title="ct-pipeline gateway",
        description="Predictions from the served model, with its lineage. The /predict request schema is "
        "generated from the served model's signature.",
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.add_middleware(GatewayMiddleware, gateway=gw)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        up = gw.upstream
        if up is None:
            return JSONResponse({"error": "not_ready", "detail": gw.last_error or "model metadata not loaded yet"}, 503)
        try:
            resp = await up.client.get("/readyz", timeout=settings.readiness_timeout)
        except httpx.HTTPError as exc:
            detail = f"{up.url}: {type(exc).__name__}: {exc}"
            return JSONResponse({"error": "upstream_unavailable", "detail": detail, "upstream": up.url}, 503)
        if resp.status_code != 200:
            detail = f"{up.url}/readyz answered {resp.status_code}"
            return JSONResponse({"error": "upstream_not_ready", "detail": detail, "upstream": up.url}, 503)
        return JSONResponse(
            {
                "status": "ready",
                "model": up.meta.model,
                "version": up.meta.version,
                "upstream": up.url,
                "circuit": up.breaker.state,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gw.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        up = gw.upstream
        if up is None:
            return JSONResponse({"error": "not_ready", "detail": gw.last_error or "model metadata not loaded yet"}, 503)
        return JSONResponse({**up.meta.model_dump(), "upstream": up.url, "circuit": up.breaker.state})

    @app.post("/predict", response_model=PredictResponse, responses=_ERROR_RESPONSES)
    async def predict(request: Request) -> Response:
        # Served by PredictMiddleware (the hot path, raw ASGI); this route documents it and is the fallback.
        status, headers, body = await gw.predict(
            request.stream(), request.headers.get("content-length"), request.headers.get("x-request-id")
        )
        return _raw_response(body, status, headers)

    @app.put("/admin/upstream")
    async def swap_upstream(swap: UpstreamSwap, authorization: Annotated[str | None, Header()] = None) -> Any:
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        if token:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), token):
                raise HTTPException(401, "admin token required", headers={"WWW-Authenticate": "Bearer"})
        async with gw.swap_lock:
            try:
                new = await gw.load(swap.url)
            except UpstreamError as exc:
                return JSONResponse({"error": "upstream_unusable", "detail": str(exc), "upstream": swap.url}, 502)
            previous = gw.install(new)
            gw.swaps.inc()
        result: dict[str, Any] = {
            "upstream": new.url,
            "model": new.meta.model,
            "version": new.meta.version,
            "previous": None,
            "drained": True,
        }
        if previous is not None:
            result["previous"] = {"upstream": previous.url, "version": previous.meta.version}
            result["drained"] = await gw.retire(previous, settings.drain_timeout)
        logger.info("upstream swapped to %s (%s v%s)", new.url, new.meta.model, new.meta.version)
        return result

    def openapi() -> dict[str, Any]:
        # The /predict body depends on the current upstream: regenerate the spec with its schema.
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        up = gw.upstream
        if up is not None:
            body = up.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
            defs = body.pop("$defs", {})
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
            schema["paths"]["/predict"]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


_JSON_INVALID = [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]

app = create_app()
