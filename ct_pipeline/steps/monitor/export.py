"""The report as Prometheus metrics (pushed with grouping key {job, model}): the alert rules and the dashboard
read these, so they judge the very numbers the report shows."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge

from ct_pipeline.domain import monitor_report as m
from ct_pipeline.domain.monitor_report import MonitorReport


def report_registry(report: MonitorReport, last_promotion: datetime | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    model = report.model

    def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
        return Gauge(name, doc, ["model", *labels], registry=registry)

    info = gauge(m.M_MODEL_VERSION, "The model version the report judged", ["version", "run_id"])
    info.labels(model, report.version or "", report.run_id or "").set(1)
    gauge(m.M_PREDICTIONS, "Logged predictions in the judged window", []).labels(model).set(report.predictions)
    gauge(m.M_LAST_REPORT, "When the last monitor report was made", []).labels(model).set(
        report.generated_at.timestamp()
    )
    if report.volume is not None:
        gauge(m.M_VOLUME_PER_HOUR, "Mean predictions per hour in the window", []).labels(model).set(
            report.volume.per_hour_mean
        )
    drift = gauge(
        m.M_DRIFT, "Drift statistic of a feature (or the score) vs the reference", ["monitor", "feature", "statistic"]
    )
    threshold = gauge(m.M_DRIFT_THRESHOLD, "Critical value of the drift statistic", ["monitor", "feature", "statistic"])
    for check in report.drift:
        drift.labels(model, check.monitor, check.feature, check.statistic).set(check.value)
        threshold.labels(model, check.monitor, check.feature, check.statistic).set(check.threshold)
    nulls = gauge(m.M_NULL_RATE, "Share of null values per feature in the window", ["feature"])
    for feature, rate in report.null_rates.items():
        nulls.labels(model, feature).set(rate)
    breach = gauge(
        m.M_BREACH,
        "1 when a monitor's subject is breached, 0 when it holds",
        ["monitor", "kind", "subject", "action", "severity"],
    )
    # The breach series keep a stable identity (no numbers in labels); the words go in a separate info series
    # the alert rules read into their reason annotation, so an alert says what the report says.
    words = gauge(m.M_FINDING, "The report's line for each breach", ["monitor", "subject", "detail"])
    for finding in report.findings:
        if finding.judged:
            breach.labels(model, finding.monitor, finding.kind, finding.subject, finding.action, finding.severity).set(
                1 if finding.breached else 0
            )
        if finding.breached:
            words.labels(model, finding.monitor, finding.subject, finding.detail[:500]).set(1)
    perf = report.performance
    if perf is not None and perf.judged:
        realized = gauge(m.M_REALIZED, "Realized metric on matured labels", ["metric", "bound"])
        for bound, value in (("value", perf.value), ("ci_low", perf.ci_low), ("ci_high", perf.ci_high)):
            if value is not None:
                realized.labels(model, perf.metric, bound).set(value)
        gauge(m.M_LABELS, "Matured predictions joined with a label", []).labels(model).set(perf.labels)
    if perf is not None:
        promised = gauge(m.M_PROMISED, "The metric the gate promised at promotion", ["metric", "bound"])
        for bound, value in (
            ("value", perf.promised),
            ("ci_low", perf.promised_ci_low),
            ("ci_high", perf.promised_ci_high),
        ):
            if value is not None:
                promised.labels(model, perf.metric, bound).set(value)
    if last_promotion is not None:
        gauge(m.M_LAST_PROMOTION, "When the served model was promoted", []).labels(model).set(
            last_promotion.timestamp()
        )
    return registry
