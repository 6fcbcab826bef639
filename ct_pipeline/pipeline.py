"""The loop, one plain function per step; the Airflow tasks, the CLI and the tests call these same functions.

pull -> train -> gate -> package -> promote, preceded by ``sync`` (the registry follows Git).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from ct_pipeline.domain.records import (
    BentoRef,
    GateDecision,
    PromotionRecord,
    StepOutcome,
    TrainResult,
    WindowSnapshot,
)
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.settings import Settings, configure_environment

STEPS = ("sync", "pull", "train", "gate", "package", "promote")


def publisher_for(spec: ModelSpec, settings: Settings):
    from ct_pipeline.gitops import default_publisher

    return default_publisher(settings, spec)


def registry_for(settings: Settings):
    from ct_pipeline.registry import MlflowRegistry

    configure_environment(settings)
    return MlflowRegistry(settings.tracking_uri)


def production_history(publisher, spec: ModelSpec, limit: int = 40):
    """Which version the base branch deployed when, and which promotions were reverted, read from Git."""
    from ct_pipeline.domain.manifest import read_deployed
    from ct_pipeline.registry import ProductionPeriod

    events = [e for e in publisher.history(spec.name) if e.environment == spec.gitops.environment][:limit]
    periods: list[ProductionPeriod] = []
    rolled_back: dict[str, str] = {}
    for event in sorted(events, key=lambda e: e.at):
        text = publisher.read_file(spec.manifest_path, ref=event.commit)
        deployed = read_deployed(text, spec) if text else None
        if periods:
            periods[-1] = replace(periods[-1], until=event.at)
        periods.append(
            ProductionPeriod(deployed.version if deployed else None, event.at, None, event.commit, event.kind)
        )
        if event.kind == "promote" and event.reverted_by:
            rolled_back[event.version] = event.reverted_by
    return periods, rolled_back


def step_sync(spec: ModelSpec, settings: Settings) -> str:
    """Make the registry follow the GitOps base branch: champion alias, production history, rolled-back marks."""
    from ct_pipeline.gitops import deployed_model
    from ct_pipeline.registry import record_history, sync_champion

    publisher, registry = publisher_for(spec, settings), registry_for(settings)
    model = spec.registered_model_name
    lines = [sync_champion(registry, model, deployed_model(publisher, spec))]
    periods, rolled_back = production_history(publisher, spec)
    if periods:
        lines += record_history(registry, model, spec.gitops.environment, periods, rolled_back)
    return "\n".join(lines)


def step_pull(spec: ModelSpec, settings: Settings, end: datetime, window: str | None = None) -> WindowSnapshot:
    from ct_pipeline.data_window import pull_window

    return pull_window(spec, end, settings, window=window)


def step_train(spec: ModelSpec, settings: Settings, snapshot: WindowSnapshot) -> TrainResult:
    from ct_pipeline.train import train_candidates

    configure_environment(settings)
    return train_candidates(spec, snapshot, settings)


def step_gate(
    spec: ModelSpec,
    settings: Settings,
    trained: TrainResult,
    force: bool = False,
    force_reason: str | None = None,
    forced_by: str | None = None,
) -> GateDecision:
    from ct_pipeline.gate import evaluate, record_decision

    registry = registry_for(settings)
    plots: dict[str, bytes] = {}
    decision = evaluate(
        spec, trained, registry, force=force, force_reason=force_reason, forced_by=forced_by, plot_sink=plots
    )
    record_decision(spec, decision, registry, settings.tracking_uri, plots=plots)
    return decision


def step_package(spec: ModelSpec, settings: Settings, decision: GateDecision) -> BentoRef:
    """The Bento of the approved version, then its OCI image pushed and pinned by digest when a container engine
    is configured or available (CTPIPE_IMAGE_ENGINE; ``auto`` without one packages the Bento only)."""
    from ct_pipeline.image import package_image
    from ct_pipeline.package import build_bento

    configure_environment(settings)
    return package_image(build_bento(spec, decision, settings), settings)


def step_promote(spec: ModelSpec, settings: Settings, decision: GateDecision, bento: BentoRef) -> PromotionRecord:
    from ct_pipeline.promote import promote

    configure_environment(settings)
    return promote(
        spec, decision, bento, settings, publisher=publisher_for(spec, settings), extra_files=evidence_files(decision)
    )


def evidence_files(decision: GateDecision) -> dict[str, bytes]:
    """The gate's plots, fetched from the challenger's MLflow run, to sit next to the manifest change."""
    import tempfile
    from pathlib import Path

    import mlflow

    from ct_pipeline.gitops import promotion_id

    files = {}
    folder = f"promotions/{promotion_id(decision.model, decision.challenger.version)}"
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in decision.plots:
            local = mlflow.artifacts.download_artifacts(
                run_id=decision.challenger.run_id, artifact_path=artifact, dst_path=tmp
            )
            files[f"{folder}/{Path(artifact).name}"] = Path(local).read_bytes()
    return files


def run_pipeline(
    spec: ModelSpec,
    settings: Settings,
    end: datetime,
    window: str | None = None,
    force: bool = False,
    force_reason: str | None = None,
    forced_by: str | None = None,
    on_step: Callable[[str, str], None] | None = None,
) -> StepOutcome:
    """The whole loop for one model; ``on_step(step, message)`` reports progress (the CLI draws it)."""
    report = on_step or (lambda step, message: None)
    configure_environment(settings)
    report("sync", step_sync(spec, settings))
    snapshot = step_pull(spec, settings, end, window)
    report(
        "pull",
        f"{snapshot.rows} rows in [{snapshot.start:%Y-%m-%d %H:%M}, {snapshot.end:%Y-%m-%d %H:%M}) "
        f"{snapshot.content_hash[:19]}",
    )
    trained = step_train(spec, settings, snapshot)
    report(
        "train",
        ", ".join(f"{c.name} v{c.version} {spec.metric.name}={c.primary_metric:.4f}" for c in trained.candidates),
    )
    decision = step_gate(spec, settings, trained, force=force, force_reason=force_reason, forced_by=forced_by)
    report("gate", ("PROMOTE: " if decision.promote else "NOT PROMOTED: ") + decision.reason)
    if not decision.promote:
        return StepOutcome(model=spec.name, status="not_promoted", reason=decision.reason, decision=decision)
    bento = step_package(spec, settings, decision)
    image = f", image {bento.image_repository}:{bento.image_tag}@{bento.image_digest}" if bento.image_digest else ""
    report("package", f"bento {bento.bento_tag}{image}")
    promotion = step_promote(spec, settings, decision, bento)
    report("promote", f"branch {promotion.branch}: {promotion.title}")
    return StepOutcome(
        model=spec.name, status="promoted", reason=decision.reason, decision=decision, bento=bento, promotion=promotion
    )
