"""Prometheus alert rules generated from a spec's ``monitoring:`` section (alerts as code). No I/O here.

One rule group per model (``ct-<model>``). What each monitor kind fires on:

- feature_drift, score_drift, null_rate, volume, performance: the monitor job's own verdict, pushed to the
  Pushgateway as ``ct_monitor_breach{model, monitor, kind, subject, action, severity}`` (1 breached, 0 not). The
  monitor judged a whole window, so these fire at once (``for: 0s``) and stop when the next report pushes 0.
  performance also gets a rule on the pushed numbers themselves: the realized metric's CI upper end below the
  CI low end the gate promised (minus the monitor's tolerance).
- slo: Prometheus judges the gateway's scraped ``ct_gateway_*`` metrics itself (5xx share and p99 latency of
  ``/predict`` over 5 minutes), for the monitor's ``for``.
- stale_model: no promotion for ``max_age``.
- always: ``CtMonitorStale`` (no report for 3 schedule periods) and ``CtMonitorMissing`` (no report ever pushed).

Every alert carries ``model``, ``monitor``, ``severity`` and ``ct_action`` (the monitor's ``on_breach``: alert or
retrain; Alertmanager routes ``ct_action="retrain"`` to the retrain webhook), and the annotations ``summary``,
``description`` and ``reason`` (one line, what the retrain request records as its reason).
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ct_pipeline.domain.monitor_report import (
    M_BREACH,
    M_DRIFT,
    M_DRIFT_THRESHOLD,
    M_FINDING,
    M_LAST_PROMOTION,
    M_LAST_REPORT,
    M_NULL_RATE,
    M_PROMISED,
    M_REALIZED,
    M_VOLUME_PER_HOUR,
)
from ct_pipeline.domain.monitoring import (
    FeatureDriftMonitor,
    MonitoringSpec,
    NullRateMonitor,
    PerformanceMonitor,
    ScoreDriftMonitor,
    SloMonitor,
    StaleModelMonitor,
    VolumeMonitor,
)

if TYPE_CHECKING:
    from ct_pipeline.domain.monitoring import Monitor
    from ct_pipeline.domain.spec import ModelSpec

GATEWAY_JOB = "ct-gateway"
M_GATEWAY_REQUESTS = "ct_gateway_requests_total"  # Counter ct_gateway_requests{endpoint, method, status}
M_GATEWAY_LATENCY_BUCKET = "ct_gateway_request_duration_seconds_bucket"  # Histogram, seconds
SLO_ENDPOINT = "/predict"
SLO_RANGE = "5m"
STALE_REPORT_PERIODS = 3  # CtMonitorStale: no report for this many schedule periods
PRESET_PERIODS = {
    "@hourly": timedelta(hours=1),
    "@daily": timedelta(days=1),
    "@midnight": timedelta(days=1),
    "@weekly": timedelta(weeks=1),
    "@monthly": timedelta(days=31),
    "@quarterly": timedelta(days=92),
    "@yearly": timedelta(days=366),
    "@annually": timedelta(days=366),
}

ALERT_NAMES = {
    "feature_drift": "CtFeatureDrift",
    "score_drift": "CtScoreDrift",
    "null_rate": "CtNullRate",
    "volume": "CtVolume",
    "performance": "CtPerformanceBelowPromise",
    "slo_error_rate": "CtSloErrorRate",
    "slo_latency": "CtSloLatencyP99",
    "stale_model": "CtModelStale",
    "realized_below_ci": "CtRealizedMetricBelowGateCI",
    "monitor_stale": "CtMonitorStale",
    "monitor_missing": "CtMonitorMissing",
}


def group_name(model: str) -> str:
    return f"ct-{model}"


def prom_duration(delta: timedelta) -> str:
    """A Prometheus duration string in the largest whole unit: 3h, 30d, 90s, 0s."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def schedule_period(schedule: str | None, fallback: timedelta) -> timedelta | None:
    """The monitor DAG's period: presets and durations ('30m', '2h'); a cron expression -> ``fallback``;
    None (manual runs only) -> None."""
    if schedule is None:
        return None
    if schedule in PRESET_PERIODS:
        return PRESET_PERIODS[schedule]
    from ct_pipeline.domain.spec import parse_window

    try:
        return parse_window(schedule)
    except Exception:
        return fallback


def _sel(name: str, **labels: str) -> str:
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _num(value: float) -> str:
    return f"{value:g}"


def _query_value(expr_format: str, *args: str, fmt: str = "%.4g") -> str:
    """A template that queries Prometheus for one value at alert time (or '?' if there is none)."""
    joined = " ".join(args)
    return (
        f"{{{{ with printf `{expr_format}` {joined} | query }}}}"
        f'{{{{ if . }}}}{{{{ . | first | value | printf "{fmt}" }}}}{{{{ else }}}}?{{{{ end }}}}{{{{ end }}}}'
    )


def _labels(model: str, monitor: Monitor) -> dict[str, str]:
    return {"model": model, "monitor": monitor.name, "severity": monitor.severity, "ct_action": monitor.on_breach}


def _report_words(fallback: str) -> str:
    """The monitor report's own line for this breach (its finding_info series), else ``fallback``."""
    return (
        f'{{{{ with printf `{M_FINDING}{{model="%s",monitor="%s",subject="%s"}}` '
        f"$labels.model $labels.monitor $labels.subject | query }}}}"
        f'{{{{ . | first | label "detail" }}}}{{{{ else }}}}{fallback}{{{{ end }}}}'
    )


def _rule(
    alert: str, expr: str, for_: str, labels: dict[str, str], summary: str, description: str, reason: str
) -> dict[str, Any]:
    if expr.startswith(M_BREACH + "{"):
        reason = _report_words(reason)
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": dict(labels),
        "annotations": {"summary": summary, "description": description, "reason": reason},
    }


def _breach_expr(model: str, monitor: Monitor) -> str:
    return f"{_sel(M_BREACH, model=model, monitor=monitor.name)} == 1"


_DRIFT_STAT = f'{M_DRIFT}{{model="%s",monitor="%s",feature="%s"}}'
_DRIFT_THRESHOLD = f'{M_DRIFT_THRESHOLD}{{model="%s",monitor="%s",feature="%s"}}'
_SUBJECT_ARGS = ("$labels.model", "$labels.monitor", "$labels.subject")


def _drift_rule(model: str, monitor: FeatureDriftMonitor | ScoreDriftMonitor) -> dict[str, Any]:
    what = "feature drift" if monitor.kind == "feature_drift" else "score drift"
    if isinstance(monitor, FeatureDriftMonitor):
        statistic = f"{monitor.numeric_statistic} (numeric) / {monitor.categorical_statistic} (categorical)"
    else:
        statistic = monitor.statistic
    value = _query_value(_DRIFT_STAT, *_SUBJECT_ARGS)
    threshold = _query_value(_DRIFT_THRESHOLD, *_SUBJECT_ARGS)
    cutoff = (
        f"fixed threshold {_num(monitor.threshold)}"
        if monitor.threshold is not None
        else f"threshold calibrated to a {_num(monitor.false_alarm_rate)} false-alarm rate"
    )
    reason = f"{what} on {{{{ $labels.subject }}}}: statistic {value} over threshold {threshold}"
    return _rule(
        ALERT_NAMES[monitor.kind],
        _breach_expr(model, monitor),
        "0s",
        _labels(model, monitor),
        f"{{{{ $labels.model }}}}: {what} on {{{{ $labels.subject }}}}",
        f"Monitor {{{{ $labels.monitor }}}} of {{{{ $labels.model }}}} found {what} on {{{{ $labels.subject }}}}: "
        f"{statistic} = {value} against threshold {threshold} ({cutoff}). "
        f"On breach: {monitor.on_breach}.",
        reason,
    )


def _null_rate_rule(model: str, monitor: NullRateMonitor) -> dict[str, Any]:
    rate = _query_value(f'{M_NULL_RATE}{{model="%s",feature="%s"}}', "$labels.model", "$labels.subject")
    limits = f"max rate {_num(monitor.max_rate)}"
    if monitor.max_increase is not None:
        limits += f", max increase over the reference {_num(monitor.max_increase)}"
    return _rule(
        ALERT_NAMES["null_rate"],
        _breach_expr(model, monitor),
        "0s",
        _labels(model, monitor),
        "{{ $labels.model }}: too many nulls in {{ $labels.subject }}",
        f"Monitor {{{{ $labels.monitor }}}} of {{{{ $labels.model }}}}: null rate of {{{{ $labels.subject }}}} is "
        f"{rate} ({limits}). On breach: {monitor.on_breach}.",
        f"null rate of {{{{ $labels.subject }}}} is {rate} ({limits})",
    )


def _volume_rule(model: str, monitor: VolumeMonitor) -> dict[str, Any]:
    per_hour = _query_value(f'{M_VOLUME_PER_HOUR}{{model="%s"}}', "$labels.model", fmt="%.1f")
    bounds = []
    if monitor.min_per_hour is not None:
        bounds.append(f"min {_num(monitor.min_per_hour)}/h")
    if monitor.max_per_hour is not None:
        bounds.append(f"max {_num(monitor.max_per_hour)}/h")
    allowed = ", ".join(bounds)
    return _rule(
        ALERT_NAMES["volume"],
        _breach_expr(model, monitor),
        "0s",
        _labels(model, monitor),
        "{{ $labels.model }}: prediction volume out of bounds",
        f"Monitor {{{{ $labels.monitor }}}} of {{{{ $labels.model }}}}: {per_hour} predictions per hour on average "
        f"in the window (allowed: {allowed}). On breach: {monitor.on_breach}.",
        f"prediction volume {per_hour}/h out of bounds ({allowed})",
    )


def _performance_rules(model: str, monitor: PerformanceMonitor, gate_metric: str) -> list[dict[str, Any]]:
    metric = monitor.metric or gate_metric
    ci = f'{{model="%s",metric="{_escape(metric)}",bound="%s"}}'
    realized_hi = _query_value(M_REALIZED + ci, "$labels.model", '"ci_high"')
    realized = _query_value(M_REALIZED + ci, "$labels.model", '"value"')
    promised_lo = _query_value(M_PROMISED + ci, "$labels.model", '"ci_low"')
    promised = _query_value(M_PROMISED + ci, "$labels.model", '"value"')
    tolerance = f" - {_num(monitor.tolerance)}" if monitor.tolerance else ""
    breach = _rule(
        ALERT_NAMES["performance"],
        _breach_expr(model, monitor),
        "0s",
        _labels(model, monitor),
        f"{{{{ $labels.model }}}}: realized {metric} below what the gate promised",
        f"Monitor {{{{ $labels.monitor }}}} of {{{{ $labels.model }}}}: realized {metric} {realized} (CI upper "
        f"{realized_hi}) on matured labels, the gate promised {promised} (CI low {promised_lo}){tolerance}. "
        f"On breach: {monitor.on_breach}.",
        f"realized {metric} {realized} (CI upper {realized_hi}) below the gate's CI low {promised_lo}{tolerance}",
    )
    expr = (
        f"{_sel(M_REALIZED, model=model, metric=metric, bound='ci_high')} < on(model, metric) "
        f"{_sel(M_PROMISED, model=model, metric=metric, bound='ci_low')} - {_num(monitor.tolerance)}"
    )
    below_ci = _rule(
        ALERT_NAMES["realized_below_ci"],
        expr,
        "0s",
        _labels(model, monitor),
        f"{{{{ $labels.model }}}}: realized {metric} CI entirely below the gate's CI",
        f'{{{{ $labels.model }}}}: the realized {metric}\'s CI upper end {{{{ $value | printf "%.4g" }}}} is below '
        f"the gate's CI low {promised_lo}{tolerance}. On breach: {monitor.on_breach}.",
        f'realized {metric} CI upper {{{{ $value | printf "%.4g" }}}} below the gate\'s CI low {promised_lo}'
        f"{tolerance}",
    )
    return [breach, below_ci]


def _slo_rules(model: str, monitor: SloMonitor, job: str) -> list[dict[str, Any]]:
    rules = []
    base = {"job": job, "model": model, "endpoint": SLO_ENDPOINT}
    if monitor.error_rate is not None:
        total = _sel(M_GATEWAY_REQUESTS, **base)
        errors = total[:-1] + ',status=~"5.."}'
        expr = (
            f"sum by (model) (rate({errors}[{SLO_RANGE}])) / sum by (model) (rate({total}[{SLO_RANGE}])) "
            f"> {_num(monitor.error_rate)}"
        )
        limit = f"{monitor.error_rate:.2%}"
        rules.append(
            _rule(
                ALERT_NAMES["slo_error_rate"],
                expr,
                monitor.for_,
                _labels(model, monitor),
                "{{ $labels.model }}: gateway error rate above the SLO",
                f"{{{{ $value | humanizePercentage }}}} of {SLO_ENDPOINT} requests to {{{{ $labels.model }}}} "
                f"answered 5xx over {SLO_RANGE} (SLO {limit}, for {monitor.for_}). On breach: {monitor.on_breach}.",
                f"gateway 5xx rate {{{{ $value | humanizePercentage }}}} above the SLO of {limit}",
            )
        )
    if monitor.latency_p99_ms is not None:
        buckets = _sel(M_GATEWAY_LATENCY_BUCKET, **base)
        expr = (
            f"histogram_quantile(0.99, sum by (model, le) (rate({buckets}[{SLO_RANGE}]))) "
            f"> {_num(monitor.latency_p99_ms / 1000.0)}"
        )
        limit = f"{_num(monitor.latency_p99_ms)} ms"
        rules.append(
            _rule(
                ALERT_NAMES["slo_latency"],
                expr,
                monitor.for_,
                _labels(model, monitor),
                "{{ $labels.model }}: gateway p99 latency above the SLO",
                f"p99 latency of {SLO_ENDPOINT} for {{{{ $labels.model }}}} is {{{{ $value | humanizeDuration }}}} "
                f"over {SLO_RANGE} (SLO {limit}, for {monitor.for_}). On breach: {monitor.on_breach}.",
                f"gateway p99 latency {{{{ $value | humanizeDuration }}}} above the SLO of {limit}",
            )
        )
    return rules


def _stale_model_rule(model: str, monitor: StaleModelMonitor) -> dict[str, Any]:
    from ct_pipeline.domain.spec import parse_window

    max_age = parse_window(monitor.max_age)
    return _rule(
        ALERT_NAMES["stale_model"],
        f"time() - {_sel(M_LAST_PROMOTION, model=model)} > {int(max_age.total_seconds())}",
        "0s",
        _labels(model, monitor),
        f"{{{{ $labels.model }}}}: no promotion for more than {monitor.max_age}",
        f"The last promotion of {{{{ $labels.model }}}} was {{{{ $value | humanizeDuration }}}} ago "
        f"(max age {monitor.max_age}). On breach: {monitor.on_breach}.",
        f"no promotion for {{{{ $value | humanizeDuration }}}} (max age {monitor.max_age})",
    )


def _monitor_health_rules(model: str, monitoring: MonitoringSpec) -> list[dict[str, Any]]:
    period = schedule_period(monitoring.schedule, fallback=monitoring.window_delta)
    if period is None:
        return []  # a monitor run by hand only: no schedule to be late for
    late = period * STALE_REPORT_PERIODS
    labels = {"model": model, "monitor": "monitor-job", "severity": "warning", "ct_action": "alert"}
    why = f"{STALE_REPORT_PERIODS}x the {monitoring.schedule} schedule"
    return [
        _rule(
            ALERT_NAMES["monitor_stale"],
            f"time() - {_sel(M_LAST_REPORT, model=model)} > {int(late.total_seconds())}",
            "0s",
            labels,
            "{{ $labels.model }}: the monitor has not reported for too long",
            f"The last monitor report of {{{{ $labels.model }}}} was {{{{ $value | humanizeDuration }}}} ago "
            f"(more than {prom_duration(late)}, {why}): drift and performance are not being judged.",
            f"no monitor report for {{{{ $value | humanizeDuration }}}} (more than {prom_duration(late)})",
        ),
        _rule(
            ALERT_NAMES["monitor_missing"],
            f"absent({_sel(M_LAST_REPORT, model=model)})",
            prom_duration(late),
            labels,
            f"{model}: no monitor report has reached Prometheus",
            f"No {M_LAST_REPORT} for {model} for {prom_duration(late)} ({why}): the monitor job never pushed, "
            "or the Pushgateway is not scraped.",
            f"no monitor report reached Prometheus in {prom_duration(late)}",
        ),
    ]


def alert_rules(spec: ModelSpec, *, job_gateway: str = GATEWAY_JOB, interval: str | None = None) -> dict[str, Any]:
    """The Prometheus rule file (``{"groups": [...]}``) for ``spec``'s monitors; ``job_gateway`` is the scrape job
    of the model's gateway (its series must carry ``model``), ``interval`` the group's evaluation interval
    (default: Prometheus' global one)."""
    model = spec.name
    rules: list[dict[str, Any]] = []
    for monitor in spec.monitoring.monitors:
        if isinstance(monitor, FeatureDriftMonitor | ScoreDriftMonitor):
            rules.append(_drift_rule(model, monitor))
        elif isinstance(monitor, NullRateMonitor):
            rules.append(_null_rate_rule(model, monitor))
        elif isinstance(monitor, VolumeMonitor):
            rules.append(_volume_rule(model, monitor))
        elif isinstance(monitor, PerformanceMonitor):
            rules.extend(_performance_rules(model, monitor, spec.metric.name))
        elif isinstance(monitor, SloMonitor):
            rules.extend(_slo_rules(model, monitor, job_gateway))
        elif isinstance(monitor, StaleModelMonitor):
            rules.append(_stale_model_rule(model, monitor))
        else:  # pragma: no cover - the Monitor union is closed
            raise TypeError(f"no alert rule for monitor kind {monitor.kind!r}")
    rules.extend(_monitor_health_rules(model, spec.monitoring))
    group: dict[str, Any] = {"name": group_name(model)}
    if interval:
        group["interval"] = interval
    group["rules"] = rules
    return {"groups": [group]}


def dump_yaml(data: Any) -> str:
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip dumper: keeps the keys in the order built (alert, expr, for, labels, annotations)
    yaml.default_flow_style = False
    yaml.width = 4096
    yaml.representer.ignore_aliases = lambda *_: True
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def alert_rules_yaml(spec: ModelSpec, *, job_gateway: str = GATEWAY_JOB, interval: str | None = None) -> str:
    """:func:`alert_rules` as a rule file's YAML text (what ``promtool check rules`` and Prometheus read)."""
    header = f"# Generated by ct-pipeline from the monitoring section of model {spec.name!r}; do not edit.\n"
    return header + dump_yaml(alert_rules(spec, job_gateway=job_gateway, interval=interval))


def prometheus_rule_manifest(
    spec: ModelSpec, namespace: str, *, job_gateway: str = GATEWAY_JOB, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The same groups as a Prometheus Operator ``PrometheusRule`` object (for the chart / the GitOps repo);
    ``labels`` are added to its metadata (e.g. the ``release`` label a Prometheus' ruleSelector matches)."""
    meta_labels = {
        "app.kubernetes.io/part-of": "ct-pipeline",
        "app.kubernetes.io/component": "alert-rules",
        "ct-pipeline.io/model": spec.name,
        **(labels or {}),
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": f"ct-{spec.name}-alerts", "namespace": namespace, "labels": meta_labels},
        "spec": alert_rules(spec, job_gateway=job_gateway),
    }
