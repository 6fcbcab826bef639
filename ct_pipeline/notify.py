"""Failure alerts of the ct DAGs, posted to Alertmanager's API v2 (``POST {url}/api/v2/alerts``).

The DAG callbacks never raise: an alert path that is down is logged, loudly, and the task's own failure stands.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ct_pipeline.errors import AlertPathDown

log = logging.getLogger(__name__)
ALERTNAME_DAG_FAILED = "CtDagFailed"


def alert(
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
    *,
    starts_at: datetime | None = None,
    generator_url: str | None = None,
) -> dict[str, Any]:
    """One postable alert (Alertmanager API v2 ``postableAlert``)."""
    body: dict[str, Any] = {
        "labels": {k: str(v) for k, v in labels.items() if v is not None and v != ""},
        "annotations": {k: str(v) for k, v in (annotations or {}).items() if v},
        "startsAt": (starts_at or datetime.now(UTC)).isoformat(),
    }
    if generator_url:
        body["generatorURL"] = generator_url
    return body


def post_alerts(alertmanager_url: str, alerts: list[dict[str, Any]], timeout: float = 5.0) -> None:
    """POST the alerts; raises AlertPathDown naming the URL when Alertmanager does not take them."""
    import httpx

    url = alertmanager_url.rstrip("/") + "/api/v2/alerts"
    try:
        resp = httpx.post(url, json=alerts, timeout=timeout)
    except httpx.HTTPError as exc:
        raise AlertPathDown(f"Alertmanager at {alertmanager_url} is unreachable: {exc}") from None
    if resp.status_code != 200:
        raise AlertPathDown(f"Alertmanager at {url} answered {resp.status_code}: {resp.text.strip()[:200]}")


def _failure_alert(context: Mapping[str, Any], model: str) -> dict[str, Any]:
    dag_run = context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(dag_run, "dag_id", None) or getattr(context.get("dag"), "dag_id", None) or ""
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id") or ""
    task_id = getattr(ti, "task_id", None) or ""
    exception = context.get("exception") or context.get("reason") or ""
    where = f"task {task_id}" if task_id else "run"
    summary = f"{dag_id} {where} failed (model {model}, run {run_id})"
    return alert(
        {
            "alertname": ALERTNAME_DAG_FAILED,
            "model": model,
            "dag_id": dag_id,
            "task_id": task_id or "-",
            "severity": "critical",
        },
        {"summary": summary, "description": str(exception)[:2000]},
        generator_url=getattr(ti, "log_url", None),
    )


def notify_failure(context: Mapping[str, Any], model: str, alertmanager_url: str | None = None) -> bool:
    """Post a CtDagFailed alert for this failed task/run; True when Alertmanager took it. Never raises."""
    try:
        if alertmanager_url is None:
            from ct_pipeline.settings import load_settings

            alertmanager_url = load_settings().monitoring.alertmanager_url
        body = _failure_alert(context, model)
        if not alertmanager_url:
            log.warning(
                "ct-pipeline: %s - no alert sent: Alertmanager is not configured (set CTPIPE_ALERTMANAGER_URL)",
                body["annotations"].get("summary"),
            )
            return False
        post_alerts(alertmanager_url, [body])
        log.info("ct-pipeline: alert %s sent to %s", body["labels"], alertmanager_url)
        return True
    except AlertPathDown as exc:
        log.error("ct-pipeline: failure alert NOT delivered: %s", exc)
    except Exception:  # a callback must not fail the failure handling
        log.exception("ct-pipeline: failure alert NOT delivered (callback error)")
    return False


class FailureCallback:
    """``on_failure_callback`` of one model's DAGs (a picklable callable, one per model)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def __call__(self, context: Mapping[str, Any]) -> None:
        notify_failure(context, self.model)

    def __repr__(self) -> str:
        return f"FailureCallback({self.model!r})"


__all__ = ["ALERTNAME_DAG_FAILED", "FailureCallback", "alert", "notify_failure", "post_alerts"]
