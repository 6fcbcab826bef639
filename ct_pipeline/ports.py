"""Every port of the loop, in one place: what a step needs from the outside world, as Protocols.

Adapters (``ct_pipeline.adapters``) implement them thinly, one adapter per external system; the fakes in
``ct_pipeline.testing`` implement them in memory for unit tests. Steps see only these types, through
:class:`ct_pipeline.context.StepContext`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from prometheus_client import CollectorRegistry

    from ct_pipeline.domain.history import GitOpsEvent
    from ct_pipeline.domain.monitoring import LabelsSource
    from ct_pipeline.domain.records import (
        BentoRef,
        DeployedModel,
        GateDecision,
        ModelRef,
        PromotionRecord,
        ServedState,
    )
    from ct_pipeline.domain.spec import DataSource, ModelSpec


@runtime_checkable
class GitPublisher(Protocol):
    """Where promotions are proposed, merged and reverted: local git (a branch) or GitHub (a pull request)."""

    base_branch: str

    @property
    def remote_url(self) -> str: ...

    def read_file(self, path: str, ref: str | None = None) -> str | None:
        """The file at ``ref`` (branch or commit; default the base branch), or None if it does not exist."""
        ...

    def head(self, ref: str | None = None) -> str:
        """Commit sha of branch ``ref`` (default the base branch)."""
        ...

    def open_promotion(self, record: PromotionRecord, files: Mapping[str, bytes]) -> PromotionRecord:
        """Propose ``files`` on the promotion's branch, started from the current base; re-opening the
        same id replaces that branch's content (one branch per id, never two)."""
        ...

    def list_promotions(self, model: str | None = None) -> list[PromotionRecord]: ...

    def get_promotion(self, promotion_id: str) -> PromotionRecord | None: ...

    def merge_promotion(self, promotion_id: str) -> str:
        """Merge into the base branch; returns the merge commit."""
        ...

    def close_promotion(self, promotion_id: str) -> PromotionRecord:
        """Decline an open promotion without merging it (re-opening the id opens it again)."""
        ...

    def revert_last_promotion(self, model: str, environment: str) -> str:
        """Revert the newest not yet reverted promotion of ``model`` in ``environment``."""
        ...

    def history(self, model: str | None = None) -> list[GitOpsEvent]:
        """Promotions and their reverts on the base branch, newest first."""
        ...


@runtime_checkable
class ModelRegistry(Protocol):
    """The registry half of MLflow: aliases, tags, versions, loading a version."""

    def get_alias(self, model: str, alias: str) -> ModelRef | None: ...
    def set_alias(self, model: str, alias: str, version: str) -> None: ...
    def delete_alias(self, model: str, alias: str) -> None: ...
    def set_version_tags(self, model: str, version: str, tags: Mapping[str, str]) -> None: ...
    def get_version_tags(self, model: str, version: str) -> dict[str, str]: ...
    def version_exists(self, model: str, version: str) -> bool: ...
    def versions_tagged(self, model: str, key: str, value: str) -> list[str]: ...
    def set_model_tag(self, model: str, key: str, value: str) -> None: ...
    def load_pyfunc(self, model: str, version: str) -> Any: ...


@runtime_checkable
class Tracker(ModelRegistry, Protocol):
    """All of MLflow the loop uses: experiments and runs (tracking) plus the registry, one store."""

    tracking_uri: str

    def ensure_experiment(self, name: str, artifact_location: str) -> str: ...

    def start_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> AbstractContextManager[str]:
        """A run that the ``log_*`` calls below write to until the context ends; yields the run id."""
        ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float]) -> None: ...
    def dataset(self, frame: pd.DataFrame, *, source: str, targets: str, name: str) -> Any:
        """A dataset handle for ``frame`` (hashed once, logged to many runs)."""
        ...

    def log_dataset(self, dataset: Any, context: str) -> None: ...

    def log_model(
        self,
        flavor: str,
        model: Any,
        *,
        registered_model_name: str,
        input_example: pd.DataFrame,
        output_example: Any,
        pip_requirements: list[str],
        **flavor_options: Any,
    ) -> str:
        """Log ``model`` with ``mlflow.<flavor>`` in the active run and register it; returns the new version."""
        ...

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_path: str) -> None: ...
    def log_files(self, run_id: str, files: Mapping[str, bytes], artifact_dir: str) -> None: ...
    def read_artifact(self, run_id: str, artifact_path: str) -> bytes: ...
    def input_dtypes(self, model_dir: Path) -> dict[str, str] | None:
        """Column -> dtype from a downloaded model's signature (None when it has no named signature)."""
        ...

    def download_model(self, model: str, version: str, dst: Path) -> Path:
        """The registered version's model directory, copied under ``dst`` (for packaging)."""
        ...

    def model_version_run(self, model: str, version: str) -> str:
        """Run id of a registered version; raises RegistryError naming the store when it does not exist."""
        ...


@runtime_checkable
class DataReader(Protocol):
    """Reads ``[start, end)`` of a spec's data source (filters pushed down where the source can)."""

    def read(self, source: DataSource, spec: ModelSpec, start: datetime, end: datetime) -> tuple[pd.DataFrame, str]:
        """The rows and a URI naming where they came from (passwords hidden)."""
        ...


@runtime_checkable
class BentoStore(Protocol):
    """BentoML: package an approved model version as a Bento, find a built one."""

    def build(self, spec: ModelSpec, decision: GateDecision) -> BentoRef: ...
    def path_of(self, bento_tag: str) -> Path | None: ...


@runtime_checkable
class ImageEngine(Protocol):
    """A container engine that builds an image from a context and pushes it to a registry."""

    name: str

    def describe(self) -> str: ...

    def build(
        self, context: Path, dockerfile: str, ref: str, labels: Mapping[str, str], annotations: Mapping[str, str]
    ) -> None: ...

    def labels(self, ref: str) -> dict[str, str] | None:
        """Labels of the local image ``ref``, None when there is none."""
        ...

    def push(self, ref: str, insecure: bool) -> None: ...


@runtime_checkable
class ImageRegistry(Protocol):
    """An OCI distribution registry, read through its HTTP API (digests and labels of pushed images)."""

    base_url: str
    insecure: bool

    def check(self) -> None: ...
    def digest(self, repository: str, reference: str) -> str | None: ...
    def labels(self, repository: str, reference: str) -> dict[str, str] | None: ...
    def close(self) -> None: ...


@runtime_checkable
class Runtime(Protocol):
    """Something that serves desired models: local processes here, Kubernetes (through Flux) in production."""

    def apply(self, desired: DeployedModel) -> ServedState:
        """Make ``desired`` the served version of its model (no-op when it already is)."""
        ...

    def status(self) -> list[ServedState]:
        """What is served now, with liveness."""
        ...

    def stop(self, model: str | None = None) -> list[ServedState]:
        """Stop one model (or all); returns what was stopped."""
        ...


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime: ...


__all__ = [
    "BentoStore",
    "Clock",
    "DataReader",
    "GitPublisher",
    "ImageEngine",
    "ImageRegistry",
    "ModelRegistry",
    "Runtime",
    "Tracker",
]


# -- the feedback half: what the monitor reads and where its numbers and requests go


@runtime_checkable
class PredictionLogReader(Protocol):
    """The gateway's prediction log (Parquet by hour, local or on an object store), read as a stream."""

    @property
    def location(self) -> str: ...

    def scan(
        self, model: str, start: datetime, end: datetime, features: Sequence[str], batch_size: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        """Batches of the rows logged for ``model`` with ``start <= ts < end``: columns ``ts``, ``request_id``,
        ``row``, ``version``, ``prediction`` and one column per feature (flattened from the ``features`` struct).
        Yields nothing when there is no log (the caller words the error)."""
        ...


@runtime_checkable
class LabelsReader(Protocol):
    """Outcomes that arrive later than the predictions (Parquet or SQL), keyed by request id or entity."""

    def read(self, source: LabelsSource, start: datetime, end: datetime) -> pd.DataFrame:
        """The labels for predictions made in [start, end): the key column(s) and the label column.
        Raises DataError naming a missing column."""
        ...


@runtime_checkable
class MetricsPusher(Protocol):
    """Where the monitor's numbers go for dashboards and alert rules (a Prometheus Pushgateway)."""

    @property
    def target(self) -> str | None: ...

    def push(self, model: str, registry: CollectorRegistry) -> None:
        """Replace this model's group of monitor metrics. Raises AlertPathDown naming the URL."""
        ...


@runtime_checkable
class RetrainTrigger(Protocol):
    """Airflow's data-aware scheduling: an asset event starts the model's training DAG."""

    @property
    def target(self) -> str | None: ...

    def last_event(self, asset_uri: str) -> datetime | None:
        """When the newest event of this asset was recorded, None if never."""
        ...

    def post_event(self, asset_uri: str, extra: Mapping[str, Any]) -> int:
        """Record one asset event carrying ``extra`` (the reason); returns its id."""
        ...
