"""The Grafana dashboard of a served model, generated from the metric names the monitor pushes and the gateway
exports, so the dashboard, the alert rules and the report read the same numbers. No I/O here (but
:func:`write_dashboard`, which ``python -m ct_pipeline.domain.dashboard`` runs).

The committed copy is ``charts/ct-serving/dashboards/ct-model.json``; the chart ships it as a ConfigMap labelled
``grafana_dashboard: "1"`` (the Grafana sidecar's convention). One dashboard serves every model: a ``model``
variable (``label_values(ct_monitor_window_predictions, model)``) selects it.

The gateway's series are selected by ``model`` like the monitor's: Prometheus puts the model on every series it
scrapes from a gateway (the chart's ServiceMonitor relabels it on, with ``job="ct-gateway"``; the local stack sets
it as a target label), which is also what the generated SLO alert rules select on.
"""

from __future__ import annotations

import json
from typing import Any

from ct_pipeline.domain.monitor_report import (
    M_BREACH,
    M_DRIFT,
    M_DRIFT_THRESHOLD,
    M_FINDING,
    M_LABELS,
    M_LAST_PROMOTION,
    M_LAST_REPORT,
    M_MODEL_VERSION,
    M_NULL_RATE,
    M_PREDICTIONS,
    M_PROMISED,
    M_REALIZED,
    M_VOLUME_PER_HOUR,
)

__all__ = [
    "DASHBOARD_PATH",
    "GATEWAY_LATENCY_BUCKET",
    "GATEWAY_METRICS",
    "GATEWAY_REQUESTS",
    "GATEWAY_ROWS",
    "MONITOR_METRICS",
    "render_dashboard",
    "grafana_dashboard",
    "write_dashboard",
]

# The gateway's own series (serving/gateway/core.py; prometheus_client adds _total / _bucket).
GATEWAY_REQUESTS = "ct_gateway_requests_total"  # {endpoint, method, status}
GATEWAY_LATENCY_BUCKET = "ct_gateway_request_duration_seconds_bucket"  # {endpoint, method, status, le}
GATEWAY_ROWS = "ct_gateway_predicted_rows_total"  # {model, version}
GATEWAY_METRICS = (GATEWAY_REQUESTS, GATEWAY_LATENCY_BUCKET, GATEWAY_ROWS)
MONITOR_METRICS = (
    M_DRIFT,
    M_DRIFT_THRESHOLD,
    M_BREACH,
    M_FINDING,
    M_NULL_RATE,
    M_PREDICTIONS,
    M_VOLUME_PER_HOUR,
    M_REALIZED,
    M_PROMISED,
    M_LABELS,
    M_LAST_PROMOTION,
    M_LAST_REPORT,
    M_MODEL_VERSION,
)
DASHBOARD_PATH = "charts/ct-serving/dashboards/ct-model.json"
UID = "ct-pipeline-model"
PREDICT = 'endpoint="/predict"'  # the gateway's own endpoints (/metrics, /readyz...) are not the SLO's
_DS = {"type": "prometheus", "uid": "${datasource}"}
_M = 'model="$model"'


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": _DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def _panel(
    pid: int,
    title: str,
    kind: str,
    grid: tuple[int, int, int, int],
    targets: list[tuple[str, str]],
    *,
    unit: str = "short",
    description: str = "",
    overrides: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": _DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides or []},
        "options": options or {},
        "targets": [_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(targets)],
    }


def _dashed(regex: str) -> dict[str, Any]:
    """A field override: series matching ``regex`` drawn dashed (thresholds, CI bounds)."""
    return {
        "matcher": {"id": "byRegexp", "options": regex},
        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
    }


def _row(pid: int, title: str, y: int) -> dict[str, Any]:
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}


def grafana_dashboard(title: str = "ct-pipeline model") -> dict[str, Any]:
    """The dashboard JSON (Grafana schemaVersion 39) for every model the monitor reports on."""
    rate = "[$__rate_interval]"
    requests = f"rate({GATEWAY_REQUESTS}{{{_M},{PREDICT}}}{rate})"
    errors = f'rate({GATEWAY_REQUESTS}{{{_M},{PREDICT},status=~"5.."}}{rate})'
    latency = f"rate({GATEWAY_LATENCY_BUCKET}{{{_M},{PREDICT}}}{rate})"
    panels = [
        _row(1, "Model", 0),
        _panel(
            2,
            "Days since last promotion",
            "stat",
            (0, 1, 6, 4),
            [(f"(time() - {M_LAST_PROMOTION}{{{_M}}}) / 86400", "{{model}}")],
            unit="d",
            description="A model ages even when no statistic has caught it yet (the stale_model monitor).",
        ),
        _panel(
            3,
            "Hours since last monitor report",
            "stat",
            (6, 1, 6, 4),
            [(f"(time() - {M_LAST_REPORT}{{{_M}}}) / 3600", "{{model}}")],
            unit="h",
        ),
        _panel(
            4,
            "Served version",
            "stat",
            (12, 1, 6, 4),
            [(f"max by (version) ({M_MODEL_VERSION}{{{_M}}})", "v{{version}}")],
            options={"textMode": "name", "reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        _panel(
            5,
            "Breaches",
            "stat",
            (18, 1, 6, 4),
            [(f"sum({M_BREACH}{{{_M}}})", "breached monitors")],
            description="Monitors in breach in the latest report (1 per breached monitor and subject).",
        ),
        _row(6, "Drift", 5),
        _panel(
            7,
            "Feature drift statistic vs threshold",
            "timeseries",
            (0, 6, 12, 8),
            [
                (f'{M_DRIFT}{{{_M},feature!="prediction"}}', "{{feature}} {{statistic}}"),
                (f'{M_DRIFT_THRESHOLD}{{{_M},feature!="prediction"}}', "threshold {{feature}}"),
            ],
            overrides=[_dashed("^threshold .*")],
            description="Each feature's statistic against its critical value at the window's sample size.",
        ),
        _panel(
            8,
            "Score drift",
            "timeseries",
            (12, 6, 12, 8),
            [
                (f'{M_DRIFT}{{{_M},feature="prediction"}}', "{{monitor}} {{statistic}}"),
                (f'{M_DRIFT_THRESHOLD}{{{_M},feature="prediction"}}', "threshold {{monitor}}"),
            ],
            overrides=[_dashed("^threshold .*")],
        ),
        _panel(
            9,
            "Breaches by monitor",
            "timeseries",
            (0, 14, 12, 8),
            [
                (f"{M_BREACH}{{{_M}}}", "{{monitor}} {{subject}} ({{action}}, {{severity}})"),
                (f"{M_FINDING}{{{_M}}}", "{{detail}}"),  # the report's own words for each breach
            ],
            options={"legend": {"displayMode": "table", "placement": "right"}},
        ),
        _panel(
            10,
            "Null rate per feature",
            "timeseries",
            (12, 14, 12, 8),
            [(f"{M_NULL_RATE}{{{_M}}}", "{{feature}}")],
            unit="percentunit",
        ),
        _row(11, "Volume and performance", 22),
        _panel(
            12,
            "Predictions per hour",
            "timeseries",
            (0, 23, 12, 8),
            [
                (f"{M_VOLUME_PER_HOUR}{{{_M}}}", "monitor window (mean per hour)"),
                (f"sum(rate({GATEWAY_ROWS}{{{_M}}}{rate})) * 3600", "gateway (now)"),
                (f"{M_PREDICTIONS}{{{_M}}}", "rows in the judged window"),
            ],
        ),
        _panel(
            13,
            "Realized vs promised metric",
            "timeseries",
            (12, 23, 12, 8),
            [
                (f'{M_REALIZED}{{{_M},bound="value"}}', "realized {{metric}}"),
                (f'{M_REALIZED}{{{_M},bound="ci_low"}}', "realized CI low"),
                (f'{M_REALIZED}{{{_M},bound="ci_high"}}', "realized CI high"),
                (f'{M_PROMISED}{{{_M},bound="value"}}', "promised {{metric}}"),
                (f'{M_PROMISED}{{{_M},bound="ci_low"}}', "promised CI low"),
                (f'{M_PROMISED}{{{_M},bound="ci_high"}}', "promised CI high"),
                (f"{M_LABELS}{{{_M}}}", "matured labels"),
            ],
            overrides=[
                _dashed(".* CI (low|high)$"),
                {
                    "matcher": {"id": "byName", "options": "matured labels"},
                    "properties": [{"id": "custom.axisPlacement", "value": "right"}, {"id": "unit", "value": "short"}],
                },
            ],
            description="The metric on matured labels with its CI, next to what the gate promised at promotion.",
        ),
        _row(14, "Gateway", 31),
        _panel(
            15,
            "Request rate by status",
            "timeseries",
            (0, 32, 8, 8),
            [(f"sum by (status) ({requests})", "{{status}}")],
            unit="reqps",
        ),
        _panel(
            16,
            "5xx rate",
            "timeseries",
            (8, 32, 8, 8),
            [(f"sum({errors}) / sum({requests})", "5xx share")],
            unit="percentunit",
        ),
        _panel(
            17,
            "p99 latency",
            "timeseries",
            (16, 32, 8, 8),
            [(f"histogram_quantile(0.99, sum by (le) ({latency}))", "p99")],
            unit="s",
        ),
    ]
    return {
        "uid": UID,
        "title": title,
        "description": "Drift, volume, null rates, realized performance and serving SLOs of a ct-pipeline model "
        "(generated by ct_pipeline.domain.dashboard; do not edit by hand).",
        "tags": ["ct-pipeline", "mlops"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "timezone": "utc",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": _DS,
                    "query": {"query": f"label_values({M_PREDICTIONS}, model)", "refId": "model"},
                    "definition": f"label_values({M_PREDICTIONS}, model)",
                    "refresh": 2,
                    "sort": 1,
                    "current": {},
                    "hide": 0,
                },
            ]
        },
        "panels": panels,
    }


def render_dashboard(title: str = "ct-pipeline model") -> str:
    """The dashboard as the committed file's text."""
    return json.dumps(grafana_dashboard(title), indent=2, sort_keys=True) + "\n"


def write_dashboard(path: str = DASHBOARD_PATH) -> str:
    """Regenerate the chart's dashboard file (``python -m ct_pipeline.domain.dashboard [PATH]``)."""
    from pathlib import Path

    Path(path).write_text(render_dashboard())
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(write_dashboard(*sys.argv[1:2]))
