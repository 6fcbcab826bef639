"""The promotion body a reviewer reads in a minute: why, champion vs challenger, gate checks, lineage, the change.

Pure: renders markdown from records, so the GitHub pull request, the local PR.md and the tests see the same text.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ct_pipeline.domain.records import BentoRef, DeployedModel, GateDecision
from ct_pipeline.domain.spec import ModelSpec


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
    trigger: str | None = None,
) -> str:
    """The markdown body of a promotion: why, champion vs challenger, gate checks, lineage, the change.

    ``trigger`` is why the run that trained the challenger was started (a retrain request's reason, new data)."""
    env = spec.gitops.environment
    challenger, champion = decision.challenger, decision.champion
    lines = [f"**Promote `{spec.name}` v{bento.version} to {env}.** {decision.reason}", ""]
    if trigger:
        lines += [f"> **Why this run**: {trigger.strip()}", ""]
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
