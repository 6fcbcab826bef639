"""Typed records passed between the loop's steps (and through Airflow XCom as JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RunRequest(Record):
    """What one run of the loop was asked to do (DAG conf / CLI options), decided before any step runs."""

    end: datetime = Field(description="End of the data window (exclusive); the run's logical date")
    window: str | None = Field(default=None, description="Override of the spec's window, e.g. 14d")
    force: bool = False
    reason: str | None = Field(default=None, description="Why, with force (recorded with the promotion)")
    requested_by: str | None = None
    trigger: str | None = Field(
        default=None,
        description="Why this run was started, when an event did (e.g. the monitor's retrain reason)",
    )


class SyncResult(Record):
    """What the sync step changed so the registry follows Git (one line each)."""

    model: str
    lines: list[str]

    def summary(self) -> str:
        return "\n".join(self.lines)


class WindowSnapshot(Record):
    """The recent data window, frozen to a file so every later step sees exactly the same rows."""

    model: str
    source: str
    start: datetime
    end: datetime
    rows: int
    content_hash: str
    path: str = Field(description="Parquet file holding the window (sorted by time)")
    time_column: str
    target: str
    features: list[str]


class CandidateResult(Record):
    name: str
    kind: str
    run_id: str
    model_uri: str
    version: str = Field(description="Registered model version")
    metrics: dict[str, float]
    primary_metric: float


class TrainResult(Record):
    model: str
    snapshot: WindowSnapshot
    candidates: list[CandidateResult]
    holdout_rows: int
    train_rows: int


class ModelRef(Record):
    version: str
    run_id: str
    metric: float | None = None


class GateCheck(Record):
    name: str
    passed: bool
    detail: str
    judged: bool = True


class SliceResult(Record):
    """Champion vs challenger on the rows of one slice (column == value) of the holdout."""

    column: str
    value: str
    rows: int
    positives: int | None = None
    champion_metric: float | None = None
    challenger_metric: float | None = None
    delta: float | None = Field(default=None, description="Improvement of the challenger; negative = worse")
    judged: bool
    passed: bool
    note: str = ""


class GateDecision(Record):
    model: str
    promote: bool
    reason: str
    challenger: ModelRef
    champion: ModelRef | None = None
    metric: str
    direction: str
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    checks: list[GateCheck] = Field(default_factory=list)
    forced: bool = False
    forced_by: str | None = None
    force_reason: str | None = None
    decided_at: datetime
    snapshot: WindowSnapshot
    holdout_rows: int | None = None
    slices: list[SliceResult] = Field(default_factory=list)
    latency_p95_ms: float | None = Field(default=None, description="Challenger, single-row predict, p95")
    champion_latency_p95_ms: float | None = None
    model_size_bytes: int | None = None
    champion_model_size_bytes: int | None = None
    plots: list[str] = Field(default_factory=list, description="PNG artifact paths in the challenger's MLflow run")
    extra: dict[str, Any] = Field(default_factory=dict)


class BentoRef(Record):
    model: str
    version: str
    run_id: str
    bento_tag: str
    bento_model_tag: str
    data_hash: str
    labels: dict[str, str] = Field(default_factory=dict)
    image_repository: str | None = None
    image_tag: str | None = None
    image_digest: str | None = None


class PromotionRecord(Record):
    """A proposed change of the deployed model: on local git a branch + record file, on GitHub a pull request."""

    id: str = Field(description="<model>/v<version>")
    model: str
    version: str
    environment: str
    branch: str
    base_branch: str = "main"
    title: str
    body: str
    manifest_path: str
    commit: str | None = None
    status: Literal["open", "merged", "closed"] = "open"
    url: str | None = None
    created_at: datetime
    files: list[str] = Field(default_factory=list)


class StepOutcome(Record):
    """What a full pipeline run ended with."""

    model: str
    status: Literal["promoted", "not_promoted"]
    reason: str
    decision: GateDecision | None = None
    bento: BentoRef | None = None
    promotion: PromotionRecord | None = None


class DeployedModel(Record):
    """What a GitOps manifest (values file) on the base branch says is deployed."""

    model: str
    environment: str
    version: str
    run_id: str | None = None
    bento_tag: str | None = None
    data_hash: str | None = None
    image_repository: str | None = None
    image_tag: str | None = None
    image_digest: str | None = None
    commit: str | None = Field(default=None, description="Commit of the base branch the manifest was read at")


class ProcessInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    pid: int
    port: int
    url: str
    log: str
    started_at: datetime
    alive: bool | None = Field(default=None, description="Filled in by status()")


class ServedState(BaseModel):
    """What is served for one model (also the per-model entry of state.json)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    environment: str | None = None
    version: str
    run_id: str | None = None
    data_hash: str | None = None
    bento_tag: str
    model_server: ProcessInfo
    gateway: ProcessInfo | None = None
    started_at: datetime
    action: Literal["started", "switched", "unchanged", "repaired", "status", "stopped"] = "status"
    healthy: bool | None = None
    message: str = ""

    @property
    def gateway_url(self) -> str | None:
        return self.gateway.url if self.gateway else None
