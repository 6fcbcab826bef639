"""The monitor's report: a typed record (JSON schema in ``schemas/monitor-report.schema.json``), and the
Prometheus metric names it is exported under, so the dashboard, the alert rules and the report read the same
numbers. No I/O here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from ct_pipeline.domain.records import Record

# -- Prometheus metric names (pushed by the monitor job with grouping key {job, model}; the gateway's own
# ct_gateway_* metrics are scraped). Alert rules and the Grafana dashboard are generated from these names.
METRIC_PREFIX = "ct_monitor"
M_DRIFT = f"{METRIC_PREFIX}_drift_statistic"  # {model, monitor, feature, statistic}
M_DRIFT_THRESHOLD = f"{METRIC_PREFIX}_drift_threshold"  # {model, monitor, feature, statistic}
M_BREACH = f"{METRIC_PREFIX}_breach"  # {model, monitor, kind, subject, action, severity}: 1 breached, 0 not
M_FINDING = f"{METRIC_PREFIX}_finding_info"  # {model, monitor, subject, detail}: 1 per breach, the report's words
M_NULL_RATE = f"{METRIC_PREFIX}_null_rate"  # {model, feature}
M_PREDICTIONS = f"{METRIC_PREFIX}_window_predictions"  # {model}: rows in the judged window
M_VOLUME_PER_HOUR = f"{METRIC_PREFIX}_predictions_per_hour"  # {model}: mean over the window
M_REALIZED = f"{METRIC_PREFIX}_realized_metric"  # {model, metric, bound=value|ci_low|ci_high}
M_PROMISED = f"{METRIC_PREFIX}_promised_metric"  # {model, metric, bound=value|ci_low|ci_high}
M_LABELS = f"{METRIC_PREFIX}_matured_labels"  # {model}
M_LAST_PROMOTION = f"{METRIC_PREFIX}_last_promotion_timestamp_seconds"  # {model}
M_LAST_REPORT = f"{METRIC_PREFIX}_last_report_timestamp_seconds"  # {model}
M_MODEL_VERSION = f"{METRIC_PREFIX}_model_info"  # {model, version, run_id}: 1
PUSH_JOB = "ct_monitor"


class DriftCheck(Record):
    """One feature (or the score) of the recent window against the reference."""

    monitor: str
    feature: str = Field(description="Feature name, or 'prediction' for score drift")
    kind: Literal["numeric", "categorical"]
    statistic: str
    value: float
    threshold: float = Field(description="Critical value at these sample sizes (or the spec's fixed cut-off)")
    p_value: float | None = None
    n: int = Field(description="Current rows used")
    reference_n: int
    drifted: bool
    null_rate: float = 0.0
    reference_null_rate: float = 0.0


class PerformanceCheck(Record):
    """The realized metric on matured labels, next to what the gate promised at promotion."""

    monitor: str
    metric: str
    matured_until: datetime = Field(description="Predictions before this are old enough for their labels")
    labels: int = Field(description="Predictions joined with a label")
    unlabeled: int = Field(default=0, description="Matured predictions without a label (yet)")
    positives: int | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    promised: float | None = Field(default=None, description="The champion's metric on the gate's holdout")
    promised_ci_low: float | None = None
    promised_ci_high: float | None = None
    judged: bool = False
    breached: bool = False
    detail: str = ""


class Finding(Record):
    """One monitor's verdict, in a line a person reads (and the alert/retrain reason)."""

    monitor: str
    kind: str
    subject: str = Field(description="What breached: a feature, 'prediction', 'volume', a metric...")
    breached: bool
    judged: bool = True
    action: Literal["alert", "retrain"] = "alert"
    severity: str = "warning"
    detail: str


class VolumeStats(Record):
    hours: int
    per_hour_mean: float
    per_hour_min: float
    per_hour_max: float
    requests: int


class AlertPath(Record):
    """Whether the numbers reached the alerting side (the report is written either way)."""

    pushed: bool
    target: str | None = None
    detail: str = ""


class MonitorReport(Record):
    model: str
    environment: str
    version: str | None = Field(default=None, description="The champion (what Git deploys) the report judges")
    run_id: str | None = None
    window_start: datetime
    window_end: datetime
    generated_at: datetime
    predictions: int = Field(description="Logged prediction rows in the window")
    versions_seen: dict[str, int] = Field(default_factory=dict, description="Rows per served model version")
    reference: str = Field(default="", description="Where the reference came from (MLflow artifact URI)")
    reference_rows: int = 0
    volume: VolumeStats | None = None
    drift: list[DriftCheck] = Field(default_factory=list)
    null_rates: dict[str, float] = Field(default_factory=dict)
    performance: PerformanceCheck | None = None
    findings: list[Finding] = Field(default_factory=list)
    retrain_reason: str | None = Field(default=None, description="Set when a breach configured to retrain fired")
    alert_path: AlertPath | None = None
    artifacts: list[str] = Field(default_factory=list, description="Where the report was written / logged")
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def breaches(self) -> list[Finding]:
        return [f for f in self.findings if f.breached]

    @property
    def retrain_wanted(self) -> bool:
        return any(f.breached and f.action == "retrain" for f in self.findings)

    def summary(self) -> str:
        window = f"[{self.window_start:%Y-%m-%d %H:%M}, {self.window_end:%Y-%m-%d %H:%M})"
        head = f"{self.model} v{self.version or '?'}: {self.predictions:,} predictions in {window}"
        if not self.breaches:
            return f"{head}: no breach"
        return f"{head}: " + "; ".join(f.detail for f in self.breaches)


class RetrainRequest(Record):
    """What the monitor (or the alert bridge) asked of the training DAG, and whether it was sent."""

    model: str
    reason: str
    requested_at: datetime
    source: Literal["monitor", "alertmanager", "data", "cli"] = "monitor"
    sent: bool = False
    suppressed: str | None = Field(default=None, description="Why not sent: cooldown, open promotion, no breach")
    asset: str | None = None
    event_id: int | None = None
