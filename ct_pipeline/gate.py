"""Step 3: champion vs challenger on the same recent holdout rows, decided on evidence.

The challenger is the best candidate. The champion (alias ``champion``) is loaded from the registry, which
also proves its artifacts still exist. A seeded paired bootstrap over the holdout rows gives the
metric delta and its confidence interval; the decision is a typed record stored on the challenger's run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from ct_pipeline.domain.metrics import metric, scores_from_prediction, weighted_metric
from ct_pipeline.domain.records import GateCheck, GateDecision, ModelRef, SliceResult, TrainResult
from ct_pipeline.domain.spec import GateSpec, ModelSpec, TaskType
from ct_pipeline.registry import CHALLENGER, CHAMPION, FINGERPRINT, ROLLED_BACK, ModelRegistry, RegistryError

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
            elif classification and min(positives, rows - positives) < cfg.min_positives:
                note = f"{positives} positives / {rows - positives} negatives < min_positives {cfg.min_positives}"
            observed = dict(column=column, value=str(value), rows=rows, positives=positives)
            if note:
                results.append(SliceResult(**observed, judged=False, passed=True, note=note))
                continue
            chal = metric(spec.metric.name, y[mask], challenger[mask])
            champ = metric(spec.metric.name, y[mask], champion[mask])
            delta = sign * (chal - champ)
            results.append(
                SliceResult(
                    **observed,
                    champion_metric=champ,
                    challenger_metric=chal,
                    delta=delta,
                    judged=True,
                    passed=delta >= -cfg.max_degradation,
                )
            )
    judged = [r for r in results if r.judged]
    worst = min(judged, key=lambda r: r.delta, default=None)
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


def single_row_latency_p95_ms(model, X: pd.DataFrame, samples: int) -> float:
    """p95 of one-row pyfunc predictions (schema enforcement included, as a server would pay it)."""
    rows = [X.iloc[[i % len(X)]] for i in range(samples)]
    model.predict(rows[0])  # warm-up: lazy imports, caches
    timings = np.empty(samples)
    for i, row in enumerate(rows):
        started = time.perf_counter()
        model.predict(row)
        timings[i] = time.perf_counter() - started
    return float(np.percentile(timings, 95) * 1000)


def model_size_bytes(model) -> int | None:
    size = getattr(getattr(model, "metadata", None), "model_size_bytes", None)
    return int(size) if size else None


def rolled_back_check(spec: ModelSpec, registry: ModelRegistry, version: str) -> GateCheck:
    """A model that was rolled back comes back only with force and a reason, not with the next scheduled run."""
    model = spec.registered_model_name
    mine = registry.get_version_tags(model, version).get(FINGERPRINT)
    for other in registry.versions_tagged(model, ROLLED_BACK, "true"):
        tags = registry.get_version_tags(model, other)
        if other == version or (mine and tags.get(FINGERPRINT) == mine):
            commit = tags.get(f"{ROLLED_BACK}.commit", "")[:10]
            same = "is" if other == version else f"is the same model (data and candidate) as v{other}, which was"
            return GateCheck(
                name="rolled_back",
                passed=False,
                detail=f"v{version} {same} rolled back ({commit}); promote it again only with force and a reason",
            )
    return GateCheck(name="rolled_back", passed=True, judged=False, detail="not a rolled-back model")


def _failure_reason(failing: list[GateCheck]) -> str:
    reason = f"{failing[0].name} failed: {failing[0].detail}"
    return reason + (f" (and {len(failing) - 1} more failing check(s))" if len(failing) > 1 else "")


def evaluate(
    spec: ModelSpec,
    trained: TrainResult,
    registry: ModelRegistry,
    force: bool = False,
    force_reason: str | None = None,
    forced_by: str | None = None,
    plot_sink: dict[str, bytes] | None = None,
) -> GateDecision:
    """Decide on the best candidate. ``plot_sink``, when given, receives the evidence plots (name -> PNG)."""
    from ct_pipeline.train import best_candidate, load_split

    if force and not (force_reason and force_reason.strip()):
        raise ValueError("force needs a reason (who asked and why); it is recorded with the promotion")
    gate = spec.gate
    best = best_candidate(spec, trained)
    challenger = ModelRef(version=best.version, run_id=best.run_id, metric=best.primary_metric)
    registry.set_alias(spec.registered_model_name, CHALLENGER, best.version)
    champion_ref = registry.get_alias(spec.registered_model_name, CHAMPION)
    _, holdout = load_split(spec, trained.snapshot)
    X, y = holdout[spec.data.features], holdout[spec.data.target].to_numpy(dtype=float)

    challenger_model = registry.load_pyfunc(spec.registered_model_name, best.version)
    challenger_scores = scores_from_prediction(challenger_model.predict(X))
    challenger = challenger.model_copy(update={"metric": metric(spec.metric.name, y, challenger_scores)})
    checks = [prediction_check(challenger_scores, spec.task)]
    latency = single_row_latency_p95_ms(challenger_model, X, gate.latency_samples)
    size = model_size_bytes(challenger_model)
    limit = gate.max_latency_p95_ms
    checks.append(
        GateCheck(
            name="latency_p95",
            passed=limit is None or latency <= limit,
            judged=limit is not None,
            detail=f"single-row p95 {latency:.2f} ms" + (f" (limit {limit:g} ms)" if limit else ""),
        )
    )
    size_limit = gate.max_model_size_mb
    size_mb = size / 1e6 if size else None
    checks.append(
        GateCheck(
            name="model_size",
            judged=size_limit is not None and size_mb is not None,
            passed=size_limit is None or size_mb is None or size_mb <= size_limit,
            detail=(f"{size_mb:.2f} MB" if size_mb is not None else "unknown")
            + (f" (limit {size_limit:g} MB)" if size_limit else ""),
        )
    )
    fields: dict = dict(
        model=spec.name,
        challenger=challenger,
        metric=spec.metric.name,
        direction=spec.direction,
        decided_at=datetime.now(UTC),
        snapshot=trained.snapshot,
        holdout_rows=len(holdout),
        latency_p95_ms=latency,
        model_size_bytes=size,
        forced=force,
        forced_by=forced_by if force else None,
        force_reason=force_reason if force else None,
        extra={"candidates": {c.name: {"version": c.version, **c.metrics} for c in trained.candidates}},
    )
    champion_scores = None
    if champion_ref is None:
        primary_ok, primary_reason = True, "no champion yet"
        checks.insert(0, GateCheck(name="champion", passed=True, detail="no champion yet"))
    elif champion_ref.version == best.version:
        primary_ok, primary_reason = False, f"challenger v{best.version} already is the champion"
        fields["champion"] = champion_ref
    else:
        try:
            champion_model = registry.load_pyfunc(spec.registered_model_name, champion_ref.version)
            champion_scores = scores_from_prediction(champion_model.predict(X))
        except RegistryError as exc:
            checks.insert(0, GateCheck(name="champion_loads", passed=False, detail=str(exc)))
            primary_ok = False
            primary_reason = f"champion v{champion_ref.version} cannot be loaded, refusing to compare: {exc}"
            fields["champion"] = champion_ref
        else:
            fields["champion"] = champion_ref.model_copy(
                update={"metric": metric(spec.metric.name, y, champion_scores)}
            )
            fields["champion_latency_p95_ms"] = single_row_latency_p95_ms(champion_model, X, gate.latency_samples)
            fields["champion_model_size_bytes"] = model_size_bytes(champion_model)
            point, low, high = paired_bootstrap(
                spec.metric.name,
                y,
                challenger_scores,
                champion_scores,
                resamples=gate.bootstrap_resamples,
                confidence=gate.confidence,
                seed=gate.seed,
                maximize=spec.direction == "maximize",
            )
            primary_ok, primary_reason, primary = decide(gate, point, low, high, spec.metric.name)
            checks.insert(0, primary)
            fields.update(delta=point, ci_low=low, ci_high=high)
            fields["slices"], slice_checks = slice_results(spec, holdout, y, challenger_scores, champion_scores)
            checks.extend(slice_checks)

    checks.append(rolled_back_check(spec, registry, best.version))
    failing = [c for c in checks if c.judged and not c.passed]
    if not primary_ok:
        promote, reason = False, primary_reason
    elif failing:
        promote, reason = False, _failure_reason(failing)
    else:
        promote, reason = True, primary_reason
    if force and not promote:
        promote, reason = True, f"forced by {forced_by or 'unknown'}: {force_reason} (gate said: {reason})"
    decision = GateDecision(promote=promote, reason=reason, checks=checks, **fields)
    if plot_sink is not None:
        from ct_pipeline.plots import gate_plots

        plots = gate_plots(spec, decision, y, challenger_scores, champion_scores)
        plot_sink.update(plots)
        decision = decision.model_copy(update={"plots": [f"gate/plots/{name}" for name in plots]})
    return decision


def record_decision(
    spec: ModelSpec,
    decision: GateDecision,
    registry: ModelRegistry,
    tracking_uri: str,
    plots: dict[str, bytes] | None = None,
) -> None:
    """Tags on the challenger version + the full record (and its plots) as artifacts of its run."""
    import tempfile
    from pathlib import Path

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
    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_dict(decision.challenger.run_id, decision.to_json_dict(), "gate/decision.json")
    if plots:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in plots.items():
                (Path(tmp) / name).write_bytes(data)
            client.log_artifacts(decision.challenger.run_id, tmp, "gate/plots")
