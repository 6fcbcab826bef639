"""The gateway users call: validates requests against the served model's features, forwards them to the
BentoML model server, and answers with predictions plus the model's lineage.

A deployable of its own (it must not import ct_pipeline). Run it with
``python -m uvicorn gateway.app:app --app-dir serving``; configure it with ``CT_GATEWAY_*`` variables.

- ``POST /predict`` ``{"rows": [{feature: value, ...}, ...]}`` -> ``{model, version, run_id, data_hash,
  predictions}`` (+ ``X-Model-Name`` / ``X-Model-Version`` headers). The request model is generated from the
  upstream's ``/metadata``; client mistakes are 422 with field errors, an unreachable upstream is 503.
- ``GET /healthz`` (process alive), ``GET /readyz`` (schema loaded and upstream ready), ``GET /metrics``,
  ``GET /metadata`` (the served model's lineage and features).
- ``PUT /admin/upstream`` ``{"url": ...}`` (``Authorization: Bearer <token>`` when a token is configured):
  loads the new upstream's metadata first, swaps upstream + schema atomically, then waits for requests in
  flight on the previous upstream to finish (so the caller can stop the old model server, dropping none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
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
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictFloat,
    StrictStr,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger("ct_gateway")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CT_GATEWAY_", extra="ignore")

    upstream_url: str | None = Field(default=None, description="Model server base URL, e.g. http://127.0.0.1:3700")
    admin_token: SecretStr | None = Field(default=None, description="Bearer token for /admin/*; unset = open")
    max_rows: int = Field(default=1000, ge=1)
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


# ---------------------------------------------------------------------------------------------------------
# Request schema generated from the upstream's metadata


def _whole_number(value: float) -> int:
    if not float(value).is_integer():
        raise ValueError("Input should be a whole number")
    return int(value)


_Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]


def _bool_or_01(value: Any) -> Any:
    if isinstance(value, bool) or (type(value) in (int, float) and value in (0, 1)):
        return bool(value)
    raise ValueError("Input should be a boolean, 0 or 1")


_Boolean = Annotated[bool, BeforeValidator(_bool_or_01)]
_Integer = Annotated[_Number, AfterValidator(_whole_number)]
# MLflow signature dtype -> field type. Numbers are strict: strings and booleans are refused.
FIELD_TYPES: dict[str, Any] = {
    "double": _Number,
    "float": _Number,
    "long": _Integer,
    "integer": _Integer,
    "boolean": _Boolean,
    "string": StrictStr,
}


class UpstreamMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    version: str
    run_id: str | None = None
    data_hash: str | None = None
    task: str | None = None
    features: list[str] = Field(min_length=1)
    feature_dtypes: dict[str, str] = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _str_version(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


def build_request_model(meta: UpstreamMetadata, max_rows: int) -> type[BaseModel]:
    """``{"rows": [Row, ...]}`` with 1..max_rows rows; every feature required, extra fields forbidden."""
    unknown = {f: d for f, d in meta.feature_dtypes.items() if d not in FIELD_TYPES}
    if unknown:
        raise ValueError(f"unsupported feature dtypes {unknown}")
    # Internal names f0..fn aliased to the feature names: any column name works, even non-identifiers.
    fields: dict[str, Any] = {
        f"f{i}": (FIELD_TYPES[meta.feature_dtypes.get(name, "double")], Field(alias=name))
        for i, name in enumerate(meta.features)
    }
    row = create_model("Row", __config__=ConfigDict(extra="forbid", title=f"{meta.model} row"), **fields)
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", title=f"{meta.model} v{meta.version} request"),
        rows=(list[row], Field(min_length=1, max_length=max_rows)),  # type: ignore[valid-type]
    )


class PredictResponse(BaseModel):
    model: str
    version: str
    run_id: str | None
    data_hash: str | None
    predictions: list[float]


class UpstreamSwap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://\S+$")


# ---------------------------------------------------------------------------------------------------------
# Upstream state


class UpstreamError(RuntimeError):
    pass


@dataclass(eq=False)
class Upstream:
    url: str
    client: httpx.AsyncClient
    meta: UpstreamMetadata
    request_model: type[BaseModel]
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

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


class Gateway:
    def __init__(self, settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.transport = transport  # tests inject httpx.MockTransport / ASGITransport
        self.upstream: Upstream | None = None
        self.last_error: str | None = None
        self.swap_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ct_gateway_requests",
            "Gateway HTTP requests",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ct_gateway_request_duration_seconds",
            "Gateway request latency",
            ["endpoint", "method", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.rows = Counter("ct_gateway_predicted_rows", "Rows scored", ["model", "version"], registry=self.registry)
        self.model_info = Gauge(
            "ct_gateway_model_info",
            "Model served behind the gateway (value 1)",
            ["model", "version", "run_id", "upstream"],
            registry=self.registry,
        )
        self.swaps = Counter("ct_gateway_upstream_swaps", "Upstream swaps", registry=self.registry)

    async def load(self, url: str) -> Upstream:
        """Connect to ``url`` and build its request schema; raises UpstreamError when it is not usable."""
        client = _new_client(self.settings, url, self.transport)
        try:
            resp = await client.post("/metadata", json={}, timeout=self.settings.metadata_timeout)
            resp.raise_for_status()
            meta = UpstreamMetadata.model_validate(resp.json())
            request_model = build_request_model(meta, self.settings.max_rows)
        except (httpx.HTTPError, ValueError) as exc:  # ValidationError is a ValueError
            await client.aclose()
            raise UpstreamError(f"cannot load model metadata from {url}: {type(exc).__name__}: {exc}") from exc
        return Upstream(url=url.rstrip("/"), client=client, meta=meta, request_model=request_model)

    def install(self, upstream: Upstream) -> Upstream | None:
        """Swap in a loaded upstream (atomic: no await); returns the previous one."""
        previous, self.upstream = self.upstream, upstream
        self.last_error = None
        self.model_info.clear()
        meta = upstream.meta
        self.model_info.labels(meta.model, meta.version, meta.run_id or "", upstream.url).set(1)
        return previous

    async def retire(self, upstream: Upstream, timeout: float) -> bool:
        """Wait for requests in flight on ``upstream`` to finish, then close its client."""
        drained = True
        try:
            await asyncio.wait_for(upstream.idle.wait(), timeout)
        except TimeoutError:
            drained = False
        if drained:
            await upstream.client.aclose()
        else:  # still busy: close once the stragglers finish (bounded by the request timeout)

            async def _late_close() -> None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(upstream.idle.wait(), self.settings.request_timeout + 5)
                await upstream.client.aclose()

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
            await upstream.client.aclose()

    async def close(self) -> None:
        if self.upstream is not None:
            await self.upstream.client.aclose()
            self.upstream = None


# ---------------------------------------------------------------------------------------------------------
# The app


def _error(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors(include_url=False):
        err["loc"] = ("body", *err["loc"])
        if "ctx" in err:
            err["ctx"] = {k: str(v) for k, v in err["ctx"].items()}
        errors.append(err)
    return errors


def create_app(settings: GatewaySettings | None = None, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    gw = Gateway(settings, transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.connect_initial(attempts=1)  # ready at once when the upstream is up ...
        task = asyncio.get_running_loop().create_task(gw.connect_initial())  # ... else keep trying
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await gw.close()

    app = FastAPI(title="ct-pipeline gateway", lifespan=lifespan)
    app.state.gateway = gw

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            if endpoint != "/metrics":
                labels = (endpoint, request.method, str(status))
                gw.requests.labels(*labels).inc()
                gw.latency.labels(*labels).observe(time.perf_counter() - start)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        up = gw.upstream
        if up is None:
            return _error(503, "not_ready", gw.last_error or "model metadata not loaded yet")
        try:
            resp = await up.client.get("/readyz", timeout=settings.readiness_timeout)
        except httpx.HTTPError as exc:
            return _error(503, "upstream_unavailable", f"{up.url}: {type(exc).__name__}: {exc}", upstream=up.url)
        if resp.status_code != 200:
            return _error(503, "upstream_not_ready", f"{up.url}/readyz answered {resp.status_code}", upstream=up.url)
        return JSONResponse({"status": "ready", "model": up.meta.model, "version": up.meta.version, "upstream": up.url})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gw.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        up = gw.upstream
        if up is None:
            return _error(503, "not_ready", gw.last_error or "model metadata not loaded yet")
        return JSONResponse({**up.meta.model_dump(), "upstream": up.url})

    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}]
            ) from None
        up = gw.upstream
        if up is None:
            return _error(503, "upstream_unavailable", gw.last_error or "model metadata not loaded yet")
        try:
            parsed = up.request_model.model_validate(body)
        except ValidationError as exc:
            raise RequestValidationError(_validation_errors(exc)) from None
        rows = [row.model_dump(by_alias=True) for row in parsed.rows]  # type: ignore[attr-defined]
        up.acquire()  # no await since reading gw.upstream: a swap cannot slip in between
        try:
            resp = await up.client.post("/predict", json={"rows": rows})
        except httpx.TimeoutException as exc:
            return _error(504, "upstream_timeout", f"{up.url}: {type(exc).__name__}", upstream=up.url)
        except httpx.HTTPError as exc:
            return _error(503, "upstream_unavailable", f"{up.url}: {type(exc).__name__}: {exc}", upstream=up.url)
        finally:
            up.release()
        if resp.status_code in (429, 503):
            return _error(503, "upstream_overloaded", resp.text[:500], upstream=up.url)
        if resp.status_code != 200:
            return _error(
                502,
                "upstream_error",
                f"model server answered {resp.status_code}: {resp.text[:500]}",
                upstream=up.url,
            )
        try:
            predictions = resp.json()
        except ValueError:
            predictions = None
        if not isinstance(predictions, list) or len(predictions) != len(rows):
            return _error(502, "upstream_error", "model server returned a malformed prediction list", upstream=up.url)
        meta = up.meta
        gw.rows.labels(meta.model, meta.version).inc(len(rows))
        return JSONResponse(
            {
                "model": meta.model,
                "version": meta.version,
                "run_id": meta.run_id,
                "data_hash": meta.data_hash,
                "predictions": predictions,
            },
            headers={"X-Model-Name": meta.model, "X-Model-Version": meta.version},
        )

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
                return _error(502, "upstream_unusable", str(exc), upstream=swap.url)
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
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
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


app = create_app()
