"""Monitoring as code: what to watch on the served model, how to judge it, and what a breach does.

Declared in the spec's ``monitoring:`` section or in ``monitors/<model>.yaml`` (reviewed in Git like any other
change). The same section generates the monitor DAG, the report's checks, the Prometheus alert rules and the
Grafana dashboard, so what a dashboard shows and what an alert fires on are the same numbers. No I/O here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ct_pipeline.domain.common import Strict

Action = Literal["alert", "retrain"]  # retrain = alert and request retraining (deduplicated, cooled down)
Severity = Literal["info", "warning", "critical"]
NumericStatistic = Literal["psi", "ks", "js", "wasserstein"]
CategoricalStatistic = Literal["psi", "chi2", "js"]


def _window(value: str) -> str:
    from ct_pipeline.domain.spec import parse_window

    parse_window(value)
    return value


class _Monitor(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Unique per model; names the alert.")
    on_breach: Action = "alert"
    severity: Severity = "warning"


class FeatureDriftMonitor(_Monitor):
    """Per-feature drift of the logged requests against the champion's training snapshot."""

    kind: Literal["feature_drift"]
    features: list[str] | None = Field(default=None, description="Default: every feature of the spec.")
    categorical: list[str] | None = Field(
        default=None, description="Features judged as categories; default: inferred (few distinct integer values)."
    )
    numeric_statistic: NumericStatistic = "psi"
    categorical_statistic: CategoricalStatistic = "chi2"
    false_alarm_rate: float = Field(
        default=0.05, gt=0.0, lt=0.5, description="Family-wise, over the monitor's features (Bonferroni)."
    )
    threshold: float | None = Field(
        default=None, gt=0.0, description="Fixed cut-off; default: the critical value at the window's sample size."
    )
    min_effect: float | None = Field(default=None, ge=0.0, description="Practical floor under the calibrated cut-off.")
    bins: int = Field(default=10, ge=2, le=100)


class ScoreDriftMonitor(_Monitor):
    """Drift of the served scores against the gate's holdout predictions of the same model."""

    kind: Literal["score_drift"]
    statistic: NumericStatistic = "psi"
    false_alarm_rate: float = Field(default=0.05, gt=0.0, lt=0.5)
    threshold: float | None = Field(default=None, gt=0.0)
    min_effect: float | None = Field(default=None, ge=0.0)
    bins: int = Field(default=10, ge=2, le=100)


class VolumeMonitor(_Monitor):
    """Predictions per hour: a silent client or a flood is as much a failure as drift."""

    kind: Literal["volume"]
    min_per_hour: float | None = Field(default=None, ge=0.0)
    max_per_hour: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _bounds(self) -> VolumeMonitor:
        if self.min_per_hour is None and self.max_per_hour is None:
            raise ValueError("a volume monitor needs min_per_hour or max_per_hour")
        if self.min_per_hour is not None and self.max_per_hour is not None and self.min_per_hour > self.max_per_hour:
            raise ValueError("min_per_hour must not exceed max_per_hour")
        return self


class NullRateMonitor(_Monitor):
    """Share of missing values per feature in the logged requests."""

    kind: Literal["null_rate"]
    features: list[str] | None = None
    max_rate: float = Field(default=0.05, ge=0.0, le=1.0, description="Largest allowed share of nulls.")
    max_increase: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Largest allowed rise over the reference's null rate."
    )


class LabelsSource(Strict):
    """Where the outcomes arrive, later than the predictions, keyed by request id (or entity and time)."""

    kind: Literal["parquet", "sql"]
    path: str | None = Field(default=None, description="parquet: directory or file (relative to CTPIPE_DATA_DIR)")
    url: str | None = Field(default=None, description="sql: SQLAlchemy URL")
    query: str | None = Field(default=None, description="sql: SELECT with :start and :end bind parameters")
    key: str = Field(default="request_id", description="Join key: the gateway's request id, or an entity column.")
    row: str | None = Field(
        default="row", description="Row index within the request (multi-row requests); None: one label per request."
    )
    label: str = Field(description="The outcome column.")
    time_column: str | None = Field(default=None, description="With an entity key: the event time to join on.")

    @model_validator(mode="after")
    def _located(self) -> LabelsSource:
        if self.kind == "parquet" and not self.path:
            raise ValueError("a parquet labels source needs path")
        if self.kind == "sql" and not (self.url and self.query):
            raise ValueError("a sql labels source needs url and query")
        return self


class PerformanceMonitor(_Monitor):
    """The realized metric once labels have matured, with its CI, next to what the gate promised."""

    kind: Literal["performance"]
    labels: LabelsSource
    delay: str = Field(default="1d", description="How long labels take to mature; younger predictions are not judged.")
    metric: str | None = Field(default=None, description="Default: the spec's gate metric.")
    min_labels: int = Field(default=200, ge=10)
    tolerance: float = Field(
        default=0.0, ge=0.0, description="Breach when the realized CI's upper end is below the gate's CI low - this."
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)

    @field_validator("delay")
    @classmethod
    def _valid_delay(cls, value: str) -> str:
        return _window(value)


class SloMonitor(_Monitor):
    """Serving SLOs, evaluated by Prometheus on the gateway's own metrics (alert rules only)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: Literal["slo"]
    latency_p99_ms: float | None = Field(default=None, gt=0.0)
    error_rate: float | None = Field(default=None, gt=0.0, lt=1.0)
    for_: str = Field(default="5m", alias="for", description="How long the breach must last before it fires.")


class StaleModelMonitor(_Monitor):
    """No promotion for too long: the model is aging even if no statistic has caught it yet."""

    kind: Literal["stale_model"]
    max_age: str = "30d"

    @field_validator("max_age")
    @classmethod
    def _valid_age(cls, value: str) -> str:
        return _window(value)


Monitor = Annotated[
    FeatureDriftMonitor
    | ScoreDriftMonitor
    | VolumeMonitor
    | NullRateMonitor
    | PerformanceMonitor
    | SloMonitor
    | StaleModelMonitor,
    Field(discriminator="kind"),
]


class MonitoringSpec(Strict):
    schedule: str | None = Field(default="@hourly", description="The monitor DAG's schedule.")
    window: str = Field(default="24h", description="The recent prediction window each report judges.")
    min_predictions: int = Field(default=100, ge=1, description="Fewer logged rows: the report says so, judges none.")
    cooldown: str = Field(default="12h", description="At most one retrain request per model in this time.")
    monitors: list[Monitor] = Field(default_factory=list)

    @field_validator("window", "cooldown")
    @classmethod
    def _valid_windows(cls, value: str) -> str:
        return _window(value)

    @model_validator(mode="after")
    def _unique(self) -> MonitoringSpec:
        kinds = [m.kind for m in self.monitors]
        if kinds.count("stale_model") > 1:
            raise ValueError("at most one stale_model monitor")
        names = [m.name for m in self.monitors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"monitor names must be unique, repeated: {dupes}")
        return self

    @property
    def window_delta(self) -> timedelta:
        from ct_pipeline.domain.spec import parse_window

        return parse_window(self.window)

    @property
    def cooldown_delta(self) -> timedelta:
        from ct_pipeline.domain.spec import parse_window

        return parse_window(self.cooldown)

    def of_kind(self, kind: str) -> list[Monitor]:
        return [m for m in self.monitors if m.kind == kind]


def default_monitoring() -> MonitoringSpec:
    """What a spec without a ``monitoring:`` section gets: drift of every feature and of the score, alert only."""
    return MonitoringSpec(
        monitors=[
            FeatureDriftMonitor(name="feature-drift", kind="feature_drift"),
            ScoreDriftMonitor(name="score-drift", kind="score_drift"),
        ]
    )


def unknown_features(monitoring: MonitoringSpec, features: list[str]) -> list[tuple[str, str]]:
    """(field path, name) of every feature a monitor names that the model does not have."""
    known = set(features)
    problems = []
    for i, monitor in enumerate(monitoring.monitors):
        for field in ("features", "categorical"):
            for name in getattr(monitor, field, None) or []:
                if name not in known:
                    problems.append((f"monitoring.monitors.{i}.{field}", name))
    return problems
