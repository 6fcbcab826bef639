"""The monitor: the served model's recent predictions judged against its reference, by the spec's monitors.

reference (logged by the gate on the champion's run) -> one streaming pass over the prediction window (drift,
nulls, volume) -> matured labels (realized metric vs the gate's promise) -> findings -> a typed report, written
as JSON + HTML + PNG, logged to MLflow on the champion's run and pushed as Prometheus metrics. The report is
written even when the alert path is down; it says so.
"""

from __future__ import annotations

import json
from datetime import datetime

from ct_pipeline.context import StepContext
from ct_pipeline.domain import tags
from ct_pipeline.domain.monitor_report import AlertPath, MonitorReport
from ct_pipeline.domain.monitoring import PerformanceMonitor
from ct_pipeline.domain.records import DeployedModel
from ct_pipeline.domain.spec import parse_window
from ct_pipeline.errors import AlertPathDown, MonitoringError, NoPredictionsError
from ct_pipeline.steps.monitor.judge import drift_checks, findings, retrain_reason, volume_stats
from ct_pipeline.steps.monitor.reference import Reference, load_reference
from ct_pipeline.steps.monitor.window import WindowStats, feature_references, scan_window, score_reference


def served_model(ctx: StepContext) -> DeployedModel:
    from ct_pipeline.adapters.publishers import deployed_model

    deployed = deployed_model(ctx.publisher, ctx.spec)
    if deployed is None or not deployed.version:
        raise MonitoringError(
            f"nothing is deployed for {ctx.spec.name} in {ctx.spec.gitops.environment} "
            f"({ctx.spec.manifest_path} on {ctx.publisher.base_branch}): no model to monitor"
        )
    return deployed


def last_promotion(ctx: StepContext, deployed: DeployedModel) -> datetime | None:
    events = [e for e in ctx.publisher.history(ctx.spec.name) if e.environment == deployed.environment]
    promoted = [e.at for e in events if e.kind == "promote" and e.version == deployed.version]
    return max(promoted) if promoted else None


def judge(ctx: StepContext) -> tuple[MonitorReport, WindowStats, Reference]:
    """Compute the report (no side effects)."""
    spec, monitoring = ctx.spec, ctx.spec.monitoring
    if ctx.predictions is None:
        raise MonitoringError("no prediction log configured (CTPIPE_PREDICTION_LOG_URI)")
    deployed = served_model(ctx)
    run_id = deployed.run_id or ctx.tracker.model_version_run(spec.registered_model_name, deployed.version)
    reference = load_reference(ctx.tracker, spec, run_id, deployed.version)
    end = ctx.request.end
    start = end - (parse_window(ctx.request.window) if ctx.request.window else monitoring.window_delta)
    stats = scan_window(
        ctx.predictions,
        spec,
        deployed.version,
        start,
        end,
        feature_references(spec, reference),
        score_reference(spec, reference),
    )
    window = f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M})"
    if stats.all_rows == 0:
        raise NoPredictionsError(f"no predictions for {spec.name} in {window} (log {ctx.predictions.location})")
    judged = stats.rows >= monitoring.min_predictions
    why_not = (
        ""
        if judged
        else f"not judged: {stats.rows:,} predictions of v{deployed.version} in {window} < min_predictions "
        f"{monitoring.min_predictions}"
    )
    drift = drift_checks(spec, stats) if judged else []
    performance = None
    perf_monitor = next((m for m in monitoring.monitors if isinstance(m, PerformanceMonitor)), None)
    if perf_monitor is not None and ctx.labels is not None:
        from ct_pipeline.steps.monitor.performance import performance_check

        performance = performance_check(
            spec, perf_monitor, ctx.predictions, ctx.labels, deployed.version, end, reference.promise
        )
    reference_nulls = {name: float(reference.features[name].isna().mean()) for name in spec.data.features}
    found = findings(monitoring, stats, drift, reference_nulls, performance, judged, why_not)
    report = MonitorReport(
        model=spec.name,
        environment=deployed.environment,
        version=deployed.version,
        run_id=run_id,
        window_start=start,
        window_end=end,
        generated_at=ctx.clock.now(),
        predictions=stats.rows,
        versions_seen=stats.versions,
        reference=reference.uri,
        reference_rows=len(reference.features),
        volume=volume_stats(stats),
        drift=drift,
        null_rates={name: stats.null_rate(name) for name in spec.data.features},
        performance=performance,
        findings=found,
        retrain_reason=retrain_reason(found),
    )
    return report, stats, reference


def record(ctx: StepContext, report: MonitorReport, stats: WindowStats, reference: Reference) -> MonitorReport:
    """Push the numbers, then write the report locally and to MLflow (it is written even when the push fails)."""
    from ct_pipeline.steps.monitor.export import report_registry
    from ct_pipeline.steps.monitor.view import report_html, report_png

    deployed_at = None
    if ctx.metrics is not None and ctx.metrics.target:
        deployed = served_model(ctx)
        deployed_at = last_promotion(ctx, deployed)
        try:
            ctx.metrics.push(report.model, report_registry(report, deployed_at))
            alert = AlertPath(pushed=True, target=ctx.metrics.target)
        except AlertPathDown as exc:
            alert = AlertPath(pushed=False, target=ctx.metrics.target, detail=str(exc))
    else:
        alert = AlertPath(pushed=False, detail="no Pushgateway configured (CTPIPE_PUSHGATEWAY_URL): report only")
    stamp = report.generated_at.strftime("%Y%m%dT%H%M%SZ")
    folder = ctx.settings.reports_dir / report.model / stamp
    mlflow_dir = f"{tags.MONITOR_REPORTS_DIR}/{stamp}"
    report = report.model_copy(
        update={"alert_path": alert, "artifacts": [str(folder), f"runs:/{report.run_id}/{mlflow_dir}"]}
    )
    png = report_png(report, stats, reference.scores)
    files = {
        "report.json": json.dumps(report.to_json_dict(), indent=2).encode(),
        "report.html": report_html(report, png).encode(),
        "report.png": png,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / f".{name}.tmp").write_bytes(data)
        (folder / f".{name}.tmp").replace(folder / name)
    latest = folder.parent / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(folder.name)
    if report.run_id:
        ctx.tracker.log_files(report.run_id, files, mlflow_dir)
        assert report.version is not None
        ctx.tracker.set_version_tags(
            ctx.spec.registered_model_name,
            report.version,
            {
                tags.MONITOR_LAST_REPORT: f"{mlflow_dir}/report.json",
                tags.MONITOR_LAST_STATUS: (report.retrain_reason or report.summary())[:4000],
            },
        )
    return report


def monitor(ctx: StepContext) -> MonitorReport:
    report, stats, reference = judge(ctx)
    return record(ctx, report, stats, reference)
