"""Step 6, promote: propose a gate-approved model as a promotion: a branch of the GitOps repository with the values
file bumped to the new Bento and a record a reviewer can read in a minute (the "pull request")."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from ct_pipeline.context import StepContext
from ct_pipeline.domain.manifest import (
    bump,
    changed_values,
    monitoring_values_path,
    read_deployed,
    render_initial_values,
    render_monitoring_values,
)
from ct_pipeline.domain.promotion import body_path, promotion_branch, promotion_files, promotion_id, record_path
from ct_pipeline.domain.promotion_body import render_body
from ct_pipeline.domain.records import BentoRef, GateDecision, PromotionRecord
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.errors import AlreadyDeployedError, PromotionError, PromotionRefusedError
from ct_pipeline.ports import GitPublisher

_MAX_ATTEMPTS = 3


def promotion_title(spec: ModelSpec, version: str) -> str:
    return f"Promote {spec.name} v{version} to {spec.gitops.environment}"


def code_version(path: Path | None = None) -> str | None:
    """Git sha of the ct-pipeline checkout (``-dirty`` when tracked files changed), None outside git."""
    where = path or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _check_consistent(spec: ModelSpec, decision: GateDecision, bento: BentoRef) -> None:
    problems = []
    if decision.model != spec.name:
        problems.append(f"decision is for model {decision.model!r}")
    if bento.model != spec.name:
        problems.append(f"Bento is for model {bento.model!r}")
    if bento.version != decision.challenger.version:
        problems.append(f"Bento holds v{bento.version} but the gate approved v{decision.challenger.version}")
    if bento.run_id != decision.challenger.run_id:
        problems.append(f"Bento comes from run {bento.run_id} but the gate judged run {decision.challenger.run_id}")
    if problems:
        raise PromotionError(f"cannot promote {spec.name}: " + "; ".join(problems))


def open_promotion(
    spec: ModelSpec,
    decision: GateDecision,
    bento: BentoRef,
    publisher: GitPublisher,
    extra_files: Mapping[str, bytes] | None = None,
    now: datetime | None = None,
    trigger: str | None = None,
) -> PromotionRecord:
    """Open (or update) the promotion ``<model>/v<version>`` of ``bento`` in the spec's environment.

    The values file is read from the base branch (an initial one is created when it is missing) and bumped;
    the branch also carries ``promotions/<id>/record.json`` (record, gate decision, Bento, what was deployed
    before) and ``PR.md``, and the monitoring values re-rendered from the spec (``monitoring.yaml`` next to the
    values file: a change of the spec's monitors is reviewed and deployed with the promotion; unchanged, it is
    identical and the commit does not touch it); ``trigger`` (why the run started) heads the body. Refuses when
    the gate said no, when decision and Bento disagree, or when the base branch already deploys this Bento.
    """
    if not decision.promote:
        raise PromotionRefusedError(
            f"the gate decided not to promote {decision.model} v{decision.challenger.version}: {decision.reason}"
        )
    _check_consistent(spec, decision, bento)
    pid = promotion_id(spec.name, bento.version)
    extra = dict(extra_files or {})
    monitoring_path = monitoring_values_path(spec)
    monitoring_text = render_monitoring_values(spec).encode()
    reserved = {spec.manifest_path, monitoring_path, record_path(pid), body_path(pid)}
    if clash := reserved & set(extra):
        raise PromotionError(f"extra_files must not replace the promotion's own files: {sorted(clash)}")
    code_sha = code_version()
    created_at = now or datetime.now(UTC)

    # The branch is built on the base as it is when it is pushed; if the values file changed on the base
    # between reading and pushing, the bump would silently undo that change, so check and redo.
    for _attempt in range(_MAX_ATTEMPTS):
        base_commit = publisher.head()
        current = publisher.read_file(spec.manifest_path, ref=base_commit)
        source = current if current is not None else render_initial_values(spec)
        deployed = read_deployed(source, spec, commit=base_commit)
        new_text = bump(source, bento)
        if current is not None and new_text == current:
            raise AlreadyDeployedError(
                f"{spec.name} v{bento.version} ({bento.bento_tag}) is already deployed in "
                f"{spec.gitops.environment} ({publisher.base_branch} @ {base_commit[:12]}); nothing to promote"
            )
        body = render_body(
            spec,
            decision,
            bento,
            deployed=deployed,
            base_branch=publisher.base_branch,
            base_commit=base_commit,
            changes=changed_values(current, new_text),
            code_sha=code_sha,
            attachments=sorted(extra),
            trigger=trigger,
        )
        record = PromotionRecord(
            id=pid,
            model=spec.name,
            version=bento.version,
            environment=spec.gitops.environment,
            branch=promotion_branch(pid),
            base_branch=publisher.base_branch,
            title=promotion_title(spec, bento.version),
            body=body,
            manifest_path=spec.manifest_path,
            created_at=created_at,
            files=sorted(reserved | set(extra)),
        )
        files: dict[str, bytes] = {spec.manifest_path: new_text.encode(), monitoring_path: monitoring_text, **extra}
        files.update(
            promotion_files(
                record,
                decision=decision,
                bento=bento,
                deployed_before=deployed,
                base_commit=base_commit,
                code_version=code_sha,
            )
        )
        opened = publisher.open_promotion(record, files)
        latest = publisher.head()
        if latest == base_commit or publisher.read_file(spec.manifest_path, ref=latest) == current:
            return opened
    raise PromotionError(
        f"{spec.manifest_path} kept changing on {publisher.base_branch} while promoting {pid}; try again"
    )


def evidence_files(ctx: StepContext, decision: GateDecision) -> dict[str, bytes]:
    """The gate's plots, fetched from the challenger's MLflow run, to sit next to the manifest change."""
    folder = f"promotions/{promotion_id(decision.model, decision.challenger.version)}"
    return {
        f"{folder}/{Path(artifact).name}": ctx.tracker.read_artifact(decision.challenger.run_id, artifact)
        for artifact in decision.plots
    }


def promote(ctx: StepContext, decision: GateDecision, bento: BentoRef) -> PromotionRecord:
    return open_promotion(
        ctx.spec,
        decision,
        bento,
        ctx.publisher,
        extra_files=evidence_files(ctx, decision),
        now=ctx.clock.now(),
        trigger=ctx.request.trigger,
    )
