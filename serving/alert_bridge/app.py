"""Alertmanager -> Airflow: firing alerts labelled ``ct_action="retrain"`` become retrain requests.

Run it next to Alertmanager (its webhook receiver points at ``POST /alertmanager``)::

    uvicorn alert_bridge.app:app --app-dir serving --host 127.0.0.1 --port 8790

Settings come from the environment once, at startup (``ct_pipeline.settings.load_settings``): the models
directory (``CTPIPE_MODELS_DIR``), the GitOps remote (open promotions suppress requests) and the Airflow API
(``CTPIPE_AIRFLOW_API_URL``, ``CTPIPE_AIRFLOW_USERNAME``/``_PASSWORD`` or ``CTPIPE_AIRFLOW_TOKEN``).

The policy is :func:`ct_pipeline.retrain.request_retrain` (cooldown counted from the retrain asset's newest event,
none while a promotion is open). A per-model lock serializes concurrent webhooks, so a storm of identical alerts
posts ONE asset event: the first post makes ``last_event`` recent and the cooldown suppresses the rest.

Answers: ``200`` with what was done per model (``sent`` / ``suppressed`` with why); ``422`` naming the field of an
invalid payload; ``503`` when a request could not be posted (Airflow down): Alertmanager retries, and the cooldown
keeps the retry from doubling a request that did go through.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from ct_pipeline.domain.spec import ModelSpec
    from ct_pipeline.ports import Clock, GitPublisher, RetrainTrigger
    from ct_pipeline.settings import Settings

log = logging.getLogger("alert_bridge")
RETRAIN_ACTION = "retrain"


class Alert(BaseModel):
    """One alert of an Alertmanager webhook (payload version 4)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str | None = None
    fingerprint: str | None = None


class Webhook(BaseModel):
    """Alertmanager's webhook body (``version: "4"``)."""

    model_config = ConfigDict(extra="ignore")

    version: str = "4"
    status: Literal["firing", "resolved"]
    receiver: str = ""
    alerts: list[Alert]
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str | None = None
    groupKey: str | None = None
    truncatedAlerts: int = 0


def alert_reason(alert: Alert) -> str:
    """What one alert says about why to retrain: its reason (the monitor report's own line), else its summary,
    else its name."""
    text = alert.annotations.get("reason") or alert.annotations.get("summary") or ""
    name = alert.labels.get("alertname", "alert")
    return text.removeprefix("retrained because ") or f"{name} fired"


def retrain_groups(webhook: Webhook) -> tuple[dict[str, list[Alert]], list[str]]:
    """Firing ``ct_action="retrain"`` alerts per model, and why the other alerts were ignored."""
    groups: dict[str, list[Alert]] = {}
    ignored: list[str] = []
    for i, alert in enumerate(webhook.alerts):
        name = alert.labels.get("alertname", f"alerts.{i}")
        if alert.labels.get("ct_action") != RETRAIN_ACTION:
            ignored.append(f'{name}: no ct_action="retrain" label')
        elif alert.status != "firing":
            ignored.append(f"{name}: {alert.status}")
        elif not alert.labels.get("model"):
            ignored.append(f"{name}: no model label")
        else:
            groups.setdefault(alert.labels["model"], []).append(alert)
    return groups, ignored


def combined_reason(alerts: list[Alert]) -> str:
    """One line for the run and its promotion, worded like the monitor's own retrain reason: "retrained because
    `amount` drifted: PSI 0.37 > 0.017 over 1,686 predictions (and 3 more breaches; alerts: CtFeatureDrift)"."""
    reasons: list[str] = []
    for alert in alerts:
        reason = alert_reason(alert)
        if reason not in reasons:
            reasons.append(reason)
    names = sorted({a.labels.get("alertname", "alert") for a in alerts})
    more = len(reasons) - 1
    tail = f"and {more} more breach{'es' if more > 1 else ''}; " if more else ""
    return f"retrained because {reasons[0]} ({tail}alerts: {', '.join(names)})"


@dataclass
class Bridge:
    """The bridge's state: settings, the ports (built lazily, once), one lock per model."""

    settings: Settings
    trigger_factory: Callable[[Settings], RetrainTrigger]
    publisher_factory: Callable[[Settings, ModelSpec], GitPublisher]
    clock: Clock
    _trigger: RetrainTrigger | None = None
    _publishers: dict[str, GitPublisher] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, model: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(model, threading.Lock())

    def trigger(self) -> RetrainTrigger:
        with self._guard:
            if self._trigger is None:
                self._trigger = self.trigger_factory(self.settings)
            return self._trigger

    def publisher(self, spec: ModelSpec) -> GitPublisher:
        with self._guard:
            if spec.name not in self._publishers:
                self._publishers[spec.name] = self.publisher_factory(self.settings, spec)
            return self._publishers[spec.name]

    def handle(self, model: str, alerts: list[Alert]) -> dict[str, Any]:
        from ct_pipeline.domain.spec import find_spec
        from ct_pipeline.errors import CtPipelineError
        from ct_pipeline.retrain import request_retrain

        reason = combined_reason(alerts)
        result: dict[str, Any] = {"model": model, "alerts": len(alerts), "reason": reason}
        try:
            spec = find_spec(self.settings.paths.models_dir, model)
            with self.lock(model):
                request = request_retrain(
                    spec,
                    reason,
                    trigger=self.trigger(),
                    publisher=self.publisher(spec),
                    clock=self.clock,
                    source="alertmanager",
                    requested_by="alertmanager",
                    extra={"alerts": sorted({a.labels.get("alertname", "") for a in alerts} - {""})},
                )
        except CtPipelineError as exc:
            log.error("retrain request for %s failed: %s", model, exc)
            return {**result, "action": "error", "error": str(exc)}
        if request.sent:
            log.info("retrain requested for %s (event %s): %s", model, request.event_id, reason)
            return {**result, "action": "sent", "event_id": request.event_id, "asset": request.asset}
        log.info("retrain for %s suppressed: %s", model, request.suppressed)
        return {**result, "action": "suppressed", "suppressed": request.suppressed}


def _default_trigger(settings: Settings) -> RetrainTrigger:
    from ct_pipeline.adapters.airflow_api import AirflowAPI

    return AirflowAPI(settings.airflow)


def _default_publisher(settings: Settings, spec: ModelSpec) -> GitPublisher:
    from ct_pipeline.adapters.publishers import publisher_for

    return publisher_for(settings, spec)


class _SystemClock:
    def now(self) -> datetime:
        from datetime import UTC

        return datetime.now(UTC)


def create_app(
    settings: Settings | None = None,
    *,
    trigger_factory: Callable[[Settings], RetrainTrigger] | None = None,
    publisher_factory: Callable[[Settings, ModelSpec], GitPublisher] | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """The bridge app; the defaults read the environment at startup and talk to the real Airflow and Git."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from ct_pipeline.settings import load_settings

        app.state.bridge = Bridge(
            settings=settings or load_settings(),
            trigger_factory=trigger_factory or _default_trigger,
            publisher_factory=publisher_factory or _default_publisher,
            clock=clock or _SystemClock(),
        )
        log.info(
            "alert bridge: models in %s, Airflow API %s",
            app.state.bridge.settings.paths.models_dir,
            app.state.bridge.settings.airflow.api_url or "(not configured)",
        )
        yield

    app = FastAPI(title="ct-pipeline alert bridge", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return JSONResponse(
            status_code=422,
            content={"error": "invalid Alertmanager webhook: " + "; ".join(problems), "detail": problems},
        )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        bridge: Bridge = app.state.bridge
        return {
            "status": "ok",
            "models_dir": str(bridge.settings.paths.models_dir),
            "airflow": bridge.settings.airflow.api_url,
        }

    @app.post("/alertmanager")
    def alertmanager(webhook: Webhook) -> JSONResponse:
        bridge: Bridge = app.state.bridge
        groups, ignored = retrain_groups(webhook)
        results = [bridge.handle(model, alerts) for model, alerts in sorted(groups.items())]
        failed = any(r["action"] == "error" for r in results)
        return JSONResponse(
            status_code=503 if failed else 200,
            content={"status": "error" if failed else "ok", "results": results, "ignored": ignored},
        )

    return app


app = create_app()

__all__ = ["Alert", "Bridge", "Webhook", "app", "create_app"]
