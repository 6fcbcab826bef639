"""Step 4, gate: champion vs challenger on the same recent holdout rows, decided on evidence.

scoring (both models on the same rows, the paired bootstrap) -> checks (a list; each returns GateChecks) ->
verdict. The challenger is the best candidate; the champion (alias ``champion``) is loaded from the registry,
which also proves its artifacts still exist. The decision is a typed record stored on the challenger's run.
"""

from __future__ import annotations

from ct_pipeline.context import StepContext
from ct_pipeline.domain import tags
from ct_pipeline.domain.metrics import metric, scores_from_prediction
from ct_pipeline.domain.performance import realized_metric
from ct_pipeline.domain.records import GateCheck, GateDecision, ModelRef, TrainResult
from ct_pipeline.errors import ConfigError, RegistryError
from ct_pipeline.steps.gate.checks import CHECKS
from ct_pipeline.steps.gate.scoring import Evidence, model_size_bytes, paired_bootstrap, single_row_latency_p95_ms
from ct_pipeline.steps.gate.verdict import decide, verdict
from ct_pipeline.steps.train import best_candidate, load_split


def score(ctx: StepContext, trained: TrainResult) -> Evidence:
    """Load and score the challenger (and the champion, when there is a different one) on the holdout."""
    spec, registry, gate_spec = ctx.spec, ctx.tracker, ctx.spec.gate
    model = spec.registered_model_name
    best = best_candidate(spec, trained)
    registry.set_alias(model, tags.CHALLENGER, best.version)
    champion_ref = registry.get_alias(model, tags.CHAMPION)
    _, holdout = load_split(spec, trained.snapshot)
    X, y = holdout[spec.data.features], holdout[spec.data.target].to_numpy(dtype=float)

    challenger_model = registry.load_pyfunc(model, best.version)
    challenger_scores = scores_from_prediction(challenger_model.predict(X))
    ev = Evidence(
        best=best,
        challenger=ModelRef(
            version=best.version, run_id=best.run_id, metric=metric(spec.metric.name, y, challenger_scores)
        ),
        holdout=holdout,
        y=y,
        challenger_scores=challenger_scores,
        latency_p95_ms=single_row_latency_p95_ms(challenger_model, X, gate_spec.latency_samples),
        model_size_bytes=model_size_bytes(challenger_model),
        champion=champion_ref,
    )
    if champion_ref is None or champion_ref.version == best.version:
        return ev
    try:
        champion_model = registry.load_pyfunc(model, champion_ref.version)
        champion_scores = scores_from_prediction(champion_model.predict(X))
    except RegistryError as exc:
        ev.champion_error = str(exc)
        return ev
    ev.champion = champion_ref.model_copy(update={"metric": metric(spec.metric.name, y, champion_scores)})
    ev.champion_scores = champion_scores
    ev.champion_latency_p95_ms = single_row_latency_p95_ms(champion_model, X, gate_spec.latency_samples)
    ev.champion_model_size_bytes = model_size_bytes(champion_model)
    ev.delta, ev.ci_low, ev.ci_high = paired_bootstrap(
        spec.metric.name,
        y,
        challenger_scores,
        champion_scores,
        resamples=gate_spec.bootstrap_resamples,
        confidence=gate_spec.confidence,
        seed=gate_spec.seed,
        maximize=spec.direction == "maximize",
    )
    return ev


def primary(ctx: StepContext, ev: Evidence) -> tuple[bool, str, GateCheck | None]:
    """The comparison with the champion: (passes, reason, its check)."""
    if ev.champion is None:
        return True, "no champion yet", GateCheck(name="champion", passed=True, detail="no champion yet")
    if ev.champion.version == ev.best.version:
        return False, f"challenger v{ev.best.version} already is the champion", None
    if ev.champion_error is not None:
        reason = f"champion v{ev.champion.version} cannot be loaded, refusing to compare: {ev.champion_error}"
        return False, reason, GateCheck(name="champion_loads", passed=False, detail=ev.champion_error)
    assert ev.delta is not None and ev.ci_low is not None and ev.ci_high is not None
    return decide(ctx.spec.gate, ev.delta, ev.ci_low, ev.ci_high, ctx.spec.metric.name)


def evaluate(ctx: StepContext, trained: TrainResult) -> tuple[GateDecision, dict[str, bytes]]:
    """The decision on the best candidate, and its evidence plots (name -> PNG). No side effects but aliases."""
    decision, plots, _ = judge(ctx, trained)
    return decision, plots


def judge(ctx: StepContext, trained: TrainResult) -> tuple[GateDecision, dict[str, bytes], Evidence]:
    """:func:`evaluate`, and the evidence it judged."""
    from ct_pipeline.steps.gate.plots import gate_plots

    spec, request = ctx.spec, ctx.request
    if request.force and not (request.reason and request.reason.strip()):
        raise ConfigError("force needs a reason (who asked and why); it is recorded with the promotion")
    ev = score(ctx, trained)
    primary_ok, primary_reason, primary_check = primary(ctx, ev)
    checks: list[GateCheck] = [primary_check] if primary_check else []
    for check in CHECKS:
        checks.extend(check(ctx, ev))
    promote, reason = verdict(primary_ok, primary_reason, checks, request)
    decision = GateDecision(
        model=spec.name,
        promote=promote,
        reason=reason,
        checks=checks,
        challenger=ev.challenger,
        champion=ev.champion,
        metric=spec.metric.name,
        direction=spec.direction,
        delta=ev.delta,
        ci_low=ev.ci_low,
        ci_high=ev.ci_high,
        decided_at=ctx.clock.now(),
        snapshot=trained.snapshot,
        holdout_rows=len(ev.holdout),
        slices=ev.extra.get("slices", []),
        latency_p95_ms=ev.latency_p95_ms,
        champion_latency_p95_ms=ev.champion_latency_p95_ms,
        model_size_bytes=ev.model_size_bytes,
        champion_model_size_bytes=ev.champion_model_size_bytes,
        forced=request.force,
        forced_by=request.requested_by if request.force else None,
        force_reason=request.reason if request.force else None,
        extra={"candidates": {c.name: {"version": c.version, **c.metrics} for c in trained.candidates}},
    )
    try:  # what the monitor will hold the served model to (its metric on this holdout, with its CI)
        promised = realized_metric(
            spec.metric.name,
            ev.y,
            ev.challenger_scores,
            confidence=spec.gate.confidence,
            resamples=spec.gate.bootstrap_resamples,
            seed=spec.gate.seed,
        )
        decision.extra["promise"] = promised.to_dict()
    except ValueError as exc:  # broken predictions: the checks already refuse the model
        decision.extra["promise"] = {"metric": spec.metric.name, "error": str(exc)}
    plots = gate_plots(spec, decision, ev.y, ev.challenger_scores, ev.champion_scores)
    decision = decision.model_copy(update={"plots": [f"{tags.GATE_PLOTS_DIR}/{name}" for name in plots]})
    return decision, plots, ev


def record_decision(
    ctx: StepContext, decision: GateDecision, plots: dict[str, bytes], reference: dict[str, bytes] | None = None
) -> None:
    """Tags on the challenger version + the full record (its plots, the monitor's reference) on its run."""
    version_tags = {
        tags.GATE_DECISION: "promote" if decision.promote else "not_promoted",
        tags.GATE_REASON: decision.reason[:4000],
        tags.GATE_FORCED: str(decision.forced).lower(),
    }
    if decision.delta is not None:
        version_tags[tags.GATE_DELTA] = f"{decision.delta:.6f}"
        version_tags[tags.GATE_CI] = f"{decision.ci_low:.6f},{decision.ci_high:.6f}"
    if decision.champion:
        version_tags[tags.GATE_CHAMPION_VERSION] = decision.champion.version
    ctx.tracker.set_version_tags(ctx.spec.registered_model_name, decision.challenger.version, version_tags)
    ctx.tracker.log_dict(decision.challenger.run_id, decision.to_json_dict(), tags.GATE_DECISION_ARTIFACT)
    if plots:
        ctx.tracker.log_files(decision.challenger.run_id, plots, tags.GATE_PLOTS_DIR)
    if reference:
        ctx.tracker.log_files(decision.challenger.run_id, reference, tags.MONITOR_REFERENCE_DIR)


def monitoring_reference(
    ctx: StepContext, trained: TrainResult, decision: GateDecision, ev: Evidence
) -> dict[str, bytes]:
    """What the monitor will compare the served traffic with once this challenger is the champion: the
    training snapshot's features, its scores and the labels on the gate's holdout, and the metric promised."""
    from ct_pipeline.steps.monitor.reference import reference_files
    from ct_pipeline.steps.pull import load_snapshot

    snapshot = load_snapshot(trained.snapshot)
    promise = decision.extra.get("promise", {})
    return reference_files(ctx.spec, snapshot, ev.y, ev.challenger_scores, promise, seed=ctx.spec.gate.seed)


def gate(ctx: StepContext, trained: TrainResult) -> GateDecision:
    decision, plots, ev = judge(ctx, trained)
    record_decision(ctx, decision, plots, monitoring_reference(ctx, trained, decision, ev))
    return decision
