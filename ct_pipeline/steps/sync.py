"""Step 1, sync: the registry follows Git. MLflow's ``champion`` alias := what the GitOps base branch deploys,
the production history (which version ran when) is mirrored into a registered-model tag, and reverted versions
are marked rolled back, so the next run does not bring them back.
"""

from __future__ import annotations

import json

from ct_pipeline.adapters.publishers import deployed_model
from ct_pipeline.context import StepContext
from ct_pipeline.domain import tags
from ct_pipeline.domain.history import ProductionPeriod, production_periods
from ct_pipeline.domain.manifest import read_deployed
from ct_pipeline.domain.records import DeployedModel, SyncResult
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.ports import GitPublisher, ModelRegistry

HISTORY_LIMIT = 40  # tag values are bounded; Git keeps the full history


def production_history(
    publisher: GitPublisher, spec: ModelSpec, limit: int = HISTORY_LIMIT
) -> tuple[list[ProductionPeriod], dict[str, str]]:
    """Which version the base branch deployed when, and which promotions were reverted, read from Git."""
    events = [e for e in publisher.history(spec.name) if e.environment == spec.gitops.environment][:limit]

    def read_manifest(commit: str) -> DeployedModel | None:
        text = publisher.read_file(spec.manifest_path, ref=commit)
        return read_deployed(text, spec) if text else None

    return production_periods(events, spec.gitops.environment, read_manifest)


def record_history(
    registry: ModelRegistry, model: str, environment: str, periods: list[ProductionPeriod], rolled_back: dict[str, str]
) -> list[str]:
    """Mirror Git's production history into the registry: a model tag, and a mark on every rolled-back version.

    Git stays the record; the registry gets a copy people can query next to the versions (mlflow #2169).
    """
    notes = []
    history = [
        {
            "version": p.version,
            "since": p.since.isoformat(),
            "until": p.until.isoformat() if p.until else None,
            "commit": p.commit[:12],
            "cause": p.cause,
        }
        for p in periods[-HISTORY_LIMIT:]
    ]
    registry.set_model_tag(model, tags.production_history_tag(environment), json.dumps(history))
    already = set(registry.versions_tagged(model, tags.ROLLED_BACK, "true"))
    live = periods[-1].version if periods else None
    if live in already:  # brought back on purpose (a forced promotion): no longer counts as rolled back
        registry.set_version_tags(model, live, {tags.ROLLED_BACK: "false"})
        notes.append(f"{model}: v{live} is deployed again; rolled-back mark cleared")
    for version, commit in rolled_back.items():
        if version == live:
            continue
        if version not in already:
            registry.set_version_tags(model, version, {tags.ROLLED_BACK: "true", tags.ROLLED_BACK_COMMIT: commit})
            notes.append(f"{model}: v{version} marked rolled back (reverted in {commit[:10]})")
    return notes


def sync_champion(registry: ModelRegistry, model: str, deployed: DeployedModel | None) -> str:
    """Make ``champion`` point at what Git deploys; returns a one-line account of what changed."""
    current = registry.get_alias(model, tags.CHAMPION)
    if deployed is None:
        if current is None:
            return f"{model}: nothing deployed and no champion alias: in sync"
        registry.delete_alias(model, tags.CHAMPION)
        return f"{model}: nothing deployed on the base branch: removed champion alias (was v{current.version})"
    if current is not None and current.version == deployed.version:
        return f"{model}: champion is v{deployed.version}, as deployed: in sync"
    registry.set_alias(model, tags.CHAMPION, deployed.version)
    registry.set_version_tags(
        model,
        deployed.version,
        {tags.DEPLOYED_ENVIRONMENT: deployed.environment, tags.DEPLOYED_COMMIT: deployed.commit or ""},
    )
    was = f"v{current.version}" if current else "none"
    at = (deployed.commit or "")[:10]
    return f"{model}: champion moved {was} -> v{deployed.version} to follow {deployed.environment} ({at})"


def sync(ctx: StepContext) -> SyncResult:
    """Make the registry follow the GitOps base branch: champion alias, production history, rolled-back marks."""
    spec, registry = ctx.spec, ctx.tracker
    model = spec.registered_model_name
    lines = [sync_champion(registry, model, deployed_model(ctx.publisher, spec))]
    periods, rolled_back = production_history(ctx.publisher, spec)
    if periods:
        lines += record_history(registry, model, spec.gitops.environment, periods, rolled_back)
    return SyncResult(model=spec.name, lines=lines)
