"""The alert path on real parts: generated rules pass ``promtool``; a breach pushed through the real Pushgateway is
scraped by a real Prometheus, fires, reaches a real Alertmanager and arrives as its webhook POST (routed by
``ct_action``); a pushed 0 fires nothing; an unreachable Pushgateway is ``AlertPathDown`` naming its URL.

Needs Debian's prometheus, prometheus-alertmanager and prometheus-pushgateway (``make test`` installs them via
scripts/monitoring-setup.sh); without them these tests fail saying so.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack, MonitoringEndpoints, promtool_check
from ct_pipeline.adapters.prometheus import AlertmanagerAPI, PrometheusAPI, Pushgateway
from ct_pipeline.domain.alert_rules import alert_rules_yaml
from ct_pipeline.domain.monitor_report import M_BREACH, M_DRIFT, M_DRIFT_THRESHOLD, M_LAST_REPORT
from ct_pipeline.errors import AlertPathDown, MonitoringError
from ct_pipeline.settings import Settings
from tests.support.factories import free_tcp_port, make_spec
from tests.unit.test_alert_rules import every_kind_spec, fraud_spec

WAIT = 60.0  # bound on every wait for the alert path (scrape + evaluation at 1 s, group_wait 1 s)
CONTROL = "control-model"
SLO_MODEL = "slo-model"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


# -- (a) promtool ------------------------------------------------------------------------------------------


def test_promtool_accepts_the_generated_rules(tmp_path):
    for spec in (fraud_spec(), every_kind_spec()):
        path = tmp_path / f"{spec.name}.yml"
        path.write_text(alert_rules_yaml(spec))
        output = promtool_check(path)
        assert "SUCCESS" in output, output


def test_promtool_rejects_a_broken_rule_file(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(
        'groups:\n- name: ct-broken\n  rules:\n  - alert: CtBroken\n    expr: ct_monitor_breach{model="x" == 1\n'
    )
    with pytest.raises(MonitoringError, match=r"promtool check rules .*broken\.yml failed") as err:
        promtool_check(path)
    assert "CtBroken" in str(err.value) or "parse error" in str(err.value)
    # a bad template is caught as well, not only bad PromQL
    path.write_text(
        "groups:\n- name: ct-broken\n  rules:\n  - alert: CtBroken\n    expr: vector(1)\n"
        "    annotations:\n      summary: '{{ $labels.model '\n"
    )
    with pytest.raises(MonitoringError, match="failed"):
        promtool_check(path)


# -- (b) the real stack ------------------------------------------------------------------------------------


class _Webhook:
    """A tiny HTTP server on 127.0.0.1 that records Alertmanager's webhook POSTs."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, "body": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/retrain"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        return [alert for post in list(self.received) for alert in post["body"].get("alerts", [])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[_Webhook]:
    hook = _Webhook()
    yield hook
    hook.close()


class _GatewayMetrics:
    """The real gateway's /metrics (its own prometheus registry); every scrape first records 5 requests answered
    503 and 5 answered 200, all taking 0.2 s: a 50% error rate and a p99 near 0.25 s."""

    def __init__(self) -> None:
        from gateway.core import Gateway
        from gateway.settings import GatewaySettings
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        gateway = Gateway(GatewaySettings(upstream_url="http://127.0.0.1:9"))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                for status in (503, 200) * 5:
                    gateway.observe("/predict", "POST", status, 0.2)
                body = generate_latest(gateway.registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def slo_spec():
    # for: 0s so the test need not wait 5 minutes; the expressions are the ones every spec gets
    slo = {"name": "serving-slo", "kind": "slo", "error_rate": 0.01, "latency_p99_ms": 50, "for": "0s"}
    return make_spec(SLO_MODEL, monitoring={"monitors": [slo]})


@pytest.fixture(scope="module")
def gateway_metrics() -> Iterator[_GatewayMetrics]:
    server = _GatewayMetrics()
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, webhook, gateway_metrics) -> Iterator[tuple[LocalMonitoringStack, MonitoringEndpoints]]:
    settings = Settings().replace(paths={"home": tmp_path_factory.mktemp("ctpipe-alerting")})
    local = LocalMonitoringStack(
        settings, scrape_interval="1s", evaluation_interval="1s", group_wait="1s", group_interval="1s"
    )
    try:
        endpoints = local.up(
            [fraud_spec(), every_kind_spec(CONTROL), slo_spec()],
            {SLO_MODEL: [gateway_metrics.target]},
            webhook_url=webhook.url,
        )
        yield local, endpoints
    finally:
        local.down()
    assert not any(component["alive"] for component in local.status().values())


def _monitor_registry(model: str, breaches: dict[tuple[str, str, str, str], float]) -> CollectorRegistry:
    """What the monitor step pushes: breach gauges per (monitor, kind, subject, action), drift numbers, report time."""
    registry = CollectorRegistry()
    breach = Gauge(
        M_BREACH, "1 breached", ["model", "monitor", "kind", "subject", "action", "severity"], registry=registry
    )
    for (monitor, kind, subject, action), value in breaches.items():
        breach.labels(model, monitor, kind, subject, action, "warning").set(value)
    labels = ["model", "monitor", "feature", "statistic"]
    Gauge(M_DRIFT, "drift", labels, registry=registry).labels(model, "feature-drift", "amount", "psi").set(0.42)
    Gauge(M_DRIFT_THRESHOLD, "cut-off", labels, registry=registry).labels(model, "feature-drift", "amount", "psi").set(
        0.1
    )
    Gauge(M_LAST_REPORT, "report time", ["model"], registry=registry).labels(model).set(time.time())
    return registry


def _prom_alerts(api: PrometheusAPI, model: str, alertname: str | None = None, state: str | None = None) -> list:
    return [
        a
        for a in api.alerts()
        if a["labels"].get("model") == model
        and (alertname is None or a["labels"].get("alertname") == alertname)
        and (state is None or a["state"] == state)
    ]


def test_stack_is_up_with_the_generated_rules(stack):
    local, endpoints = stack
    status = local.status()
    assert all(c["alive"] and c["ready"] for c in status.values()), status
    assert {c["url"] for c in status.values()} == {
        endpoints.prometheus_url,
        endpoints.alertmanager_url,
        endpoints.pushgateway_url,
    }
    assert all(c["url"].startswith("http://127.0.0.1:") for c in status.values())
    prometheus = PrometheusAPI(endpoints.prometheus_url)
    groups = {g["name"]: g for g in prometheus.rules()}
    assert set(groups) == {"ct-fraud-detector", f"ct-{CONTROL}", f"ct-{SLO_MODEL}"}
    assert len(groups["ct-fraud-detector"]["rules"]) == 11
    assert AlertmanagerAPI(endpoints.alertmanager_url).ready()
    assert Pushgateway(endpoints.pushgateway_url).target == endpoints.pushgateway_url


def test_pushed_breach_fires_through_alertmanager_to_the_retrain_webhook(stack, webhook):
    _, endpoints = stack
    pusher = Pushgateway(endpoints.pushgateway_url)
    prometheus = PrometheusAPI(endpoints.prometheus_url)
    alertmanager = AlertmanagerAPI(endpoints.alertmanager_url)

    # control: the same gauges with breach 0 (the monitor judged, nothing breached)
    pusher.push(CONTROL, _monitor_registry(CONTROL, {("fd", "feature_drift", "amount", "retrain"): 0.0}))
    pusher.push(
        "fraud-detector",
        _monitor_registry(
            "fraud-detector",
            {
                ("feature-drift", "feature_drift", "amount", "retrain"): 1.0,  # on_breach: retrain
                ("score-drift", "score_drift", "prediction", "alert"): 1.0,  # on_breach: alert (not routed)
            },
        ),
    )
    started = time.monotonic()

    (firing,) = wait_for(
        "Prometheus to fire CtFeatureDrift",
        lambda: _prom_alerts(prometheus, "fraud-detector", "CtFeatureDrift", "firing"),
    )
    assert firing["labels"]["monitor"] == "feature-drift"
    assert firing["labels"]["subject"] == "amount"
    assert firing["labels"]["ct_action"] == "retrain"
    assert firing["labels"]["job"] == "ct_monitor"  # honor_labels kept the pushed job
    assert firing["annotations"]["reason"] == "feature drift on amount: statistic 0.42 over threshold 0.1"
    assert firing["annotations"]["summary"] == "fraud-detector: feature drift on amount"

    in_am = wait_for(
        "Alertmanager to hold CtFeatureDrift",
        lambda: alertmanager.alerts(['model="fraud-detector"', 'alertname="CtFeatureDrift"']),
    )
    assert in_am[0]["labels"]["ct_action"] == "retrain"
    assert in_am[0]["status"]["state"] == "active"
    assert "ct-retrain" in [r["name"] for r in in_am[0]["receivers"]]

    hooked = wait_for(
        "the retrain webhook POST",
        lambda: [a for a in webhook.alerts() if a["labels"].get("alertname") == "CtFeatureDrift"],
    )
    post = next(p["body"] for p in webhook.received if any(a in hooked for a in p["body"]["alerts"]))
    assert post["receiver"] == "ct-retrain"
    assert post["status"] == "firing"
    alert = hooked[0]
    assert alert["labels"]["model"] == "fraud-detector"
    assert alert["labels"]["monitor"] == "feature-drift"
    assert alert["labels"]["ct_action"] == "retrain"
    assert alert["annotations"]["reason"] == "feature drift on amount: statistic 0.42 over threshold 0.1"
    assert time.monotonic() - started < WAIT

    # ct_action=alert: Prometheus fires it and Alertmanager holds it, but it goes to the null receiver
    score = wait_for(
        "Alertmanager to hold CtScoreDrift",
        lambda: alertmanager.alerts(['model="fraud-detector"', 'alertname="CtScoreDrift"']),
    )
    assert [r["name"] for r in score[0]["receivers"]] == ["null"]

    # the control: Prometheus has scraped its breach=0 sample and evaluated the rule since, and nothing fired
    wait_for(
        "the control's breach=0 sample in Prometheus",
        lambda: prometheus.query(f'{M_BREACH}{{model="{CONTROL}",monitor="fd"}} == 0'),
    )
    seen_at = time.time()
    wait_for("a rule evaluation after the control sample", lambda: _evaluated_after(prometheus, CONTROL, seen_at))
    time.sleep(2.5)  # group_wait + a notification round
    assert _prom_alerts(prometheus, CONTROL, "CtFeatureDrift") == []
    assert alertmanager.alerts([f'model="{CONTROL}"']) == []
    assert [a for a in webhook.alerts() if a["labels"].get("model") == CONTROL] == []
    assert [a for a in webhook.alerts() if a["labels"].get("alertname") == "CtScoreDrift"] == []

    # the next report judges no breach: the alert resolves in Prometheus
    pusher.push(
        "fraud-detector",
        _monitor_registry("fraud-detector", {("feature-drift", "feature_drift", "amount", "retrain"): 0.0}),
    )
    wait_for(
        "CtFeatureDrift to stop firing",
        lambda: not _prom_alerts(prometheus, "fraud-detector", "CtFeatureDrift") or None,
    )
    pusher.delete("fraud-detector")
    pusher.delete(CONTROL)


def _rfc3339(stamp: str) -> float:
    """Go's RFC 3339 with nanoseconds -> epoch seconds."""
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    assert match, stamp
    zone = "+00:00" if match[3] == "Z" else match[3]
    return datetime.fromisoformat(match[1] + zone).timestamp() + float(match[2] or 0)


def _evaluated_after(api: PrometheusAPI, model: str, after: float) -> bool:
    for group in api.rules():
        if group["name"] == f"ct-{model}":
            return _rfc3339(group["lastEvaluation"]) > after
    return False


def test_slo_rules_fire_on_the_scraped_gateway_metrics(stack, gateway_metrics):
    """The SLO expressions on what the real gateway class exposes, scraped with the target's model label."""
    _, endpoints = stack
    prometheus = PrometheusAPI(endpoints.prometheus_url)
    (target,) = [t for t in prometheus.targets() if t["labels"].get("model") == SLO_MODEL]
    assert target["labels"]["job"] == "ct-gateway"
    assert target["scrapeUrl"] == f"http://{gateway_metrics.target}/metrics"
    error = wait_for("CtSloErrorRate to fire", lambda: _prom_alerts(prometheus, SLO_MODEL, "CtSloErrorRate", "firing"))
    assert float(error[0]["value"]) == pytest.approx(0.5)
    assert error[0]["annotations"]["reason"] == "gateway 5xx rate 50% above the SLO of 1.00%"
    latency = wait_for(
        "CtSloLatencyP99 to fire", lambda: _prom_alerts(prometheus, SLO_MODEL, "CtSloLatencyP99", "firing")
    )
    assert 0.1 < float(latency[0]["value"]) <= 0.25  # p99 inside the (0.1, 0.25] bucket the 0.2 s requests fill
    assert latency[0]["labels"]["monitor"] == "serving-slo"
    assert latency[0]["labels"]["ct_action"] == "alert"


def test_posted_alert_reaches_the_webhook(stack, webhook):
    """The DAG failure callback's way in: POST /api/v2/alerts, routed like any other alert."""
    _, endpoints = stack
    alertmanager = AlertmanagerAPI(endpoints.alertmanager_url)
    alertmanager.post_alerts(
        [
            {
                "labels": {
                    "alertname": "CtPipelineTaskFailed",
                    "model": "fraud-detector",
                    "monitor": "dag",
                    "ct_action": "retrain",
                    "severity": "critical",
                },
                "annotations": {"reason": "task train failed: boom"},
            }
        ]
    )
    hooked = wait_for(
        "the posted alert at the webhook",
        lambda: [a for a in webhook.alerts() if a["labels"].get("alertname") == "CtPipelineTaskFailed"],
    )
    assert hooked[0]["annotations"]["reason"] == "task train failed: boom"


def test_reload_picks_up_new_rules(stack, gateway_metrics):
    local, endpoints = stack
    prometheus = PrometheusAPI(endpoints.prometheus_url)
    local.reload([fraud_spec(), every_kind_spec(CONTROL), slo_spec(), every_kind_spec("added-model")])
    names = wait_for("the added rule group", lambda: {g["name"] for g in prometheus.rules()} >= {"ct-added-model"})
    assert names
    # up() on a running stack reloads too and keeps the same endpoints
    specs = [fraud_spec(), every_kind_spec(CONTROL), slo_spec()]
    assert local.up(specs, {SLO_MODEL: [gateway_metrics.target]}, webhook_url=None) == endpoints
    wait_for("the removed rule group to go", lambda: "ct-added-model" not in {g["name"] for g in prometheus.rules()})


# -- (c) unreachable ----------------------------------------------------------------------------------------


def test_unreachable_pushgateway_is_alert_path_down_naming_the_url():
    url = f"http://127.0.0.1:{free_tcp_port()}"
    registry = CollectorRegistry()
    Gauge(M_BREACH, "1 breached", ["model"], registry=registry).labels("fraud-detector").set(1)
    with pytest.raises(AlertPathDown, match=rf"Pushgateway at {url} is unreachable"):
        Pushgateway(url).push("fraud-detector", registry)


def test_unreachable_prometheus_and_alertmanager_name_the_url():
    url = f"http://127.0.0.1:{free_tcp_port()}"
    with pytest.raises(AlertPathDown, match=rf"Prometheus at {url} is unreachable"):
        PrometheusAPI(url, timeout=2).alerts()
    with pytest.raises(AlertPathDown, match=rf"Alertmanager at {url} is unreachable"):
        AlertmanagerAPI(url, timeout=2).post_alerts([{"labels": {"alertname": "x"}}])
    assert PrometheusAPI(url).ready() is False
