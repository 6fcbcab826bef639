"""The gateway users call: validates requests against the served model's features, forwards them to the
BentoML model server, and answers with predictions plus the model's lineage.

A deployable of its own (it must not import ct_pipeline). Run it with
``python -m uvicorn gateway.app:app --app-dir serving``; configure it with ``CT_GATEWAY_*`` variables
(:mod:`gateway.settings`). This module only builds ``app``; the gateway is:

- :mod:`gateway.settings`: ``GatewaySettings``.
- :mod:`gateway.routes`: the FastAPI routes and :func:`gateway.routes.create_app` (tests build apps with it).
- :mod:`gateway.asgi`: the raw-ASGI fast path serving ``POST /predict``.
- :mod:`gateway.core`: the gateway's state and logic (upstream switch, batching, metrics, prediction log).
- :mod:`gateway.upstream`: the model server as an upstream: httpx client, retries with backoff, errors.
- :mod:`gateway.schema`: the request model built from the model server's ``/metadata``, on the field types of
  the contract it shares with the model service (``ct_contract``, next to ``gateway/``).
- :mod:`gateway.batcher`, :mod:`gateway.resilience`, :mod:`gateway.predlog`: micro-batching, circuit breaker
  and backoff, the Parquet prediction log.

See serving/README.md for the endpoints, the answers and the settings.
"""

from __future__ import annotations

from .routes import create_app

__all__ = ["app"]

app = create_app()
