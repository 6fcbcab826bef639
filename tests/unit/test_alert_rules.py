"""Alert rules generated from the spec's monitoring section: one rule (or two) per monitor, thresholds and
``for`` carried over, every alert routed by ``ct_action``, metric names the same as the monitor and gateway use."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from ct_pipeline.domain import alert_rules as ar
from ct_pipeline.domain.monitor_report import M_BREACH, M_LAST_PROMOTION, M_LAST_REPORT, M_PROMISED, M_REALIZED
from ct_pipeline.domain.spec import load_spec
from tests.support.factories import make_spec

REPO = Path(__file__).resolve().parents[2]

# every monitor kind, with non-default thresholds so the test can see them carried over
EVERY_KIND = {
    "schedule": "@daily",
    "monitors": [
        {"name": "fd", "kind": "feature_drift", "threshold": 0.3, "on_breach": "retrain"},
        {"name": "sd", "kind": "score_drift", "statistic": "ks", "severity": "critical"},
        {"name": "nulls", "kind": "null_rate", "max_rate": 0.2, "max_increase": 0.05},
        {"name": "vol", "kind": "volume", "min_per_hour": 5, "max_per_hour": 5000},
        {
            "name": "perf",
            "kind": "performance",
            "labels": {"kind": "parquet", "path": "labels", "label": "is_fraud"},
            "metric": "average_precision",
            "tolerance": 0.02,
            "on_breach": "retrain",
        },
        {"name": "slo", "kind": "slo", "latency_p99_ms": 120, "error_rate": 0.005, "for": "2m"},
        {"name": "old", "kind": "stale_model", "max_age": "14d"},
    ],
}


def every_kind_spec(name: str = "every-kind"):
    return make_spec(name, monitoring=EVERY_KIND)


def fraud_spec():
    return load_spec(REPO / "models" / "fraud-detector.yaml")


def _rules(spec, **kw) -> list[dict]:
    data = ar.alert_rules(spec, **kw)
    assert len(data["groups"]) == 1
    return data["groups"][0]["rules"]


def _by_alert(rules: list[dict]) -> dict[str, dict]:
    out = {r["alert"]: r for r in rules}
    assert len(out) == len(rules), "alert names repeat within the group"
    return out


def test_fraud_detector_rules_structure():
    spec = fraud_spec()
    data = ar.alert_rules(spec)
    (group,) = data["groups"]
    assert group["name"] == "ct-fraud-detector"
    rules = _by_alert(group["rules"])
    assert set(rules) == {
        "CtFeatureDrift",
        "CtScoreDrift",
        "CtNullRate",
        "CtVolume",
        "CtPerformanceBelowPromise",
        "CtRealizedMetricBelowGateCI",
        "CtSloErrorRate",
        "CtSloLatencyP99",
        "CtModelStale",
        "CtMonitorStale",
        "CtMonitorMissing",
    }
    for rule in group["rules"]:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
        assert set(rule["labels"]) == {"model", "monitor", "severity", "ct_action"}
        assert rule["labels"]["model"] == "fraud-detector"
        assert rule["labels"]["ct_action"] in ("alert", "retrain")
        assert set(rule["annotations"]) == {"summary", "description", "reason"}
        assert all(rule["annotations"].values())
    # on_breach and severity come from the spec
    assert rules["CtFeatureDrift"]["labels"] == {
        "model": "fraud-detector",
        "monitor": "feature-drift",
        "severity": "warning",
        "ct_action": "retrain",
    }
    assert rules["CtScoreDrift"]["labels"]["ct_action"] == "alert"
    assert rules["CtPerformanceBelowPromise"]["labels"]["severity"] == "critical"
    assert rules["CtPerformanceBelowPromise"]["labels"]["ct_action"] == "retrain"


def test_pushed_breach_rules_fire_on_the_monitors_gauge_at_once():
    rules = _by_alert(_rules(fraud_spec()))
    for alert, monitor in [
        ("CtFeatureDrift", "feature-drift"),
        ("CtScoreDrift", "score-drift"),
        ("CtNullRate", "nulls"),
        ("CtVolume", "volume"),
        ("CtPerformanceBelowPromise", "performance"),
    ]:
        rule = rules[alert]
        assert rule["expr"] == f'{M_BREACH}{{model="fraud-detector",monitor="{monitor}"}} == 1'
        assert rule["for"] == "0s"
        assert rule["labels"]["monitor"] == monitor
    drift = rules["CtFeatureDrift"]["annotations"]
    assert "{{ $labels.subject }}" in drift["summary"]
    assert "{{ $labels.subject }}" in drift["reason"]
    # the statistic's value is read at alert time from the pushed drift gauge of the same feature
    assert "ct_monitor_drift_statistic{model=" in drift["description"]
    assert "| query }}" in drift["description"]


def test_every_monitor_kind_produces_its_rules():
    spec = every_kind_spec()
    rules = _rules(spec)
    by_monitor: dict[str, set[str]] = {}
    for rule in rules:
        by_monitor.setdefault(rule["labels"]["monitor"], set()).add(rule["alert"])
    assert by_monitor == {
        "fd": {"CtFeatureDrift"},
        "sd": {"CtScoreDrift"},
        "nulls": {"CtNullRate"},
        "vol": {"CtVolume"},
        "perf": {"CtPerformanceBelowPromise", "CtRealizedMetricBelowGateCI"},
        "slo": {"CtSloErrorRate", "CtSloLatencyP99"},
        "old": {"CtModelStale"},
        "monitor-job": {"CtMonitorStale", "CtMonitorMissing"},
    }
    assert {m.kind for m in spec.monitoring.monitors} == {
        "feature_drift",
        "score_drift",
        "null_rate",
        "volume",
        "performance",
        "slo",
        "stale_model",
    }


def test_thresholds_and_for_are_carried_over():
    rules = _by_alert(_rules(every_kind_spec("m1")))
    assert rules["CtScoreDrift"]["labels"]["severity"] == "critical"
    assert "fixed threshold 0.3" in rules["CtFeatureDrift"]["annotations"]["description"]
    assert "max rate 0.2" in rules["CtNullRate"]["annotations"]["reason"]
    assert "max increase over the reference 0.05" in rules["CtNullRate"]["annotations"]["reason"]
    assert "min 5/h, max 5000/h" in rules["CtVolume"]["annotations"]["reason"]

    error = rules["CtSloErrorRate"]
    assert error["for"] == "2m"
    assert error["expr"] == (
        'sum by (model) (rate(ct_gateway_requests_total{job="ct-gateway",model="m1",endpoint="/predict",'
        'status=~"5.."}[5m])) / sum by (model) (rate(ct_gateway_requests_total{job="ct-gateway",model="m1",'
        'endpoint="/predict"}[5m])) > 0.005'
    )
    latency = rules["CtSloLatencyP99"]
    assert latency["for"] == "2m"
    assert latency["expr"] == (
        "histogram_quantile(0.99, sum by (model, le) (rate(ct_gateway_request_duration_seconds_bucket"
        '{job="ct-gateway",model="m1",endpoint="/predict"}[5m]))) > 0.12'
    )

    ci = rules["CtRealizedMetricBelowGateCI"]
    assert ci["expr"] == (
        f'{M_REALIZED}{{model="m1",metric="average_precision",bound="ci_high"}} < on(model, metric) '
        f'{M_PROMISED}{{model="m1",metric="average_precision",bound="ci_low"}} - 0.02'
    )
    assert ci["labels"]["ct_action"] == "retrain"

    assert rules["CtModelStale"]["expr"] == f'time() - {M_LAST_PROMOTION}{{model="m1"}} > {14 * 86400}'
    # @daily: stale after 3 days without a report
    assert rules["CtMonitorStale"]["expr"] == f'time() - {M_LAST_REPORT}{{model="m1"}} > {3 * 86400}'
    assert rules["CtMonitorMissing"]["expr"] == f'absent({M_LAST_REPORT}{{model="m1"}})'
    assert rules["CtMonitorMissing"]["for"] == "3d"


def test_fraud_detector_thresholds():
    rules = _by_alert(_rules(fraud_spec()))
    assert rules["CtSloErrorRate"]["expr"].endswith("> 0.01")
    assert rules["CtSloErrorRate"]["for"] == "5m"  # the slo monitor's default
    assert rules["CtSloLatencyP99"]["expr"].endswith("> 0.25")
    assert rules["CtModelStale"]["expr"].endswith(f"> {30 * 86400}")
    assert rules["CtMonitorStale"]["expr"].endswith(f"> {3 * 3600}")  # @hourly
    # the gate metric when the performance monitor names none; tolerance 0
    assert 'metric="roc_auc",bound="ci_high"' in rules["CtRealizedMetricBelowGateCI"]["expr"]
    assert rules["CtRealizedMetricBelowGateCI"]["expr"].endswith("- 0")


def test_gateway_job_and_group_interval():
    rules = _by_alert(_rules(fraud_spec(), job_gateway="serving/ct-fraud", interval="30s"))
    assert 'job="serving/ct-fraud"' in rules["CtSloErrorRate"]["expr"]
    assert ar.alert_rules(fraud_spec(), interval="30s")["groups"][0]["interval"] == "30s"
    assert "interval" not in ar.alert_rules(fraud_spec())["groups"][0]


def test_no_schedule_no_monitor_health_rules_and_default_monitors():
    spec = make_spec(
        "manual", monitoring={"schedule": None, "monitors": [{"name": "v", "kind": "volume", "max_per_hour": 9}]}
    )
    assert [r["alert"] for r in _rules(spec)] == ["CtVolume"]
    # no monitoring section: the defaults (feature and score drift, alert only)
    default = _by_alert(_rules(make_spec("plain")))
    assert set(default) == {"CtFeatureDrift", "CtScoreDrift", "CtMonitorStale", "CtMonitorMissing"}
    assert default["CtFeatureDrift"]["labels"]["ct_action"] == "alert"


@pytest.mark.parametrize(
    ("schedule", "seconds"),
    [("@hourly", 3 * 3600), ("@weekly", 3 * 7 * 86400), ("30m", 90 * 60), ("0 */6 * * *", 3 * 86400)],
)
def test_monitor_stale_after_three_periods(schedule, seconds):
    # a cron expression falls back to the report window (24h by default)
    spec = make_spec("s", monitoring={"schedule": schedule, "monitors": []})
    rule = _by_alert(_rules(spec))["CtMonitorStale"]
    assert rule["expr"].endswith(f"> {seconds}")


def test_gateway_metric_names_match_what_the_gateway_exposes():
    from gateway.core import Gateway
    from gateway.settings import GatewaySettings
    from prometheus_client import generate_latest

    gateway = Gateway(GatewaySettings(upstream_url="http://model-a:3700"))
    gateway.observe("/predict", "POST", 503, 0.02)
    exposed = generate_latest(gateway.registry).decode()
    assert 'ct_gateway_requests_total{endpoint="/predict",method="POST",status="503"} 1.0' in exposed
    assert 'ct_gateway_request_duration_seconds_bucket{endpoint="/predict",le="0.025",method="POST",status="503"}' in (
        exposed
    )
    assert ar.M_GATEWAY_REQUESTS == "ct_gateway_requests_total"
    assert ar.M_GATEWAY_LATENCY_BUCKET == "ct_gateway_request_duration_seconds_bucket"


def test_yaml_round_trips_and_keeps_rule_order():
    spec = fraud_spec()
    text = ar.alert_rules_yaml(spec)
    assert text.startswith("# Generated by ct-pipeline")
    assert "&id" not in text and "*id" not in text  # no YAML anchors/aliases in a rule file
    parsed = YAML(typ="safe").load(io.StringIO(text))
    assert parsed == ar.alert_rules(spec)
    first = text.index("- alert: CtFeatureDrift")
    assert text.index("expr:", first) < text.index("labels:", first) < text.index("annotations:", first)


def test_prometheus_rule_manifest():
    spec = fraud_spec()
    manifest = ar.prometheus_rule_manifest(spec, "ct-staging", labels={"release": "kube-prometheus-stack"})
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "ct-fraud-detector-alerts"
    assert manifest["metadata"]["namespace"] == "ct-staging"
    assert manifest["metadata"]["labels"]["ct-pipeline.io/model"] == "fraud-detector"
    assert manifest["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert manifest["spec"] == ar.alert_rules(spec)


def test_prom_duration():
    from datetime import timedelta

    assert ar.prom_duration(timedelta(hours=3)) == "3h"
    assert ar.prom_duration(timedelta(days=14)) == "2w"
    assert ar.prom_duration(timedelta(seconds=90)) == "90s"
    assert ar.prom_duration(timedelta(0)) == "0s"
