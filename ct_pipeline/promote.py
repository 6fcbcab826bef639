"""Propose a gate-approved model as a promotion: a branch of the GitOps repository with the values file
bumped to the new Bento and a record a reviewer can read in a minute (the "pull request")."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from ct_pipeline.domain.manifest import bump, changed_values, read_deployed, render_initial_values
from ct_pipeline.domain.records import BentoRef, DeployedModel, GateDecision, PromotionRecord
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.errors import AlreadyDeployedError, PromotionError, PromotionRefusedError
from ct_pipeline.gitops import (
    GitPublisher,
    body_path,
    default_publisher,
    promotion_branch,
    promotion_files,
    promotion_id,
    record_path,
)
from ct_pipeline.settings import Settings

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


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def _mb(value: int | None) -> str:
    return "—" if value is None else f"{value / 1e6:.2f} MB"


def _when(value: datetime) -> str:
    return value.isoformat(sep=" ", timespec="minutes")


def _short(sha: str | None, n: int = 12) -> str:
    return f"`{sha[:n]}`" if sha else "—"


def render_body(
    spec: ModelSpec,
    decision: GateDecision,
    bento: BentoRef,
    *,
    deployed: DeployedModel | None = None,
    base_branch: str = "main",
    base_commit: str | None = None,
    changes: list[tuple[str, str | None, str]] | None = None,
    code_sha: str | None = None,
    attachments: list[str] | None = None,
) -> str:
    """The markdown body of a promotion: why, champion vs challenger, gate checks, lineage, the change."""
    env = spec.gitops.environment
    challenger, champion = decision.challenger, decision.champion
    lines = [f"**Promote `{spec.name}` v{bento.version} to {env}.** {decision.reason}", ""]
    if decision.forced:
        who = decision.forced_by or "someone"
        lines += [f"> **Forced** by {who}: {decision.force_reason or 'no reason given'}", ""]

    arrow = "↑ higher is better" if decision.direction == "maximize" else "↓ lower is better"
    delta = _fmt(decision.delta, signed=True)
    if decision.ci_low is not None and decision.ci_high is not None:
        delta += f" ({spec.gate.confidence:.0%} CI {_fmt(decision.ci_low, True)} … {_fmt(decision.ci_high, True)})"
    lines += [
        "| | Champion | Challenger | Delta |",
        "|---|---|---|---|",
        f"| Version | {f'v{champion.version}' if champion else 'none'} | **v{challenger.version}** | |",
        f"| `{decision.metric}` ({arrow}) | {_fmt(champion.metric if champion else None)} "
        f"| {_fmt(challenger.metric)} | {delta} |",
        f"| MLflow run | {_short(champion.run_id if champion else None)} | {_short(challenger.run_id)} | |",
    ]
    if decision.latency_p95_ms is not None:
        lines.append(
            f"| Single-row latency p95 | {_ms(decision.champion_latency_p95_ms)} | {_ms(decision.latency_p95_ms)} | |"
        )
    if decision.model_size_bytes is not None:
        lines.append(f"| Model size | {_mb(decision.champion_model_size_bytes)} | {_mb(decision.model_size_bytes)} | |")
    if decision.holdout_rows:
        lines.append(f"| Holdout rows (same for both) | {decision.holdout_rows:,} | {decision.holdout_rows:,} | |")
    lines.append("")
    if decision.slices:
        lines += [
            f"**Per slice** (`{decision.metric}`; judged slices may lose at most "
            f"{spec.gate.slices.max_degradation if spec.gate.slices else 0:.4f})",
            "",
            "| Slice | Rows | Champion | Challenger | Delta | Result |",
            "|---|---|---|---|---|---|",
        ]
        for s in decision.slices:
            result = ("✅" if s.passed else "❌") if s.judged else f"➖ {s.note}"
            lines.append(
                f"| {s.column}={s.value} | {s.rows:,} | {_fmt(s.champion_metric)} | {_fmt(s.challenger_metric)} "
                f"| {_fmt(s.delta, signed=True)} | {result} |"
            )
        lines.append("")
    if attachments:
        # Links are relative to PR.md, which sits in the same folder on the promotion branch.
        lines += ["**Evidence plots** (on the promotion branch)", ""]
        lines += [f"- [{Path(a).name}]({Path(a).name}) — `{a}`" for a in attachments]
        lines.append("")
    deployed_text = f"v{deployed.version}" if deployed else "nothing"
    at = f" ({base_branch} @ {_short(base_commit)})" if base_commit else f" ({base_branch})"
    note = ""
    if (champion.version if champion else None) != (deployed.version if deployed else None):
        judged = f"v{champion.version}" if champion else "no champion"
        note = f" — note: the gate compared against {judged}, which is not what is deployed"
    lines += [f"Deployed in {env} now: {deployed_text}{at}{note}.", ""]

    if decision.checks:
        lines += ["**Gate checks**", "", "| Check | Result | Detail |", "|---|---|---|"]
        for check in decision.checks:
            result = "✅ pass" if check.passed else "❌ fail"
            if not check.judged:
                result = "➖ info"
            detail = check.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {check.name} | {result} | {detail} |")
        lines.append("")

    snap = decision.snapshot
    lineage = [
        f"- Data: `{snap.source}`, {_when(snap.start)} → {_when(snap.end)}, {snap.rows:,} rows, "
        f"content hash `{snap.content_hash}`",
        f"- MLflow: `{spec.registered_model_name}` v{challenger.version}, run `{challenger.run_id}`"
        + (f"; champion v{champion.version}, run `{champion.run_id}`" if champion else ""),
        f"- Bento: `{bento.bento_tag}` (model `{bento.bento_model_tag}`, data hash `{bento.data_hash}`)",
    ]
    if bento.image_repository or bento.image_tag or bento.image_digest:
        image = bento.image_repository or ""
        image += f":{bento.image_tag}" if bento.image_tag else ""
        image += f"@{bento.image_digest}" if bento.image_digest else ""
        lineage.append(f"- Image: `{image}`")
    if code_sha:
        lineage.append(f"- Code: ct-pipeline `{code_sha}`")
    lines += ["**Lineage**", "", *lineage, ""]

    change = f"**Change**: `{spec.manifest_path}`"
    if changes:
        version_change = next((c for c in changes if c[0] == "model.version"), None)
        others = [c[0] for c in changes if c[0] != "model.version"]
        parts = []
        if version_change:
            parts.append(f"`model.version` {version_change[1]!r} → {version_change[2]!r}")
        if others:
            parts.append("also sets " + ", ".join(f"`{k}`" for k in others))
        change += " — " + "; ".join(parts)
    lines += [
        change + ".",
        f"Merging deploys it; rolling back is reverting the merge commit on {base_branch}.",
    ]
    return "\n".join(lines) + "\n"


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


def promote(
    spec: ModelSpec,
    decision: GateDecision,
    bento: BentoRef,
    settings: Settings,
    publisher: GitPublisher | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> PromotionRecord:
    """Open (or update) the promotion ``<model>/v<version>`` of ``bento`` in the spec's environment.

    The values file is read from the base branch (an initial one is created when it is missing) and bumped;
    the branch also carries ``promotions/<id>/record.json`` (record, gate decision, Bento, what was deployed
    before) and ``PR.md``. Refuses when the gate said no, when decision and Bento disagree, or when the base
    branch already deploys this Bento.
    """
    if not decision.promote:
        raise PromotionRefusedError(
            f"the gate decided not to promote {decision.model} v{decision.challenger.version}: {decision.reason}"
        )
    _check_consistent(spec, decision, bento)
    publisher = publisher or default_publisher(settings, spec)
    pid = promotion_id(spec.name, bento.version)
    extra = dict(extra_files or {})
    reserved = {spec.manifest_path, record_path(pid), body_path(pid)}
    if clash := reserved & set(extra):
        raise PromotionError(f"extra_files must not replace the promotion's own files: {sorted(clash)}")
    code_sha = code_version()
    created_at = datetime.now(UTC)

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
        files: dict[str, bytes] = {spec.manifest_path: new_text.encode(), **extra}
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
