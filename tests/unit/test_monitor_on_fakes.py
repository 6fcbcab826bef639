"""The monitor step on the fakes: a real model trained by the loop, promoted, then judged on prediction logs
built from the demo data (unchanged, drifted, broken); the report, its metrics and the retrain reason."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from ct_pipeline.demo_data import generate_transactions
from ct_pipeline.domain.records import RunRequest
from ct_pipeline.domain.spec import load_spec, parse_spec
from ct_pipeline.errors import DataError, MonitoringError, NoPredictionsError
from ct_pipeline.pipeline import run_pipeline
from ct_pipeline.steps import MONITOR_STEPS
from ct_pipeline.steps.monitor import monitor
from ct_pipeline.testing import (
    FixedClock,
    FrameLabels,
    InMemoryPublisher,
    InMemoryTracker,
    RecordingPusher,
    RecordingTrigger,
    TablePredictionLog,
    make_context,
)

REPO = Path(__file__).resolve().parents[2]
TRAIN_END = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 3, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def spec():
    data = load_spec(REPO / "models" / "fraud-detector.yaml").model_dump(by_alias=True)
    data["candidates"] = data["candidates"][:1]
    data["candidates"][0]["params"]["n_estimators"] = 40
    data["gate"]["bootstrap_resamples"] = 200
    return parse_spec(data)


@pytest.fixture(scope="module")
def promoted(spec, tmp_path_factory):
    """One loop run on the fakes, its promotion merged: the champion the monitor judges."""
    home = tmp_path_factory.mktemp("home")
    frame = generate_transactions(date(2026, 1, 20), date(2026, 3, 1), rows_per_day=250, seed=3)
    publisher, tracker = InMemoryPublisher(), InMemoryTracker()
    ctx = make_context(spec, home, frame=frame, request=RunRequest(end=TRAIN_END), publisher=publisher, tracker=tracker)
    outcome = run_pipeline(ctx)
    assert outcome.status == "promoted" and outcome.promotion is not None
    publisher.merge_promotion(outcome.promotion.id)
    return home, publisher, tracker, outcome


def served_log(spec, tracker, version: str, rows: pd.DataFrame, scores=None) -> pd.DataFrame:
    """What the gateway would have logged for these rows in the last 24 hours."""
    model = tracker.load_pyfunc(spec.name, version)
    X = rows[spec.data.features].astype("float64")
    if scores is None:
        scores = np.asarray(model.predict(X), float)
        scores = scores[:, -1] if scores.ndim == 2 else scores
    n = len(rows)
    ts = NOW - timedelta(hours=24) + pd.to_timedelta(np.linspace(60, 24 * 3600 - 60, n), unit="s")
    frame = X.copy()
    frame.insert(0, "ts", ts)
    frame.insert(1, "request_id", [f"r{i // 10}" for i in range(n)])
    frame.insert(2, "row", [i % 10 for i in range(n)])
    frame.insert(3, "version", version)
    frame.insert(4, "prediction", scores)
    return frame


def context(spec, promoted, log, **ports):
    home, publisher, tracker, _ = promoted
    return make_context(
        spec, home, request=RunRequest(end=NOW), publisher=publisher, tracker=tracker, predictions=log, **ports
    )


def new_rows(drifted: bool, n_days: int = 2, seed: int = 11) -> pd.DataFrame:
    start = date(2026, 3, 1)
    frame = generate_transactions(
        start, start + timedelta(days=n_days), rows_per_day=2_000, drift_from=start if drifted else None, seed=seed
    )
    return frame


def test_unchanged_traffic_breaches_nothing(spec, promoted):
    _, _, tracker, outcome = promoted
    version = outcome.decision.challenger.version
    pusher = RecordingPusher()
    rows = new_rows(False)
    ctx = context(spec, promoted, TablePredictionLog(served_log(spec, tracker, version, rows)), metrics=pusher)
    report = monitor(ctx)

    assert report.version == version and report.predictions == len(rows) > 3_000
    drift = {c.feature: c for c in report.drift}
    assert set(drift) == {*spec.data.features, "prediction"} - {"is_weekend"}
    assert not [c for c in report.drift if c.drifted], [c for c in report.drift if c.drifted]
    assert not report.breaches and report.retrain_reason is None
    # the numbers went to the Pushgateway, the report to disk and to the champion's MLflow run
    assert report.alert_path.pushed and pusher.pushed[0][0] == spec.name
    pushed = {m.name for m in pusher.pushed[0][1].collect()}
    assert {"ct_monitor_drift_statistic", "ct_monitor_breach", "ct_monitor_window_predictions"} <= pushed
    folder = Path(report.artifacts[0])
    written = json.loads((folder / "report.json").read_text())
    assert written["predictions"] == len(rows)
    jsonschema.validate(written, json.loads((REPO / "schemas" / "monitor-report.schema.json").read_text()))
    assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "No breach" in (folder / "report.html").read_text()
    run_id = outcome.decision.challenger.run_id
    assert any(k[0] == run_id and k[1].startswith("monitoring/reports/") for k in tracker.artifacts)


def test_drifted_traffic_flags_features_and_asks_to_retrain(spec, promoted):
    _, _, tracker, outcome = promoted
    version = outcome.decision.challenger.version
    rows = new_rows(True)
    rows["amount"] = rows["amount"] * 0.4  # small purchases: the demo's drift plus a plain shift
    trigger = RecordingTrigger(FixedClock(NOW))
    ctx = context(spec, promoted, TablePredictionLog(served_log(spec, tracker, version, rows)), retrain=trigger)
    report = MONITOR_STEPS[0].run(ctx)

    drifted = {c.feature for c in report.drift if c.drifted}
    assert "amount" in drifted
    assert report.retrain_wanted
    assert report.retrain_reason.startswith("retrained because `amount` drifted: PSI ")
    assert "predictions" in report.retrain_reason
    request = MONITOR_STEPS[1].run(ctx, report)
    assert request.sent and trigger.events[0][1]["reason"] == report.retrain_reason


def test_pushgateway_down_still_writes_the_report(spec, promoted):
    _, _, tracker, outcome = promoted
    version = outcome.decision.challenger.version
    log = TablePredictionLog(served_log(spec, tracker, version, new_rows(False, n_days=1)))
    report = monitor(context(spec, promoted, log, metrics=RecordingPusher("http://127.0.0.1:9", down=True)))
    assert not report.alert_path.pushed
    assert "http://127.0.0.1:9" in report.alert_path.detail
    assert (Path(report.artifacts[0]) / "report.json").is_file()


def test_empty_log_is_one_clear_error(spec, promoted):
    empty = served_log(spec, promoted[2], "1", new_rows(False, n_days=1)).iloc[:0]
    with pytest.raises(
        NoPredictionsError, match=r"no predictions for fraud-detector in \[2026-03-02 12:00, 2026-03-03 12:00\)"
    ):
        monitor(context(spec, promoted, TablePredictionLog(empty)))


def test_too_few_predictions_are_reported_not_judged(spec, promoted):
    _, _, tracker, outcome = promoted
    log = TablePredictionLog(served_log(spec, tracker, outcome.decision.challenger.version, new_rows(False).iloc[:15]))
    report = monitor(context(spec, promoted, log))
    assert not report.drift
    assert any("not judged: 15 predictions" in f.detail for f in report.findings if f.kind == "feature_drift")
    # 15 predictions in 24 hours: the volume monitor (min 1/hour) is right to complain
    assert [f.monitor for f in report.breaches] == ["volume"]


def labels_for(log: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"request_id": log["request_id"], "row": log["row"], "is_fraud": rows["is_fraud"].to_numpy()})


def test_realized_auc_next_to_the_promise_and_a_broken_champion_is_flagged(spec, promoted):
    _, _, tracker, outcome = promoted
    version = outcome.decision.challenger.version
    rows = new_rows(False, n_days=3, seed=5)
    good = served_log(spec, tracker, version, rows)
    report = monitor(context(spec, promoted, TablePredictionLog(good), labels=FrameLabels(labels_for(good, rows))))
    perf = report.performance
    assert perf is not None and perf.judged and not perf.breached
    assert perf.ci_low < perf.value < perf.ci_high and perf.value > 0.75
    assert perf.promised is not None and perf.promised_ci_low < perf.promised
    # the same traffic, but a champion whose scores are noise: realized AUC ~0.5, far below the promise
    noise = np.random.default_rng(0).random(len(rows))
    broken = served_log(spec, tracker, version, rows, scores=noise)
    report = monitor(context(spec, promoted, TablePredictionLog(broken), labels=FrameLabels(labels_for(broken, rows))))
    perf = report.performance
    assert perf.judged and perf.breached and perf.ci_high < perf.promised_ci_low
    assert "below what was promised" in perf.detail
    assert report.retrain_wanted  # the spec's performance monitor retrains


def test_labels_without_the_label_column_name_it(spec, promoted):
    _, _, tracker, outcome = promoted
    rows = new_rows(False, n_days=3, seed=5)
    log = served_log(spec, tracker, outcome.decision.challenger.version, rows)
    labels = labels_for(log, rows).rename(columns={"is_fraud": "fraud"})
    with pytest.raises(DataError, match="is_fraud"):
        monitor(context(spec, promoted, TablePredictionLog(log), labels=FrameLabels(labels)))


def test_nothing_deployed_is_a_clear_error(spec, tmp_path):
    ctx = make_context(spec, tmp_path, predictions=TablePredictionLog(pd.DataFrame()))
    with pytest.raises(MonitoringError, match="nothing is deployed for fraud-detector in staging"):
        monitor(ctx)
