"""The model server, seen from the gateway: one :class:`Upstream` per model server (its pooled httpx client,
circuit breaker, batcher and the lineage prebuilt into response bytes and headers), and
:class:`UpstreamCaller`, the ``POST /predict`` call to it: timeouts, bounded retries with backoff on
503/429/connection errors (:func:`gateway.resilience.backoff_delay`), the circuit breaker's verdicts, and
the answer a failed call turns into (:class:`UpstreamCallError`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from ct_contract import ROWS_FIELD
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel
from pydantic_core import from_json, to_json

from .batcher import MicroBatcher
from .predlog import Lineage
from .resilience import CircuitBreaker, backoff_delay
from .schema import UpstreamMetadata
from .settings import GatewaySettings

__all__ = [
    "Upstream",
    "UpstreamCallError",
    "UpstreamCaller",
    "UpstreamError",
    "new_client",
    "rejected",
    "upstream_detail",
]


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


def new_client(settings: GatewaySettings, url: str, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
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


def rejected(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamCallError) and exc.error == "rejected_by_model_server"


def upstream_detail(resp: httpx.Response) -> Any:
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


class UpstreamCaller:
    """``POST /predict`` to an upstream, with the ``ct_gateway_upstream_*`` metrics it keeps."""

    def __init__(self, settings: GatewaySettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        r = registry
        self.calls = Counter("ct_gateway_upstream_calls", "Model-server calls by outcome", ["outcome"], registry=r)
        self.latency = Histogram(
            "ct_gateway_upstream_call_duration_seconds",
            "Model-server call latency (one attempt)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.retries = Counter("ct_gateway_upstream_retries", "Model-server call retries", ["reason"], registry=r)

    async def call(self, up: Upstream, rows: list[dict[str, Any]]) -> list[Any]:
        """POST rows to the model server: retries with backoff on 503/429/connection errors, circuit breaker.

        Returns one score per row; raises UpstreamCallError with the answer the client gets.
        """
        breaker = up.breaker
        if not breaker.allow():
            wait = breaker.retry_after()
            self.calls.labels("circuit_open").inc()
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
        body = to_json({ROWS_FIELD: rows})
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
                self.calls.labels("timeout").inc()
                breaker.failure(f"{type(exc).__name__} after {settings.request_timeout:.0f}s")
                raise UpstreamCallError(504, "upstream_timeout", f"{up.url}: {type(exc).__name__}") from None
            except httpx.TransportError as exc:  # connection dropped (server restarting): scoring is idempotent
                failure = UpstreamCallError(
                    503, "upstream_unavailable", f"{up.url}: {type(exc).__name__}: {exc}", retry_after=1.0
                )
                retry_reason = "connection"
            else:
                self.latency.observe(time.perf_counter() - start)
                status = resp.status_code
                if status == 200:
                    try:
                        scores = from_json(resp.content)
                    except ValueError:
                        scores = None
                    if not isinstance(scores, list) or len(scores) != len(rows):
                        self.calls.labels("malformed").inc()
                        breaker.failure("malformed prediction list")
                        raise UpstreamCallError(
                            502, "upstream_error", "model server returned a malformed prediction list"
                        )
                    breaker.success()
                    self.calls.labels("ok").inc()
                    return scores
                if status in (429, 503):
                    failure = UpstreamCallError(
                        503, "upstream_overloaded", f"{up.url} answered {status}: {resp.text[:300]}", retry_after=1.0
                    )
                    retry_reason = f"status_{status}"
                elif status in (400, 422):  # the model server refused the input: a client mistake
                    breaker.success()
                    self.calls.labels("rejected").inc()
                    raise UpstreamCallError(422, "rejected_by_model_server", upstream_detail(resp))
                else:
                    self.calls.labels("error").inc()
                    if status >= 500:
                        breaker.failure(f"status {status}")
                    else:
                        breaker.success()
                    raise UpstreamCallError(502, "upstream_error", f"model server answered {status}: {resp.text[:500]}")
            # retryable failure
            delay = backoff_delay(attempt, settings.retry_backoff, settings.retry_backoff_max)
            if attempt >= settings.retries or time.monotonic() + delay > deadline:
                self.calls.labels(failure.error.removeprefix("upstream_")).inc()
                breaker.failure(str(failure.detail)[:300])
                raise failure
            attempt += 1
            self.retries.labels(retry_reason).inc()
            await asyncio.sleep(delay)
