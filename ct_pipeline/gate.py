"""Step 3: champion vs challenger on the same recent holdout rows, decided on evidence.

The challenger is the best candidate. The champion (alias ``champion``) is loaded from the registry, which
also proves its artifacts still exist. A seeded paired bootstrap over the holdout rows gives the
metric delta and its confidence interval; the decision is a typed record stored on the challenger's run.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from ct_pipeline.metrics import metric, scores_from_prediction, weighted_metric
from ct_pipeline.records import GateCheck, GateDecision, ModelRef, TrainResult
from ct_pipeline.registry import CHALLENGER, CHAMPION, ModelRegistry, RegistryError
from ct_pipeline.spec import GateSpec, ModelSpec

BOOTSTRAP_CHUNK = 50  # resamples per vectorised block: bounds memory at 50 x rows floats


def resample_counts(rng: np.random.Generator, resamples: int, rows: int) -> np.ndarray:
    """How often each row is drawn in each resample (classic bootstrap: ``rows`` draws with replacement)."""
    draws = rng.integers(0, rows, size=(resamples, rows)) + (np.arange(resamples) * rows)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * rows).reshape(resamples, rows).astype(np.float32)


def paired_bootstrap(
    metric_name: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    resamples: int,
    confidence: float,
    seed: int,
    maximize: bool,
) -> tuple[float, float, float]:
    """Delta = improvement of challenger over champion (positive is better) and its percentile CI.

    Both models are scored on the same resampled rows, so the noise they share cancels.
    """
    rng = np.random.default_rng(seed)
    sign = 1.0 if maximize else -1.0
    deltas = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        weights = resample_counts(rng, min(BOOTSTRAP_CHUNK, resamples - start), len(y))
        chal = weighted_metric(metric_name, y, challenger, weights)
        champ = weighted_metric(metric_name, y, champion, weights)
        deltas.append(sign * (chal - champ))
    all_deltas = np.concatenate(deltas)
    all_deltas = all_deltas[np.isfinite(all_deltas)]
    point = sign * (metric(metric_name, y, challenger) - metric(metric_name, y, champion))
    alpha = 1.0 - confidence
    low, high = np.quantile(all_deltas, [alpha / 2, 1 - alpha / 2])
    return float(point), float(low), float(high)


def decide(
    gate: GateSpec, point: float, ci_low: float, ci_high: float, metric_name: str
) -> tuple[bool, str, GateCheck]:
    """Superiority: promote when the CI's lower bound clears min_improvement. Non-inferiority: above -margin."""
    ci = f"{metric_name} delta {point:+.4f} ({gate.confidence:.0%} CI {ci_low:+.4f}..{ci_high:+.4f})"
    if gate.mode == "superiority":
        passed = ci_low > gate.min_improvement
        bar = f"lower bound must exceed {gate.min_improvement:+.4f}"
    else:
        passed = ci_low > -gate.non_inferiority_margin
        bar = f"lower bound must stay above {-gate.non_inferiority_margin:+.4f} (non-inferiority)"
    reason = f"{ci}: {'passes' if passed else 'fails'}, {bar}"
    return passed, reason, GateCheck(name=f"{gate.mode}:{metric_name}", passed=passed, detail=reason)


def evaluate(
    spec: ModelSpec,
    trained: TrainResult,
    registry: ModelRegistry,
    force: bool = False,
    force_reason: str | None = None,
    forced_by: str | None = None,
) -> GateDecision:
    from ct_pipeline.train import best_candidate, load_split

    if force and not (force_reason and force_reason.strip()):
        raise ValueError("force needs a reason (who asked and why); it is recorded with the promotion")
    best = best_candidate(spec, trained)
    challenger = ModelRef(version=best.version, run_id=best.run_id, metric=best.primary_metric)
    registry.set_alias(spec.registered_model_name, CHALLENGER, best.version)
    champion_ref = registry.get_alias(spec.registered_model_name, CHAMPION)
    common = dict(
        model=spec.name,
        challenger=challenger,
        metric=spec.metric.name,
        direction=spec.direction,
        decided_at=datetime.now(UTC),
        snapshot=trained.snapshot,
        forced=force,
        forced_by=forced_by if force else None,
        force_reason=force_reason if force else None,
        extra={"candidates": {c.name: {"version": c.version, **c.metrics} for c in trained.candidates}},
    )

    def finish(promote: bool, reason: str, **fields) -> GateDecision:
        if force and not promote:
            promote, reason = True, f"forced by {forced_by or 'unknown'}: {force_reason} (gate said: {reason})"
        return GateDecision(promote=promote, reason=reason, **common, **fields)

    if champion_ref is None:
        return finish(
            True, "no champion yet", checks=[GateCheck(name="champion", passed=True, detail="no champion yet")]
        )
    if champion_ref.version == best.version:
        return finish(False, f"challenger v{best.version} already is the champion", champion=champion_ref)

    _, holdout = load_split(spec, trained.snapshot)
    X, y = holdout[spec.data.features], holdout[spec.data.target].to_numpy(dtype=float)
    try:
        champion_model = registry.load_pyfunc(spec.registered_model_name, champion_ref.version)
        champion_scores = scores_from_prediction(champion_model.predict(X))
    except RegistryError as exc:
        check = GateCheck(name="champion_loads", passed=False, detail=str(exc))
        return finish(
            False,
            f"champion v{champion_ref.version} cannot be loaded, refusing to compare: {exc}",
            champion=champion_ref,
            checks=[check],
        )
    challenger_scores = scores_from_prediction(
        registry.load_pyfunc(spec.registered_model_name, best.version).predict(X)
    )
    champion_ref = champion_ref.model_copy(update={"metric": metric(spec.metric.name, y, champion_scores)})
    point, low, high = paired_bootstrap(
        spec.metric.name,
        y,
        challenger_scores,
        champion_scores,
        resamples=spec.gate.bootstrap_resamples,
        confidence=spec.gate.confidence,
        seed=spec.gate.seed,
        maximize=spec.direction == "maximize",
    )
    passed, reason, check = decide(spec.gate, point, low, high, spec.metric.name)
    return finish(passed, reason, champion=champion_ref, delta=point, ci_low=low, ci_high=high, checks=[check])


def record_decision(spec: ModelSpec, decision: GateDecision, registry: ModelRegistry, tracking_uri: str) -> None:
    """Tags on the challenger version + the full record as an artifact of its run."""
    from mlflow import MlflowClient

    tags = {
        "ct.gate.decision": "promote" if decision.promote else "not_promoted",
        "ct.gate.reason": decision.reason[:4000],
        "ct.gate.forced": str(decision.forced).lower(),
    }
    if decision.delta is not None:
        tags.update(
            {"ct.gate.delta": f"{decision.delta:.6f}", "ct.gate.ci": f"{decision.ci_low:.6f},{decision.ci_high:.6f}"}
        )
    if decision.champion:
        tags["ct.gate.champion_version"] = decision.champion.version
    registry.set_version_tags(spec.registered_model_name, decision.challenger.version, tags)
    MlflowClient(tracking_uri=tracking_uri).log_dict(
        decision.challenger.run_id, decision.to_json_dict(), "gate/decision.json"
    )
