"""The FastAPI app: its routes (``/healthz``, ``/readyz``, ``/metrics``, ``/metadata``, ``/admin/upstream``,
the documented ``/predict`` route, the OpenAPI spec with the current model's request schema) and
:func:`create_app`, which assembles them with the :class:`gateway.core.Gateway` and the raw-ASGI fast path
(:class:`gateway.asgi.GatewayMiddleware`) in front.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from .asgi import GatewayMiddleware
from .core import JSON_HEADER, Gateway
from .settings import GatewaySettings
from .upstream import UpstreamError

__all__ = ["ErrorResponse", "PredictResponse", "UpstreamSwap", "create_app"]

logger = logging.getLogger("ct_gateway")


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


def _raw_response(body: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> Response:
    """A Response with prebuilt raw headers (skips per-request header encoding)."""
    response = Response.__new__(Response)
    response.status_code = status
    response.background = None
    response.body = body
    response.raw_headers = [*headers, JSON_HEADER, (b"content-length", str(len(body)).encode())]
    return response


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
        # Served by GatewayMiddleware (the hot path, gateway.asgi); this route documents it and is the fallback.
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
