"""run_pipeline: the step table (:data:`ct_pipeline.steps.STEPS`) run in order in one process.

The Airflow DAG (ct_pipeline.dag_factory) runs the same table as tasks, the CLI draws its progress from it.
"""

from __future__ import annotations

from collections.abc import Callable

from ct_pipeline.context import StepContext
from ct_pipeline.domain.records import Record, StepOutcome
from ct_pipeline.steps import STEPS


def run_pipeline(ctx: StepContext, on_step: Callable[[str, str], None] | None = None) -> StepOutcome:
    """The whole loop for ``ctx.spec``; ``on_step(step, message)`` reports progress (the CLI draws it)."""
    report = on_step or (lambda step, message: None)
    records: dict[str, Record] = {}
    for step in STEPS:
        record = step.run(ctx, *(records[name] for name in step.inputs))
        records[step.name] = record
        report(step.name, step.describe(record, ctx.spec))
        if step.halt is not None and not step.halt.proceed(record):
            return outcome(ctx, records, "not_promoted", step.halt.reason(record))
    return outcome(ctx, records, "promoted", records["gate"].reason)  # type: ignore[attr-defined]


def outcome(ctx: StepContext, records: dict[str, Record], status: str, reason: str) -> StepOutcome:
    return StepOutcome(
        model=ctx.spec.name,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        decision=records.get("gate"),  # type: ignore[arg-type]
        bento=records.get("package"),  # type: ignore[arg-type]
        promotion=records.get("promote"),  # type: ignore[arg-type]
    )
