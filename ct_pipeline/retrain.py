"""The retrain policy, in one place: the monitor DAG, the alert bridge and the CLI all ask here.

A retrain request is one event of the model's retrain asset (``x-ct-pipeline://models/<model>/retrain``); the
training DAG is scheduled on it. Requests are suppressed while the model's cooldown runs (counted from the newest
event of that asset, whoever posted it) and while a promotion of the model is open (a retrain would only race it).
An alert storm is thus one event: after the first post, ``last_event`` is recent and the cooldown covers the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from ct_pipeline.domain.assets import retrain_asset_uri
from ct_pipeline.domain.monitor_report import RetrainRequest

if TYPE_CHECKING:
    from ct_pipeline.domain.records import PromotionRecord
    from ct_pipeline.domain.spec import ModelSpec
    from ct_pipeline.ports import Clock, GitPublisher, RetrainTrigger

Source = Literal["monitor", "alertmanager", "data", "cli"]


def format_age(delta: timedelta) -> str:
    """A short human age: 45s, 12m, 2h, 2h30m, 3d."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def decide_retrain(
    spec: ModelSpec,
    reason: str | None,
    now: datetime,
    last_event: datetime | None,
    open_promotions: Sequence[PromotionRecord],
    *,
    source: Source = "monitor",
) -> RetrainRequest:
    """Whether to request retraining now (pure). ``suppressed`` is None when the request should be sent."""
    request = RetrainRequest(
        model=spec.name,
        reason=(reason or "").strip(),
        requested_at=now,
        source=source,
        asset=retrain_asset_uri(spec.name),
    )
    if not request.reason:
        return request.model_copy(update={"suppressed": "no breach: nothing asked for a retrain"})
    cooldown = spec.monitoring.cooldown_delta
    if last_event is not None and now - last_event < cooldown:
        return request.model_copy(
            update={
                "suppressed": f"cooldown: last retrain request {format_age(now - last_event)} ago, "
                f"cooldown {spec.monitoring.cooldown}"
            }
        )
    still_open = [p for p in open_promotions if p.status == "open" and p.model == spec.name]
    if still_open:
        ids = ", ".join(p.id for p in still_open)
        verb = "is" if len(still_open) == 1 else "are"
        return request.model_copy(update={"suppressed": f"promotion {ids} {verb} open"})
    return request


def event_extra(request: RetrainRequest, requested_by: str | None = None, **more: Any) -> dict[str, Any]:
    """The asset event's ``extra``: what the training run reads back into its RunRequest.trigger."""
    extra: dict[str, Any] = {
        "reason": request.reason,
        "source": request.source,
        "requested_at": request.requested_at.isoformat(),
    }
    if requested_by:
        extra["requested_by"] = requested_by
    extra.update({k: v for k, v in more.items() if v is not None})
    return extra


def request_retrain(
    spec: ModelSpec,
    reason: str | None,
    *,
    trigger: RetrainTrigger,
    publisher: GitPublisher,
    clock: Clock,
    source: Source,
    requested_by: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> RetrainRequest:
    """Ask for a retrain of ``spec``'s model unless the policy suppresses it; post the asset event if not.

    Raises TriggerError (naming the URL) when Airflow cannot be asked or told.
    """
    now = clock.now()
    asset = retrain_asset_uri(spec.name)
    last = trigger.last_event(asset)
    open_promotions = [p for p in publisher.list_promotions(spec.name) if p.status == "open"]
    decision = decide_retrain(spec, reason, now, last, open_promotions, source=source)
    if decision.suppressed is not None:
        return decision
    event_id = trigger.post_event(asset, event_extra(decision, requested_by, **dict(extra or {})))
    return decision.model_copy(update={"sent": True, "event_id": event_id})


__all__ = ["decide_retrain", "event_extra", "format_age", "request_retrain"]
