"""Gate checks: each looks at the evidence and returns GateChecks; the verdict fails on any judged failure.

Checks are a list (:data:`CHECKS`), so data, drift and fairness checks plug in as one more entry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ct_pipeline.context import StepContext
from ct_pipeline.domain import tags
from ct_pipeline.domain.metrics import metric
from ct_pipeline.domain.records import GateCheck, SliceResult
from ct_pipeline.domain.spec import ModelSpec, TaskType
from ct_pipeline.ports import ModelRegistry
from ct_pipeline.steps.gate.scoring import Evidence

Check = Callable[[StepContext, Evidence], list[GateCheck]]


def slice_results(
    spec: ModelSpec, holdout: pd.DataFrame, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray
) -> tuple[list[SliceResult], list[GateCheck]]:
    """Champion vs challenger per slice value. Small slices are reported, not judged."""
    cfg = spec.gate.slices
    results: list[SliceResult] = []
    checks: list[GateCheck] = []
    if cfg is None:
        return results, checks
    sign = 1.0 if spec.direction == "maximize" else -1.0
    classification = spec.task == TaskType.binary_classification
    for column in cfg.columns:
        values = holdout[column]
        distinct = values.dropna().unique()
        if len(distinct) > cfg.max_values:
            checks.append(
                GateCheck(
                    name=f"slices:{column}",
                    passed=True,
                    judged=False,
                    detail=f"{column} has {len(distinct)} values (> max_values {cfg.max_values}): not sliced",
                )
            )
            continue
        for value in sorted(distinct, key=str):
            mask = (values == value).to_numpy()
            rows = int(mask.sum())
            positives = int(y[mask].sum()) if classification else None
            note = ""
            if rows < cfg.min_rows:
                note = f"{rows} rows < min_rows {cfg.min_rows}"
            elif positives is not None and min(positives, rows - positives) < cfg.min_positives:
                note = f"{positives} positives / {rows - positives} negatives < min_positives {cfg.min_positives}"
            observed = SliceResult(
                column=column, value=str(value), rows=rows, positives=positives, judged=False, passed=True
            )
            if note:
                results.append(observed.model_copy(update={"note": note}))
                continue
            chal = metric(spec.metric.name, y[mask], challenger[mask])
            champ = metric(spec.metric.name, y[mask], champion[mask])
            delta = sign * (chal - champ)
            measured = {"champion_metric": champ, "challenger_metric": chal, "delta": delta, "judged": True}
            results.append(observed.model_copy(update={**measured, "passed": delta >= -cfg.max_degradation}))
    judged = [r for r in results if r.judged]
    worst = min(judged, key=lambda r: r.delta or 0.0, default=None)  # judged slices always have a delta
    if worst is not None:
        failing = [r for r in judged if not r.passed]
        subject = failing[0] if failing else worst
        detail = (
            f"slice {subject.column}={subject.value}: {spec.metric.name} delta {subject.delta:+.4f} "
            f"(n={subject.rows:,}) {'<' if failing else '>='} -{cfg.max_degradation:.4f}"
        )
        if len(failing) > 1:
            detail += f" (and {len(failing) - 1} more slice(s))"
        checks.append(GateCheck(name="slices", passed=not failing, detail=detail))
    skipped = [r for r in results if not r.judged]
    if skipped:
        checks.append(
            GateCheck(
                name="slices:small",
                passed=True,
                judged=False,
                detail="not judged: " + ", ".join(f"{r.column}={r.value} ({r.note})" for r in skipped),
            )
        )
    return results, checks


def prediction_check(scores: np.ndarray, task: TaskType) -> GateCheck:
    """Sanity of the challenger's holdout predictions: finite, not constant, probabilities in [0, 1]."""
    problems = []
    if not np.all(np.isfinite(scores)):
        problems.append(f"{int((~np.isfinite(scores)).sum())} NaN/inf predictions")
    finite = scores[np.isfinite(scores)]
    if finite.size and float(np.std(finite)) < 1e-9:
        problems.append(f"constant predictions ({float(finite[0]):.6g})")
    if task == TaskType.binary_classification and finite.size and (finite.min() < 0 or finite.max() > 1):
        problems.append(f"scores outside [0, 1] ({finite.min():.4g}..{finite.max():.4g})")
    if problems:
        return GateCheck(name="predictions", passed=False, detail="challenger predictions: " + "; ".join(problems))
    return GateCheck(
        name="predictions",
        passed=True,
        detail=f"finite, spread {np.percentile(finite, 5):.4g}..{np.percentile(finite, 95):.4g} (p5..p95)",
    )


def rolled_back_check(spec: ModelSpec, registry: ModelRegistry, version: str) -> GateCheck:
    """A model that was rolled back comes back only with force and a reason, not with the next scheduled run."""
    model = spec.registered_model_name
    mine = registry.get_version_tags(model, version).get(tags.FINGERPRINT)
    for other in registry.versions_tagged(model, tags.ROLLED_BACK, "true"):
        other_tags = registry.get_version_tags(model, other)
        if other == version or (mine and other_tags.get(tags.FINGERPRINT) == mine):
            commit = other_tags.get(tags.ROLLED_BACK_COMMIT, "")[:10]
            same = "is" if other == version else f"is the same model (data and candidate) as v{other}, which was"
            return GateCheck(
                name="rolled_back",
                passed=False,
                detail=f"v{version} {same} rolled back ({commit}); promote it again only with force and a reason",
            )
    return GateCheck(name="rolled_back", passed=True, judged=False, detail="not a rolled-back model")


def predictions(ctx: StepContext, ev: Evidence) -> list[GateCheck]:
    return [prediction_check(ev.challenger_scores, ctx.spec.task)]


def latency(ctx: StepContext, ev: Evidence) -> list[GateCheck]:
    limit = ctx.spec.gate.max_latency_p95_ms
    return [
        GateCheck(
            name="latency_p95",
            passed=limit is None or ev.latency_p95_ms <= limit,
            judged=limit is not None,
            detail=f"single-row p95 {ev.latency_p95_ms:.2f} ms" + (f" (limit {limit:g} ms)" if limit else ""),
        )
    ]


def model_size(ctx: StepContext, ev: Evidence) -> list[GateCheck]:
    size_limit = ctx.spec.gate.max_model_size_mb
    size_mb = ev.model_size_bytes / 1e6 if ev.model_size_bytes else None
    return [
        GateCheck(
            name="model_size",
            judged=size_limit is not None and size_mb is not None,
            passed=size_limit is None or size_mb is None or size_mb <= size_limit,
            detail=(f"{size_mb:.2f} MB" if size_mb is not None else "unknown")
            + (f" (limit {size_limit:g} MB)" if size_limit else ""),
        )
    ]


def slices(ctx: StepContext, ev: Evidence) -> list[GateCheck]:
    if not ev.compared:
        return []
    assert ev.champion_scores is not None
    results, found = slice_results(ctx.spec, ev.holdout, ev.y, ev.challenger_scores, ev.champion_scores)
    ev.extra["slices"] = results
    return found


def rolled_back(ctx: StepContext, ev: Evidence) -> list[GateCheck]:
    return [rolled_back_check(ctx.spec, ctx.tracker, ev.best.version)]


# In report order (the primary comparison is put first by the verdict).
CHECKS: list[Check] = [predictions, latency, model_size, slices, rolled_back]
