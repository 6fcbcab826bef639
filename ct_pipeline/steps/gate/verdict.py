"""Gate verdict: the primary comparison's bar (superiority or non-inferiority), then every judged check, then
force. Pure: no I/O."""

from __future__ import annotations

from ct_pipeline.domain.records import GateCheck, RunRequest
from ct_pipeline.domain.spec import GateSpec


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


def failure_reason(failing: list[GateCheck]) -> str:
    reason = f"{failing[0].name} failed: {failing[0].detail}"
    return reason + (f" (and {len(failing) - 1} more failing check(s))" if len(failing) > 1 else "")


def verdict(primary_ok: bool, primary_reason: str, checks: list[GateCheck], request: RunRequest) -> tuple[bool, str]:
    """(promote, reason). A forced run promotes whatever the gate said, and says both."""
    failing = [c for c in checks if c.judged and not c.passed]
    if not primary_ok:
        promote, reason = False, primary_reason
    elif failing:
        promote, reason = False, failure_reason(failing)
    else:
        promote, reason = True, primary_reason
    if request.force and not promote:
        promote, reason = True, f"forced by {request.requested_by or 'unknown'}: {request.reason} (gate said: {reason})"
    return promote, reason
