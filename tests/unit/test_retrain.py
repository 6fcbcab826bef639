"""The retrain policy (cooldown, open promotions, dedupe) and the Alertmanager bridge on top of it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ct_pipeline.domain.assets import retrain_asset_uri
from ct_pipeline.errors import TriggerError
from ct_pipeline.retrain import decide_retrain, format_age, request_retrain
from ct_pipeline.testing import FixedClock, InMemoryPublisher
from tests.support.promotions import make_bento, make_decision, promotion_spec

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
REASON = "retrained because `amount` drifted: PSI 0.31 > 0.2 over 48,210 predictions"


class FakeTrigger:
    """:class:`~ct_pipeline.ports.RetrainTrigger` in memory: events per asset URI, timestamped by ``clock``.

    ``delay`` widens the read-then-post window, so concurrent callers would race without a lock."""

    def __init__(self, clock, delay: float = 0.0, fail: str | None = None) -> None:
        self.clock, self.delay, self.fail = clock, delay, fail
        self.events: list[tuple[str, dict, datetime]] = []
        self._mutex = threading.Lock()

    @property
    def target(self) -> str | None:
        return "memory://airflow"

    def last_event(self, asset_uri: str) -> datetime | None:
        if self.fail:
            raise TriggerError(self.fail)
        time.sleep(self.delay)
        with self._mutex:
            stamps = [t for uri, _, t in self.events if uri == asset_uri]
        return max(stamps) if stamps else None

    def post_event(self, asset_uri: str, extra) -> int:
        time.sleep(self.delay)
        with self._mutex:
            self.events.append((asset_uri, dict(extra), self.clock.now()))
            return len(self.events)


def _open_promotion(publisher: InMemoryPublisher, version: str = "7"):
    from ct_pipeline.steps.promote import open_promotion

    return open_promotion(promotion_spec(), make_decision(version), make_bento(version), publisher)


def test_decide_sends_when_nothing_suppresses():
    spec = promotion_spec()
    request = decide_retrain(spec, REASON, NOW, None, [])
    assert request.suppressed is None and not request.sent
    assert request.asset == retrain_asset_uri("fraud-detector") and request.reason == REASON


def test_decide_suppresses_inside_the_cooldown_and_names_it():
    spec = promotion_spec()  # default monitoring: cooldown 12h
    request = decide_retrain(spec, REASON, NOW, NOW - timedelta(hours=2), [])
    assert request.suppressed == "cooldown: last retrain request 2h ago, cooldown 12h"
    later = decide_retrain(spec, REASON, NOW, NOW - timedelta(hours=12, minutes=1), [])
    assert later.suppressed is None


def test_decide_suppresses_while_a_promotion_is_open():
    publisher = InMemoryPublisher()
    record = _open_promotion(publisher)
    request = decide_retrain(promotion_spec(), REASON, NOW, None, publisher.list_promotions("fraud-detector"))
    assert request.suppressed == "promotion fraud-detector/v7 is open"
    publisher.close_promotion(record.id)
    closed = decide_retrain(promotion_spec(), REASON, NOW, None, publisher.list_promotions("fraud-detector"))
    assert closed.suppressed is None


def test_decide_refuses_an_empty_reason():
    assert decide_retrain(promotion_spec(), "  ", NOW, None, []).suppressed.startswith("no breach")


def test_format_age():
    assert [format_age(timedelta(seconds=s)) for s in (5, 600, 7200, 9000, 3 * 86400)] == [
        "5s",
        "10m",
        "2h",
        "2h30m",
        "3d",
    ]


def test_request_retrain_posts_once_then_the_cooldown_covers_a_storm():
    clock = FixedClock(start=NOW)
    trigger = FakeTrigger(clock)
    publisher = InMemoryPublisher()
    results = [
        request_retrain(
            promotion_spec(),
            REASON,
            trigger=trigger,
            publisher=publisher,
            clock=clock,
            source="cli",
            requested_by="ann",
        )
        for _ in range(50)
    ]
    assert [r.sent for r in results].count(True) == 1 and results[0].sent and results[0].event_id == 1
    assert len(trigger.events) == 1
    uri, extra, _ = trigger.events[0]
    assert uri == retrain_asset_uri("fraud-detector")
    assert extra["reason"] == REASON and extra["source"] == "cli" and extra["requested_by"] == "ann"
    assert all(r.suppressed and r.suppressed.startswith("cooldown: last retrain request") for r in results[1:])


def test_request_retrain_checks_open_promotions_of_the_publisher():
    clock = FixedClock(start=NOW)
    trigger = FakeTrigger(clock)
    publisher = InMemoryPublisher()
    _open_promotion(publisher, "7")
    result = request_retrain(promotion_spec(), REASON, trigger=trigger, publisher=publisher, clock=clock, source="cli")
    assert result.suppressed == "promotion fraud-detector/v7 is open" and trigger.events == []


# -- the bridge


def _webhook(model: str = "fraud-detector", **alert_overrides) -> dict:
    alert = {
        "status": "firing",
        "labels": {"alertname": "CtFeatureDrift", "model": model, "ct_action": "retrain", "severity": "warning"},
        "annotations": {"summary": "drift on amount", "reason": REASON},
        "startsAt": "2026-11-02T11:58:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": "abc",
    }
    alert.update(alert_overrides)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="CtFeatureDrift"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ct-retrain",
        "groupLabels": {"alertname": "CtFeatureDrift"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            alert,
            {
                "status": "firing",
                "labels": {"alertname": "CtServingSlo", "model": model, "severity": "critical"},
                "annotations": {"summary": "p99 over 250 ms"},
            },
        ],
    }


@pytest.fixture
def bridge(tmp_path):
    import shutil

    from alert_bridge.app import create_app
    from fastapi.testclient import TestClient

    from ct_pipeline.settings import load_settings

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "models" / "fraud-detector.yaml", models)
    settings = load_settings(paths={"home": tmp_path / "home", "models_dir": models})
    clock = FixedClock(start=NOW)
    state = {"trigger": FakeTrigger(clock, delay=0.002), "publisher": InMemoryPublisher()}
    app = create_app(
        settings,
        trigger_factory=lambda s: state["trigger"],
        publisher_factory=lambda s, spec: state["publisher"],
        clock=clock,
    )
    with TestClient(app) as client:
        yield client, state


def test_bridge_turns_a_storm_of_identical_webhooks_into_one_event(bridge):
    client, state = bridge
    answers = [client.post("/alertmanager", json=_webhook()) for _ in range(50)]
    assert {a.status_code for a in answers} == {200}
    first = answers[0].json()
    assert first["results"] == [
        {
            "model": "fraud-detector",
            "alerts": 1,
            "reason": f"{REASON} (alerts: CtFeatureDrift)",
            "action": "sent",
            "event_id": 1,
            "asset": retrain_asset_uri("fraud-detector"),
        }
    ]
    assert first["ignored"] == ['CtServingSlo: no ct_action="retrain" label']
    later = [a.json()["results"][0] for a in answers[1:]]
    assert {r["action"] for r in later} == {"suppressed"}
    assert (
        later[0]["suppressed"].startswith("cooldown: last retrain request") and "cooldown 12h" in later[0]["suppressed"]
    )
    events = state["trigger"].events
    assert len(events) == 1
    assert events[0][1]["source"] == "alertmanager" and events[0][1]["alerts"] == ["CtFeatureDrift"]


def test_bridge_serializes_concurrent_webhooks_per_model(bridge):
    client, state = bridge
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: client.post("/alertmanager", json=_webhook()), range(50)))
    actions = [a.json()["results"][0]["action"] for a in answers]
    assert actions.count("sent") == 1 and actions.count("suppressed") == 49
    assert len(state["trigger"].events) == 1


def test_bridge_reports_an_open_promotion_and_ignores_resolved_alerts(bridge):
    client, state = bridge
    _open_promotion(state["publisher"], "7")
    answer = client.post("/alertmanager", json=_webhook()).json()
    assert answer["results"][0]["action"] == "suppressed"
    assert answer["results"][0]["suppressed"] == "promotion fraud-detector/v7 is open"
    resolved = client.post("/alertmanager", json=_webhook(status="resolved")).json()
    assert resolved["results"] == [] and "CtFeatureDrift: resolved" in resolved["ignored"]
    assert state["trigger"].events == []


def test_bridge_names_an_unknown_model_and_a_down_airflow(bridge):
    client, state = bridge
    unknown = client.post("/alertmanager", json=_webhook(model="nope"))
    assert unknown.status_code == 503
    assert "no model spec named 'nope'" in unknown.json()["results"][0]["error"]
    state["trigger"].fail = "Airflow API at http://127.0.0.1:1 is unreachable: connection refused"
    down = client.post("/alertmanager", json=_webhook())
    assert down.status_code == 503 and "http://127.0.0.1:1 is unreachable" in down.json()["results"][0]["error"]


def test_bridge_rejects_an_invalid_body_naming_the_field(bridge):
    client, _ = bridge
    body = _webhook()
    del body["alerts"][0]["status"]
    answer = client.post("/alertmanager", json=body)
    assert answer.status_code == 422
    assert "alerts.0.status: Field required" in answer.json()["error"]
    assert client.post("/alertmanager", json={"status": "firing"}).json()["error"].endswith("alerts: Field required")


def test_bridge_health(bridge):
    client, _ = bridge
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json()["status"] == "ok"
