"""Retrain requests through a REAL Airflow 3: asset events posted over the REST API v2 start the DAG scheduled on
the model's retrain asset, and the run reads the event's reason; a task's outlet does the same without REST.

Starts api-server + scheduler + dag-processor on a temporary AIRFLOW_HOME (SQLite, LocalExecutor), bound to
127.0.0.1 on a free port (tests/support/airflow_server.py). About a minute here.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from ct_pipeline.adapters.airflow_api import AirflowAPI
from ct_pipeline.domain.assets import data_asset_uri, retrain_asset_uri
from ct_pipeline.errors import TriggerError
from ct_pipeline.settings import AirflowSettings
from tests.support.airflow_server import REPO, AirflowServer

MODEL = "demo-model"
REASON = "retrained because `amount` drifted: PSI 0.31 > 0.2 over 48,210 predictions"

CONSUMER = '''
"""Scheduled on demo-model's retrain asset; writes what triggered it (as the training DAG reads it)."""
import json
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from ct_pipeline.dag_factory import _run_end, _trigger_events, model_asset
from ct_pipeline.domain.assets import describe_trigger

OUT = Path(__OUT__)


@dag(dag_id="demo_retrain", schedule=model_asset("demo-model", "retrain"), start_date=None, catchup=False)
def demo_retrain():
    @task
    def record():
        context = get_current_context()
        events = _trigger_events(context)
        trigger, requested_by = describe_trigger("demo-model", events)
        run = context["dag_run"]
        out = OUT / f"{run.run_id.replace(':', '_').replace('+', '_')}.json"
        out.write_text(json.dumps({
            "reasons": [e.extra.get("reason") for e in events],
            "trigger": trigger,
            "requested_by": requested_by,
            "logical_date": str(context.get("logical_date")),
            "end": _run_end(context, None).isoformat(),
        }))

    record()


demo_retrain()
'''

PRODUCER = '''
"""What the monitor DAG's request_retrain task does: emit the retrain asset (its outlet) with the reason."""
from airflow.sdk import dag, get_current_context, task

from ct_pipeline.dag_factory import model_asset

RETRAIN = model_asset("demo-model", "retrain")


@dag(dag_id="demo_monitor", schedule=None, start_date=None, catchup=False)
def demo_monitor():
    @task(outlets=[RETRAIN])
    def request_retrain():
        context = get_current_context()
        context["outlet_events"][RETRAIN].extra = {
            "reason": context["params"].get("reason", "none"), "source": "monitor", "requested_by": "demo_monitor",
        }

    request_retrain()


demo_monitor()
'''


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    out = home / "out"
    out.mkdir()
    started = time.monotonic()
    dags = {
        "demo_retrain.py": CONSUMER.replace("__OUT__", repr(str(out))),
        "demo_monitor.py": PRODUCER,
        "ct_models.py": (REPO / "dags" / "ct_models.py").read_text(),  # the real generated DAGs, parsed only
    }
    env = {"CTPIPE_MODELS_DIR": str(REPO / "models"), "CTPIPE_HOME": str(home / "ctpipe")}
    with AirflowServer(home / "home", dags=dags, users={"vera": ("viewer", "vera-pw")}, env=env) as server:
        server.out = out
        server.wait_for_dag("demo_retrain")
        server.wait_for_dag("demo_monitor")
        print(f"\nairflow up and DAGs parsed in {time.monotonic() - started:.1f}s ({server.timings})")
        yield server


def test_the_generated_ct_dags_parse_with_their_asset_schedules(airflow):
    training = airflow.wait_for_dag("ct_fraud_detector")
    monitor = airflow.wait_for_dag("ct_fraud_detector_monitor")
    assert airflow.api_get("/api/v2/importErrors")["import_errors"] == []
    assert airflow.api_get("/api/v2/dagWarnings")["dag_warnings"] == []
    assert training["timetable_summary"] == "Asset or 0 0 * * *"
    assert monitor["timetable_summary"] == "0 * * * *"
    assets = airflow.api_get("/api/v2/assets", uri_pattern="models/fraud-detector/")["assets"]
    by_uri = {a["uri"]: a for a in assets}
    retrain = by_uri[retrain_asset_uri("fraud-detector")]
    assert retrain["name"] == "ct.fraud-detector.retrain" and retrain["group"] == "ct-pipeline"
    assert [d["dag_id"] for d in retrain["scheduled_dags"]] == ["ct_fraud_detector"]
    assert [(t["dag_id"], t["task_id"]) for t in retrain["producing_tasks"]] == [
        ("ct_fraud_detector_monitor", "request_retrain")
    ]
    assert [d["dag_id"] for d in by_uri[data_asset_uri("fraud-detector")]["scheduled_dags"]] == ["ct_fraud_detector"]


def _api(server: AirflowServer, **overrides) -> AirflowAPI:
    fields = {"api_url": server.url, "username": "admin", "password": "admin", "timeout": 10.0, **overrides}
    return AirflowAPI(AirflowSettings(**fields))


def _outputs(server) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(server.out.glob("*.json"))]


def test_posted_event_runs_the_dag_with_the_reason_and_last_event_sees_it(airflow):
    api = _api(airflow)
    uri = retrain_asset_uri(MODEL)
    assert api.last_event(uri) is None  # never requested yet
    before = datetime.now(UTC)
    t0 = time.monotonic()
    event_id = api.post_event(uri, {"reason": REASON, "source": "cli", "requested_by": "ann"})
    assert isinstance(event_id, int)

    last = api.last_event(uri)
    assert last is not None and before - timedelta(seconds=5) <= last <= datetime.now(UTC) + timedelta(seconds=5)

    runs = airflow.wait_for_runs("demo_retrain", 1, timeout=120)
    print(f"asset event -> run finished in {time.monotonic() - t0:.1f}s")
    assert runs[0]["state"] == "success", airflow.log_tail("scheduler")
    assert runs[0]["run_type"] == "asset_triggered"
    [out] = _outputs(airflow)
    assert out["reasons"] == [REASON]
    assert out["trigger"] == f"{REASON} (source: cli, requested by: ann)"
    assert out["requested_by"] == "ann"
    assert out["logical_date"] == "None"  # Airflow 3 asset runs: no logical date, the end is run_after
    assert datetime.fromisoformat(out["end"]) >= last - timedelta(seconds=1)


def test_a_task_outlet_triggers_the_dag_without_rest(airflow):
    t0 = time.monotonic()
    airflow.trigger_dag("demo_monitor", conf={"reason": "performance: AUC 0.71 < promised 0.80"})
    [monitor_run] = airflow.wait_for_runs("demo_monitor", 1, timeout=120)
    assert monitor_run["state"] == "success", airflow.log_tail("scheduler")
    runs = airflow.wait_for_runs("demo_retrain", 2, timeout=120)
    print(f"outlet event -> run finished in {time.monotonic() - t0:.1f}s")
    assert all(r["state"] == "success" for r in runs)
    triggers = [o["trigger"] for o in _outputs(airflow)]
    assert "performance: AUC 0.71 < promised 0.80 (source: monitor, requested by: demo_monitor)" in triggers


def test_wrong_password_unknown_asset_and_unreachable_api_are_named(airflow):
    with pytest.raises(TriggerError, match=rf"Airflow API at {airflow.url} refused the login of 'admin'.*401"):
        _api(airflow, password="wrong").last_event(retrain_asset_uri(MODEL))
    with pytest.raises(TriggerError, match=r"has no asset x-ct-pipeline://models/other/retrain: no parsed DAG"):
        _api(airflow).post_event(retrain_asset_uri("other"), {"reason": "x"})
    assert _api(airflow).last_event(retrain_asset_uri("other")) is None
    viewer = _api(airflow, username="vera", password="vera-pw")
    assert viewer.last_event(retrain_asset_uri(MODEL)) is not None  # a viewer may read events...
    with pytest.raises(TriggerError, match=rf"Airflow API at {airflow.url}: user 'vera' may not create an event"):
        viewer.post_event(retrain_asset_uri(MODEL), {"reason": "x"})  # ...but not post them
    with pytest.raises(TriggerError, match=r"Airflow API at http://127\.0\.0\.1:1 is unreachable"):
        _api(airflow, api_url="http://127.0.0.1:1").post_event(retrain_asset_uri(MODEL), {"reason": "x"})


def test_a_token_instead_of_a_password(airflow):
    api = _api(airflow, username=None, password=None, token=airflow.token())
    assert api.last_event(retrain_asset_uri(MODEL)) is not None
    with pytest.raises(TriggerError, match=rf"Airflow API at {airflow.url} rejected the credentials"):
        _api(airflow, username=None, password=None, token="not-a-jwt").last_event(retrain_asset_uri(MODEL))
