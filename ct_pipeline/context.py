"""The one context a run's steps receive: the spec, the settings, what was asked, and every port.

Built once per run by :func:`ct_pipeline.wiring.build_context` (or by the tests from the fakes in
:mod:`ct_pipeline.testing`). The image engine and its registry are resolved on first use, because finding a
container engine probes sockets and CLIs that only the package step needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from ct_pipeline.domain.records import RunRequest
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.ports import (
    BentoStore,
    Clock,
    DataReader,
    GitPublisher,
    ImageEngine,
    ImageRegistry,
    LabelsReader,
    MetricsPusher,
    PredictionLogReader,
    RetrainTrigger,
    Runtime,
    Tracker,
)
from ct_pipeline.settings import Settings


@dataclass
class StepContext:
    spec: ModelSpec
    settings: Settings
    request: RunRequest
    publisher: GitPublisher
    tracker: Tracker
    data: DataReader
    bentos: BentoStore
    runtime: Runtime
    clock: Clock
    # None: Bento only (CTPIPE_IMAGE_ENGINE=none). The factory raises EngineUnavailable saying why.
    engine_factory: Callable[[], ImageEngine] | None = None
    image_registry_factory: Callable[[], ImageRegistry] | None = None
    # The feedback half (the monitor DAG / `ctpipe monitor`); None where a run does not need them.
    predictions: PredictionLogReader | None = None
    labels: LabelsReader | None = None
    metrics: MetricsPusher | None = None
    retrain: RetrainTrigger | None = None
    notes: list[str] = field(default_factory=list)

    @cached_property
    def image_engine(self) -> ImageEngine | None:
        return self.engine_factory() if self.engine_factory is not None else None

    def image_registry(self) -> ImageRegistry:
        if self.image_registry_factory is None:
            raise RuntimeError("no image registry configured in this context")
        return self.image_registry_factory()
