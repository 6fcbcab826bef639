"""The monitors' verdicts: the window's statistics judged by each monitor of the spec, one line each."""

from __future__ import annotations

from typing import Any

from ct_pipeline.domain.drift import DriftResult
from ct_pipeline.domain.monitor_report import DriftCheck, Finding, PerformanceCheck, VolumeStats
from ct_pipeline.domain.monitoring import (
    FeatureDriftMonitor,
    MonitoringSpec,
    NullRateMonitor,
    PerformanceMonitor,
    ScoreDriftMonitor,
    VolumeMonitor,
)
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.steps.monitor.window import SCORE, WindowStats

_LABEL = {"psi": "PSI", "ks": "KS", "chi2": "chi2", "js": "JS", "wasserstein": "W1/sd"}


def _check(monitor: str, result: DriftResult, fixed: float | None) -> DriftCheck:
    threshold = fixed if fixed is not None else result.threshold
    drifted = result.value > threshold if fixed is not None else result.drifted
    return DriftCheck(
        monitor=monitor,
        feature=result.feature,
        kind=result.kind,  # type: ignore[arg-type]
        statistic=result.statistic,
        value=result.value,
        threshold=threshold,
        p_value=result.p_value,
        n=result.n,
        reference_n=result.reference_n,
        drifted=drifted,
        null_rate=result.null_rate,
        reference_null_rate=result.reference_null_rate,
    )


def drift_detail(check: DriftCheck, rows: int) -> str:
    what = "the score" if check.feature == SCORE else f"`{check.feature}`"
    verb = "drifted" if check.drifted else "is stable"
    sign = ">" if check.drifted else "<="
    label = _LABEL.get(check.statistic, check.statistic)
    return f"{what} {verb}: {label} {check.value:.3g} {sign} {check.threshold:.3g} over {rows:,} predictions"


def drift_checks(spec: ModelSpec, stats: WindowStats) -> list[DriftCheck]:
    checks: list[DriftCheck] = []
    for monitor in spec.monitoring.monitors:
        if isinstance(monitor, FeatureDriftMonitor):
            names = monitor.features or spec.data.features
            for name in names:
                acc = stats.features[name]
                statistic = (
                    monitor.categorical_statistic if acc.reference.kind == "categorical" else monitor.numeric_statistic
                )
                result = acc.result(
                    statistic,
                    false_alarm_rate=monitor.false_alarm_rate,
                    tests=len(names),
                    min_effect=monitor.min_effect,
                )
                checks.append(_check(monitor.name, result, monitor.threshold))
        elif isinstance(monitor, ScoreDriftMonitor) and stats.score is not None:
            result = stats.score.result(
                monitor.statistic, false_alarm_rate=monitor.false_alarm_rate, tests=1, min_effect=monitor.min_effect
            )
            checks.append(_check(monitor.name, result, monitor.threshold))
    return checks


def volume_stats(stats: WindowStats) -> VolumeStats:
    per_hour = stats.per_hour
    return VolumeStats(
        hours=len(per_hour),
        per_hour_mean=float(per_hour.mean()) if len(per_hour) else 0.0,
        per_hour_min=float(per_hour.min()) if len(per_hour) else 0.0,
        per_hour_max=float(per_hour.max()) if len(per_hour) else 0.0,
        requests=stats.requests,
    )


def findings(
    monitoring: MonitoringSpec,
    stats: WindowStats,
    drift: list[DriftCheck],
    reference_null_rates: dict[str, float],
    performance: PerformanceCheck | None,
    judged: bool,
    why_not: str = "",
) -> list[Finding]:
    """One Finding per breached (or not judged) subject, and one per monitor that held."""
    out: list[Finding] = []
    for monitor in monitoring.monitors:
        base: dict[str, Any] = {
            "monitor": monitor.name,
            "kind": monitor.kind,
            "action": monitor.on_breach,
            "severity": monitor.severity,
        }
        if isinstance(monitor, FeatureDriftMonitor | ScoreDriftMonitor | NullRateMonitor) and not judged:
            out.append(Finding(**base, subject="window", breached=False, judged=False, detail=why_not))
            continue
        if isinstance(monitor, FeatureDriftMonitor | ScoreDriftMonitor):
            mine = [c for c in drift if c.monitor == monitor.name]
            hits = sorted((c for c in mine if c.drifted), key=lambda c: -c.value / max(c.threshold, 1e-12))
            for c in hits:
                out.append(Finding(**base, subject=c.feature, breached=True, detail=drift_detail(c, c.n)))
            if not hits:
                out.append(Finding(**base, subject="all", breached=False, detail=f"no drift in {len(mine)} checks"))
        elif isinstance(monitor, NullRateMonitor):
            names = monitor.features or list(stats.nulls)
            bad = []
            for name in names:
                rate, ref = stats.null_rate(name), reference_null_rates.get(name, 0.0)
                over = rate > monitor.max_rate or (
                    monitor.max_increase is not None and rate - ref > monitor.max_increase
                )
                if over:
                    bad.append(name)
                    out.append(
                        Finding(
                            **base,
                            subject=name,
                            breached=True,
                            detail=f"`{name}` is null in {rate:.1%} of {stats.rows:,} predictions "
                            f"(max {monitor.max_rate:.1%}, reference {ref:.1%})",
                        )
                    )
            if not bad:
                out.append(Finding(**base, subject="all", breached=False, detail="null rates within limits"))
        elif isinstance(monitor, VolumeMonitor):
            volume = volume_stats(stats)
            # the last hour is partial: judge the complete hours of the window
            complete = stats.per_hour[:-1] if len(stats.per_hour) > 1 else stats.per_hour
            low = monitor.min_per_hour is not None and float(complete.min()) < monitor.min_per_hour
            high = monitor.max_per_hour is not None and float(complete.max()) > monitor.max_per_hour
            detail = (
                f"{volume.per_hour_mean:,.1f} predictions/hour on average "
                f"(min {float(complete.min()):,.0f}, max {float(complete.max()):,.0f} over {len(complete)} hours)"
            )
            if low:
                detail = f"volume too low: {detail}, below {monitor.min_per_hour:g}/hour"
            elif high:
                detail = f"volume too high: {detail}, above {monitor.max_per_hour:g}/hour"
            out.append(Finding(**base, subject="volume", breached=low or high, detail=detail))
        elif isinstance(monitor, PerformanceMonitor) and performance is not None:
            out.append(
                Finding(
                    **base,
                    subject=performance.metric,
                    breached=performance.breached,
                    judged=performance.judged,
                    detail=performance.detail,
                )
            )
    return out


def retrain_reason(found: list[Finding]) -> str | None:
    """The reason carried into the training run and its promotion PR, e.g. "retrained because `amount` drifted:
    PSI 0.31 > 0.2 over 48,210 predictions"."""
    wanted = [f for f in found if f.breached and f.action == "retrain"]
    if not wanted:
        return None
    first, more = wanted[0], len(wanted) - 1
    tail = f" (and {more} more breach{'es' if more > 1 else ''})" if more else ""
    return f"retrained because {first.detail}{tail}"
