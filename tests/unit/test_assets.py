"""The model's Airflow assets, the DAGs scheduled on / emitting them, and the trigger reason reaching the PR body."""

from __future__ import annotations

import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from ct_pipeline.domain.assets import (
    TriggerEvent,
    data_asset_name,
    data_asset_uri,
    describe_trigger,
    parse_asset_uri,
    retrain_asset_name,
    retrain_asset_uri,
)

REPO = Path(__file__).resolve().parents[2]


def test_asset_uris_and_names_per_model():
    assert retrain_asset_uri("fraud-detector") == "x-ct-pipeline://models/fraud-detector/retrain"
    assert data_asset_uri("fraud-detector") == "x-ct-pipeline://models/fraud-detector/data"
    assert retrain_asset_name("fraud-detector") == "ct.fraud-detector.retrain"
    assert data_asset_name("churn") == "ct.churn.data"
    assert parse_asset_uri(retrain_asset_uri("churn")) == ("churn", "retrain")
    assert parse_asset_uri("s3://bucket/x") is None
    with pytest.raises(ValueError, match="not a model name"):
        retrain_asset_uri("a/b")


def test_airflow_accepts_the_uris_verbatim_without_warnings():
    from airflow.sdk import Asset

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for uri in (retrain_asset_uri("fraud-detector"), data_asset_uri("fraud-detector")):
            assert Asset(name="n", uri=uri).uri == uri  # x- schemes are not normalized


def test_describe_trigger_words_the_reason_and_skips_other_models():
    events = [
        TriggerEvent(
            uri=retrain_asset_uri("fraud-detector"),
            extra={
                "reason": "retrained because `amount` drifted: PSI 0.31 > 0.2 over 48,210 predictions",
                "source": "monitor",
                "requested_by": "ct_fraud_detector_monitor",
            },
        ),
        TriggerEvent(uri=retrain_asset_uri("churn"), extra={"reason": "not ours"}),
        TriggerEvent(uri=data_asset_uri("fraud-detector"), extra={"partition": "date=2026-11-02"}),
    ]
    line, who = describe_trigger("fraud-detector", events)
    assert line == (
        "retrained because `amount` drifted: PSI 0.31 > 0.2 over 48,210 predictions "
        "(source: monitor, requested by: ct_fraud_detector_monitor); new data arrived: date=2026-11-02"
    )
    assert who == "ct_fraud_detector_monitor"
    assert describe_trigger("fraud-detector", []) == (None, None)


def _models(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "models" / "fraud-detector.yaml", models)
    text = (REPO / "models" / "fraud-detector.yaml").read_text().replace("name: fraud-detector", "name: churn")
    (models / "churn.yaml").write_text(text.replace('schedule: "@daily"', "schedule: null"))
    return models


def test_training_dag_runs_on_cron_or_either_asset_and_monitor_dag_emits_retrain(tmp_path):
    from airflow.sdk import AssetAny, AssetOrTimeSchedule, CronTriggerTimetable
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

    from ct_pipeline.dag_factory import build_dags
    from ct_pipeline.notify import FailureCallback

    dags = build_dags(_models(tmp_path))
    assert sorted(dags) == ["ct_churn", "ct_churn_monitor", "ct_fraud_detector", "ct_fraud_detector_monitor"]

    fraud = dags["ct_fraud_detector"].timetable
    assert isinstance(fraud, AssetOrTimeSchedule)
    assert isinstance(fraud.timetable, CronTriggerTimetable) and fraud.timetable.expression == "0 0 * * *"
    assert isinstance(fraud.asset_condition, AssetAny)
    assert sorted(a.uri for a in fraud.asset_condition.objects) == [
        data_asset_uri("fraud-detector"),
        retrain_asset_uri("fraud-detector"),
    ]
    churn = dags["ct_churn"].timetable  # schedule: null = assets only
    assert type(churn) is AssetTriggeredTimetable
    assert sorted(a.uri for a in churn.asset_condition.objects) == [data_asset_uri("churn"), retrain_asset_uri("churn")]

    monitor = dags["ct_fraud_detector_monitor"]
    assert {t.task_id: sorted(t.downstream_task_ids) for t in monitor.tasks} == {
        "monitor": ["retrain_wanted"],
        "retrain_wanted": ["request_retrain"],
        "request_retrain": [],
    }
    assert monitor.timetable.expression == "0 * * * *"  # monitoring.schedule: "@hourly"
    assert [a.uri for a in monitor.task_dict["request_retrain"].outlets] == [retrain_asset_uri("fraud-detector")]
    assert [a.uri for a in monitor.task_dict["retrain_wanted"].inlets] == [retrain_asset_uri("fraud-detector")]
    assert type(monitor.task_dict["retrain_wanted"]).__name__ == "_ShortCircuitDecoratedOperator"
    for dag in dags.values():
        assert isinstance(dag.on_failure_callback, FailureCallback)
        for t in dag.tasks:  # every task alerts too (with its task_id)
            assert [type(c) for c in t.on_failure_callback] == [FailureCallback], t.task_id


def test_dags_serialize_as_airflow_stores_them(tmp_path):
    from airflow.serialization.serialized_objects import DagSerialization

    from ct_pipeline.dag_factory import build_dags

    summaries = {}
    for dag in build_dags(_models(tmp_path)).values():
        back = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        summaries[back.dag_id] = back.timetable.summary
    assert summaries == {
        "ct_fraud_detector": "Asset or 0 0 * * *",
        "ct_fraud_detector_monitor": "0 * * * *",
        "ct_churn": "Asset",
        "ct_churn_monitor": "0 * * * *",
    }


def test_asset_triggered_run_ends_at_run_after_and_carries_the_reason(monkeypatch):
    from ct_pipeline import dag_factory

    run_after = datetime(2026, 11, 2, 13, 5, tzinfo=UTC)
    context = {"data_interval_end": None, "logical_date": None, "dag_run": SimpleNamespace(run_after=run_after)}
    assert dag_factory._run_end(context, None) == run_after
    assert dag_factory._run_end(context, "2026-11-01T00:00:00") == datetime(2026, 11, 1, tzinfo=UTC)

    # what the task runner puts in the context (airflow.sdk.execution_time), from the API's event records
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    event = AssetEventDagRunReferenceResult(
        asset=AssetReferenceAssetEventDagRun(
            name=retrain_asset_name("fraud-detector"), uri=retrain_asset_uri("fraud-detector"), extra={}
        ),
        extra={"reason": "amount drifted", "source": "alertmanager"},
        source_task_id=None,
        source_dag_id=None,
        source_run_id=None,
        source_map_index=-1,
        source_aliases=[],
        timestamp=run_after,
    )
    accessor = TriggeringAssetEventsAccessor.build([event])
    events = dag_factory._trigger_events({"triggering_asset_events": accessor})
    assert [e.timestamp for e in events] == [run_after]
    assert describe_trigger("fraud-detector", events) == ("amount drifted (source: alertmanager)", None)


def test_promotion_body_carries_the_trigger_reason():
    from ct_pipeline.steps.promote import open_promotion
    from ct_pipeline.testing import InMemoryPublisher
    from tests.support.promotions import make_bento, make_decision, promotion_spec

    reason = "retrained because `amount` drifted: PSI 0.31 > 0.2 over 48,210 predictions"
    record = open_promotion(
        promotion_spec(),
        make_decision("3"),
        make_bento("3"),
        InMemoryPublisher(),
        trigger=f"{reason} (source: monitor)",
    )
    assert f"> **Why this run**: {reason} (source: monitor)" in record.body
    plain = open_promotion(promotion_spec(), make_decision("4"), make_bento("4"), InMemoryPublisher())
    assert "Why this run" not in plain.body


def test_failure_callback_never_raises_and_says_when_alertmanager_is_missing(caplog):
    from ct_pipeline.notify import notify_failure

    context = {
        "dag_run": SimpleNamespace(dag_id="ct_fraud_detector", run_id="r1"),
        "ti": SimpleNamespace(task_id="train", log_url=None),
        "exception": RuntimeError("boom"),
    }
    with caplog.at_level("WARNING"):
        assert notify_failure(context, "fraud-detector", alertmanager_url="") is False
    assert "Alertmanager is not configured" in caplog.text
    with caplog.at_level("ERROR"):
        assert notify_failure(context, "fraud-detector", alertmanager_url="http://127.0.0.1:9") is False
    assert "Alertmanager at http://127.0.0.1:9 is unreachable" in caplog.text
