"""The loop's steps, in loop order, and the one table that drives run_pipeline, the Airflow DAG and the CLI.

Each step is a plain function ``run(ctx, *inputs) -> Record``: ``ctx`` is the run's
:class:`~ct_pipeline.context.StepContext`, ``inputs`` are the records of the steps it names. A step with a
``halt`` ends the run early when its record says so (the gate's "no" is a normal outcome: "not promoted"), and
in Airflow that is a short-circuit task whose downstream tasks are skipped. Adding a step (verify, score) is
one more entry in :data:`STEPS`. The feedback loop (monitor -> retrain request) is the second table,
:data:`MONITOR_STEPS`: the monitor DAG and ``ctpipe monitor`` run it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ct_pipeline.domain.monitor_report import MonitorReport, RetrainRequest
from ct_pipeline.domain.records import (
    BentoRef,
    GateDecision,
    PromotionRecord,
    Record,
    SyncResult,
    TrainResult,
    WindowSnapshot,
)


@dataclass(frozen=True)
class Halt:
    """Where a run may stop: ``proceed(record)`` False ends it after this step, with ``reason(record)``."""

    task_id: str  # the Airflow short-circuit task
    proceed: Callable[[Any], bool]
    reason: Callable[[Any], str]


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[..., Record]
    output: type[Record]
    summary: Callable[[Any, Any], str]  # summary(record, spec): one line for the logs and the progress display
    inputs: tuple[str, ...] = ()  # earlier steps whose records this one takes, in order
    halt: Halt | None = None

    def describe(self, record: Any, spec: Any) -> str:
        return self.summary(record, spec)


def _sync(ctx: Any) -> SyncResult:
    from ct_pipeline.steps.sync import sync

    return sync(ctx)


def _pull(ctx: Any) -> WindowSnapshot:
    from ct_pipeline.steps.pull import pull

    return pull(ctx)


def _train(ctx: Any, snapshot: WindowSnapshot) -> TrainResult:
    from ct_pipeline.steps.train import train

    return train(ctx, snapshot)


def _gate(ctx: Any, trained: TrainResult) -> GateDecision:
    from ct_pipeline.steps.gate import gate

    return gate(ctx, trained)


def _package(ctx: Any, decision: GateDecision) -> BentoRef:
    from ct_pipeline.steps.package import package

    return package(ctx, decision)


def _promote(ctx: Any, decision: GateDecision, bento: BentoRef) -> PromotionRecord:
    from ct_pipeline.steps.promote import promote

    return promote(ctx, decision, bento)


def _pull_summary(s: WindowSnapshot, spec: Any) -> str:
    return f"{s.rows} rows in [{s.start:%Y-%m-%d %H:%M}, {s.end:%Y-%m-%d %H:%M}) {s.content_hash[:19]}"


def _train_summary(t: TrainResult, spec: Any) -> str:
    return ", ".join(f"{c.name} v{c.version} {spec.metric.name}={c.primary_metric:.4f}" for c in t.candidates)


def _package_summary(b: BentoRef, spec: Any) -> str:
    image = f", image {b.image_repository}:{b.image_tag}@{b.image_digest}" if b.image_digest else ""
    return f"bento {b.bento_tag}{image}"


# The step functions import their heavy libraries when called, so importing this table is cheap (DAG files).
STEPS: tuple[Step, ...] = (
    Step("sync", _sync, SyncResult, lambda r, spec: r.summary()),
    Step("pull", _pull, WindowSnapshot, _pull_summary),
    Step("train", _train, TrainResult, _train_summary, inputs=("pull",)),
    Step(
        "gate",
        _gate,
        GateDecision,
        lambda d, spec: ("PROMOTE: " if d.promote else "NOT PROMOTED: ") + d.reason,
        inputs=("train",),
        halt=Halt("promote_wanted", proceed=lambda d: bool(d.promote), reason=lambda d: d.reason),
    ),
    Step("package", _package, BentoRef, _package_summary, inputs=("gate",)),
    Step(
        "promote",
        _promote,
        PromotionRecord,
        lambda p, spec: f"promotion {p.id} on branch {p.branch}: {p.title}",
        inputs=("gate", "package"),
    ),
)

STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


# -- the feedback loop (the monitor DAG, `ctpipe monitor`): judge the served model, then ask for retraining


def _monitor(ctx: Any) -> MonitorReport:
    from ct_pipeline.steps.monitor import monitor

    return monitor(ctx)


def _retrain(ctx: Any, report: MonitorReport) -> RetrainRequest:
    from ct_pipeline.steps.retrain import retrain

    return retrain(ctx, report)


def _retrain_summary(r: RetrainRequest, spec: Any) -> str:
    return f"retrain requested ({r.asset}): {r.reason}" if r.sent else f"retrain not requested: {r.suppressed}"


MONITOR_STEPS: tuple[Step, ...] = (
    Step(
        "monitor",
        _monitor,
        MonitorReport,
        lambda r, spec: r.summary(),
        halt=Halt("retrain_wanted", proceed=lambda r: r.retrain_wanted, reason=lambda r: "no breach asks to retrain"),
    ),
    Step("retrain", _retrain, RetrainRequest, _retrain_summary, inputs=("monitor",)),
)


def step(name: str) -> Step:
    for s in (*STEPS, *MONITOR_STEPS):
        if s.name == name:
            return s
    known = ", ".join(s.name for s in (*STEPS, *MONITOR_STEPS))
    raise KeyError(f"no step {name!r} (steps: {known})")
