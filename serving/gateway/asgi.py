"""The hot path: ``POST /predict`` served as raw ASGI, in front of the FastAPI app.

:class:`GatewayMiddleware` answers ``POST /predict`` itself, without the router, the dependency machinery and
the Request/Response objects (measured with py-spy: about a third of the gateway's CPU per request), by
calling :meth:`gateway.core.Gateway.predict` with the body's chunks and sending the prebuilt bytes it returns.
Every other request goes on to the FastAPI app (:mod:`gateway.routes`); all are counted and timed by
endpoint/method/status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from .core import JSON_HEADER, Gateway

__all__ = ["GatewayMiddleware"]

logger = logging.getLogger("ct_gateway")


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
                headers.append(JSON_HEADER)
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
