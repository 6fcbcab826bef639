"""The Grafana dashboard is generated (ct_pipeline.domain.dashboard) and committed into the chart: the committed
file must be what the code writes, and every panel may only query metrics that exist (the monitor's M_* names,
the gateway's own series as its registry exports them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.core import Gateway
from gateway.settings import GatewaySettings
from prometheus_client import generate_latest

from ct_pipeline.domain import monitor_report
from ct_pipeline.domain.dashboard import (
    DASHBOARD_PATH,
    GATEWAY_METRICS,
    MONITOR_METRICS,
    grafana_dashboard,
    render_dashboard,
)

REPO = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b(ct_[a-z0-9_]+)")


def _queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_committed_dashboard_is_the_generated_one():
    committed = (REPO / DASHBOARD_PATH).read_text()
    assert committed == render_dashboard(), f"{DASHBOARD_PATH} is stale: run `python -m ct_pipeline.domain.dashboard`"
    assert json.loads(committed) == grafana_dashboard()


def test_every_query_names_a_known_metric():
    names = {getattr(monitor_report, n) for n in dir(monitor_report) if n.startswith("M_")}
    assert set(MONITOR_METRICS) == names  # the dashboard knows every metric the monitor pushes
    dashboard = grafana_dashboard()
    used = {m for q in _queries(dashboard) for m in METRIC.findall(q)}
    assert used - names - set(GATEWAY_METRICS) == set(), "a panel queries a metric nobody exports"
    assert names - used == set(), "a pushed metric no panel shows"
    assert set(GATEWAY_METRICS) <= used


def test_gateway_metric_names_and_labels_are_the_gateways():
    """The names the dashboard joins on are exactly what the gateway's registry exposes."""
    gw = Gateway(GatewaySettings(upstream_url="http://model:3000"))
    gw.observe("/predict", "POST", 200, 0.01)
    gw.rows.labels("fraud", "3").inc()
    text = generate_latest(gw.registry).decode()
    assert 'ct_gateway_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert (
        'ct_gateway_request_duration_seconds_bucket{endpoint="/predict",le="0.01",method="POST",status="200"}' in text
    )
    assert 'ct_gateway_predicted_rows_total{model="fraud",version="3"} 1.0' in text
    exported = set(re.findall(r"^(ct_gateway_[a-z_]+)(?:\{| )", text, re.M))
    assert set(GATEWAY_METRICS) <= exported


def test_dashboard_structure():
    d = grafana_dashboard("my title")
    assert d["title"] == "my title" and d["schemaVersion"] == 39 and d["uid"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["model"]["query"]["query"] == "label_values(ct_monitor_window_predictions, model)"
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in d["panels"]}
    expected = {"Feature drift statistic vs threshold", "Score drift", "Breaches by monitor", "Predictions per hour",
                "Null rate per feature", "Realized vs promised metric", "Request rate by status", "5xx rate",
                "p99 latency", "Days since last promotion"}  # fmt: skip
    assert expected <= titles
    cells: set[tuple[int, int]] = set()  # panels do not overlap on the 24-column grid
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert '$model"' in t["expr"], (p["title"], t["expr"])  # every query is scoped to the chosen model
            assert t["expr"].count("(") == t["expr"].count(")")
    p99 = next(p for p in d["panels"] if p["title"] == "p99 latency")["targets"][0]["expr"]
    assert (
        p99.startswith("histogram_quantile(0.99, sum by (le) (") and "ct_gateway_request_duration_seconds_bucket" in p99
    )
