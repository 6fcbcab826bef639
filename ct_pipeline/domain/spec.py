"""The model spec: one YAML file per model under ``models/``, validated by pydantic before anything runs."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ct_pipeline.domain.common import Strict, TaskType
from ct_pipeline.domain.monitoring import MonitoringSpec, default_monitoring, unknown_features
from ct_pipeline.errors import SpecError
from ct_pipeline.families import CandidateSpec, candidate_union

_WINDOW_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_WINDOW_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_NAME_RE = r"^[a-z0-9][a-z0-9-]{0,62}$"


def parse_window(text: str) -> timedelta:
    """'30d' -> 30 days; accepts s, m, h, d, w."""
    match = _WINDOW_RE.match(str(text))
    if not match:
        raise ValueError(f"window must look like '30d', '12h' or '2w', got {text!r}")
    amount, unit = int(match.group(1)), match.group(2)
    if amount <= 0:
        raise ValueError(f"window must be positive, got {text!r}")
    return timedelta(**{_WINDOW_UNITS[unit]: amount})


class ParquetSource(Strict):
    kind: Literal["parquet"]
    path: str = Field(description="Directory of Parquet files, hive-partitioned by date (date=YYYY-MM-DD).")


class CsvSource(Strict):
    kind: Literal["csv"]
    path: str


class SqlSource(Strict):
    kind: Literal["sql"]
    url: str = Field(description="SQLAlchemy URL")
    query: str = Field(description="SELECT with :start and :end bind parameters filtering the time column")


DataSource = Annotated[ParquetSource | CsvSource | SqlSource, Field(discriminator="kind")]


class DataSpec(Strict):
    source: DataSource
    time_column: str
    window: str = "30d"
    target: str
    features: list[str] = Field(min_length=1)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)

    @field_validator("window")
    @classmethod
    def _valid_window(cls, value: str) -> str:
        parse_window(value)
        return value

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> DataSpec:
        if self.target in self.features:
            raise ValueError(f"target {self.target!r} is also listed in features")
        if self.time_column in self.features:
            raise ValueError(f"time_column {self.time_column!r} must not be a feature")
        if len(set(self.features)) != len(self.features):
            raise ValueError("features contain duplicates")
        return self

    @property
    def window_delta(self) -> timedelta:
        return parse_window(self.window)


# The candidate kinds come from the model families (ct_pipeline.families): one module per family. Type checkers
# see their common base; pydantic sees the discriminated union of every family's config.
if TYPE_CHECKING:
    Candidate = CandidateSpec
else:
    Candidate = candidate_union()

_METRICS = {
    TaskType.binary_classification: {"roc_auc": "maximize", "average_precision": "maximize", "log_loss": "minimize"},
    TaskType.regression: {"rmse": "minimize", "mae": "minimize", "r2": "maximize"},
}


class MetricSpec(Strict):
    name: str
    direction: Literal["maximize", "minimize"] | None = None

    def resolved_direction(self) -> str:
        return self.direction or next(d for m in _METRICS.values() for n, d in m.items() if n == self.name)


class SliceGateSpec(Strict):
    columns: list[str] = Field(min_length=1, description="Columns whose values define slices (categorical-like).")
    max_degradation: float = Field(default=0.02, ge=0.0, description="Largest allowed loss of the metric per slice.")
    min_rows: int = Field(default=200, ge=1, description="Smaller slices are reported, not judged.")
    min_positives: int = Field(default=10, ge=1, description="Classification: fewer positives -> not judged.")
    max_values: int = Field(default=20, ge=1, le=200, description="A column with more distinct values is refused.")


class GateSpec(Strict):
    mode: Literal["superiority", "non_inferiority"] = "superiority"
    min_improvement: float = Field(default=0.0, ge=0.0, description="Required gain of the primary metric.")
    non_inferiority_margin: float = Field(default=0.005, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000)
    seed: int = 0
    slices: SliceGateSpec | None = None
    max_latency_p95_ms: float | None = Field(default=None, gt=0, description="Single-row predict latency limit.")
    latency_samples: int = Field(default=200, ge=20, le=10_000)
    max_model_size_mb: float | None = Field(default=None, gt=0)


class GitOpsSpec(Strict):
    environment: str = Field(default="staging", pattern=_NAME_RE)
    remote: str | None = Field(default=None, description="Remote URL/path; default: CTPIPE_GITOPS_REMOTE.")
    manifest: str | None = Field(default=None, description="Values file path; default apps/<env>/<model>/values.yaml")
    base_branch: str = "main"


class ModelSpec(Strict):
    name: str = Field(pattern=_NAME_RE, description="Model name: lowercase letters, digits, dashes.")
    description: str = ""
    task: TaskType = TaskType.binary_classification
    schedule: str | None = "@daily"
    data: DataSpec
    candidates: list[Candidate] = Field(min_length=1)
    metric: MetricSpec
    gate: GateSpec = GateSpec()
    gitops: GitOpsSpec = GitOpsSpec()
    monitoring: MonitoringSpec = Field(default_factory=default_monitoring)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        if self.gate.slices:
            clash = set(self.gate.slices.columns) & {self.data.target, self.data.time_column}
            if clash:
                raise ValueError(f"gate.slices.columns must not include the target or time column: {sorted(clash)}")
        allowed = _METRICS[self.task]
        if self.metric.name not in allowed:
            raise ValueError(
                f"metric.name {self.metric.name!r} is not available for task {self.task}: {sorted(allowed)}"
            )
        unknown = unknown_features(self.monitoring, self.data.features)
        if unknown:
            where, name = unknown[0]
            raise ValueError(f"{where}: unknown feature {name!r} (the model's features: {self.data.features})")
        for i, monitor in enumerate(self.monitoring.monitors):
            metric = getattr(monitor, "metric", None)
            if metric is not None and metric not in allowed:
                raise ValueError(f"monitoring.monitors.{i}.metric: {metric!r} is not available for {self.task}")
        return self

    @property
    def registered_model_name(self) -> str:
        return self.name

    @property
    def manifest_path(self) -> str:
        return self.gitops.manifest or f"apps/{self.gitops.environment}/{self.name}/values.yaml"

    @property
    def direction(self) -> str:
        return self.metric.resolved_direction()


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"invalid model spec {source}:"]
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  - {field}: {err['msg']}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> ModelSpec:
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc)) from None


def load_spec(path: str | Path) -> ModelSpec:
    from ruamel.yaml import YAML, YAMLError

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"model spec not found: {path}")
    try:
        data = YAML(typ="safe").load(path.read_text())
    except YAMLError as exc:
        raise SpecError(f"model spec {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"model spec {path} must be a mapping, got {type(data).__name__}")
    monitors = monitors_file(path)
    if monitors.is_file():
        if "monitoring" in data:
            raise SpecError(f"model spec {path}: monitors declared both in its monitoring: section and in {monitors}")
        try:
            data = {**data, "monitoring": YAML(typ="safe").load(monitors.read_text()) or {}}
        except YAMLError as exc:
            raise SpecError(f"monitors file {monitors} is not valid YAML: {exc}") from None
    spec = parse_spec(data, str(path) + (f" (+ {monitors})" if monitors.is_file() else ""))
    if path.stem != spec.name:
        raise SpecError(f"model spec {path}: file name must match name {spec.name!r} ({spec.name}.yaml)")
    return spec


def monitors_file(spec_path: str | Path) -> Path:
    """``monitors/<model>.yaml`` beside the models directory: the other home of a model's monitoring section."""
    spec_path = Path(spec_path)
    return spec_path.resolve().parent.parent / "monitors" / f"{spec_path.stem}.yaml"


def discover_specs(models_dir: str | Path) -> list[Path]:
    return sorted(Path(models_dir).glob("*.yaml"))


def find_spec(models_dir: str | Path, name: str) -> ModelSpec:
    path = Path(models_dir) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in discover_specs(models_dir)) or "none"
        raise SpecError(f"no model spec named {name!r} in {models_dir} (known: {known})")
    return load_spec(path)
