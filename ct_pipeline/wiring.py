"""Builds the one :class:`~ct_pipeline.context.StepContext` of a run from the settings: every adapter, once.

The publisher is chosen by the remote's URL (a GitHub repository -> pull requests through PyGithub; anything
else -> the git CLI); the image engine is probed only when the package step first asks for it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ct_pipeline.context import StepContext
from ct_pipeline.domain.records import RunRequest
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.domain.window import default_end
from ct_pipeline.ports import GitPublisher, Tracker
from ct_pipeline.settings import Settings


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def make_tracker(settings: Settings) -> Tracker:
    from ct_pipeline.adapters.mlflow import MlflowTracker

    settings.paths.home_dir.mkdir(parents=True, exist_ok=True)  # the embedded sqlite store lives there
    return MlflowTracker(settings.tracking_uri, settings.registry_uri)


def make_publisher(settings: Settings, spec: ModelSpec | None = None) -> GitPublisher:
    from ct_pipeline.adapters.publishers import publisher_for

    return publisher_for(settings, spec)


def build_context(
    spec: ModelSpec,
    settings: Settings,
    request: RunRequest | None = None,
    *,
    publisher: GitPublisher | None = None,
    tracker: Tracker | None = None,
) -> StepContext:
    """The context for one run of ``spec``; ``publisher`` / ``tracker`` reuse ones already built (the CLI
    shares one tracker across the specs it touches)."""
    from ct_pipeline.adapters.bento import BentoMLStore
    from ct_pipeline.adapters.data_sources import SourceReader
    from ct_pipeline.adapters.engines import select_engine
    from ct_pipeline.adapters.local_runtime import LocalRuntime
    from ct_pipeline.adapters.oci_registry import Registry

    tracker = tracker or make_tracker(settings)
    image = settings.image
    return StepContext(
        spec=spec,
        settings=settings,
        request=request or RunRequest(end=default_end()),
        publisher=publisher or make_publisher(settings, spec),
        tracker=tracker,
        data=SourceReader(settings.paths.data_root),
        bentos=BentoMLStore(settings, tracker),
        runtime=LocalRuntime(settings),
        clock=SystemClock(),
        engine_factory=None if image.engine == "none" else (lambda: select_engine(settings)),
        image_registry_factory=lambda: Registry(image.registry, image.registry_insecure),
        **feedback_ports(settings),
    )


def feedback_ports(settings: Settings) -> dict[str, Any]:
    """The monitor's ports: the prediction log, the labels, the Pushgateway and Airflow.

    The Pushgateway is ``CTPIPE_PUSHGATEWAY_URL``, else the running local alerting stack's (``ctpipe monitoring
    up``); the retrain trigger is ``CTPIPE_AIRFLOW_API_URL``, else the running local Airflow (``ctpipe airflow
    up``). Neither -> None. Finding the local ones reads their state files and checks pids: no network.
    """
    from ct_pipeline.adapters.airflow_api import AirflowAPI
    from ct_pipeline.adapters.labels import LabelsSourceReader
    from ct_pipeline.adapters.local_airflow import airflow_settings
    from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack
    from ct_pipeline.adapters.prediction_log import ParquetPredictionLog
    from ct_pipeline.adapters.prometheus import Pushgateway

    pushgateway_url = settings.monitoring.pushgateway_url
    if not pushgateway_url:
        local = LocalMonitoringStack(settings).endpoints()
        pushgateway_url = local.pushgateway_url if local else None
    airflow = airflow_settings(settings)
    return {
        "predictions": ParquetPredictionLog(settings.prediction_log_uri),
        "labels": LabelsSourceReader(settings.paths.data_root),
        "metrics": Pushgateway(pushgateway_url) if pushgateway_url else None,
        "retrain": AirflowAPI(airflow) if airflow is not None else None,
    }
