"""The feedback loop's second step: a breach configured to retrain becomes one asset event for the training
DAG, unless the cooldown or an open promotion says not now (the policy is :mod:`ct_pipeline.retrain`)."""

from __future__ import annotations

from ct_pipeline.context import StepContext
from ct_pipeline.domain.monitor_report import MonitorReport, RetrainRequest
from ct_pipeline.errors import TriggerError


def retrain(ctx: StepContext, report: MonitorReport) -> RetrainRequest:
    from ct_pipeline.retrain import request_retrain

    if not report.retrain_reason:
        return RetrainRequest(
            model=report.model, reason="", requested_at=ctx.clock.now(), suppressed="no breach asks to retrain"
        )
    if ctx.retrain is None:
        raise TriggerError(
            f"{report.model}: retraining wanted ({report.retrain_reason}) but no Airflow API is configured "
            "(CTPIPE_AIRFLOW_API_URL); run `ctpipe run` by hand or configure it"
        )
    return request_retrain(
        ctx.spec, report.retrain_reason, trigger=ctx.retrain, publisher=ctx.publisher, clock=ctx.clock, source="monitor"
    )
