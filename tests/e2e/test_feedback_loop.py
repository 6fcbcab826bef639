"""The feedback half, end to end, on the real parts and with the commands a user types:

a champion trained before the drift, served by the real gateway -> undrifted traffic: the monitor and the real
Prometheus see nothing, nothing is retrained (the control) -> drifted traffic: the monitor's report flags the
drifted features -> the real Prometheus fires CtFeatureDrift -> Alertmanager's webhook -> the alert bridge
posts the retrain asset event to the real Airflow (api-server + scheduler + dag-processor) -> the scheduler
runs the training DAG -> its promotion carries the reason. The timeline is printed (the closing note uses it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = "fraud-detector"
DAG = "ct_fraud_detector"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("feedback") / "ctpipe"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CTPIPE_", "AIRFLOW", "MLFLOW_", "BENTOML_"))}
    environ.update(
        {
            "PATH": f"{BIN}:{environ.get('PATH', '')}",
            "CTPIPE_HOME": str(home),
            "CTPIPE_GATEWAY_PORT": "18811",
            "CTPIPE_MODEL_SERVER_BASE_PORT": "18820",
            "CTPIPE_IMAGE_ENGINE": "none",  # images are proven in test_image / test_end_to_end; Bentos serve here
            "CTPIPE_PREDICTION_LOG_ROLL_SECONDS": "3",  # parts readable within seconds, not the default minute
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
    )
    yield environ
    subprocess.run([str(BIN / "ctpipe"), "stop"], cwd=REPO, env=environ, capture_output=True, timeout=120)


def sh(env, *args, timeout=600) -> str:
    result = subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def ctpipe(env, *args, timeout=600) -> str:
    return sh(env, str(BIN / "ctpipe"), *args, timeout=timeout)


def monitor_json(env, window: str) -> dict:
    return json.loads(ctpipe(env, "monitor", MODEL, "--window", window, "--no-trigger", "--json"))


def sent_rows(output: str) -> int:
    match = re.search(r"sent ([\d,]+) rows", output)
    assert match, output
    return int(match.group(1).replace(",", ""))


def local_settings(env):
    from ct_pipeline.settings import load_settings

    return load_settings(paths={"home": Path(env["CTPIPE_HOME"])})


def wait_until(what: str, probe, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def firing(prometheus, alertname: str) -> list[dict]:
    return [
        a
        for a in prometheus.alerts()
        if a["labels"].get("alertname") == alertname and a["labels"].get("model") == MODEL and a["state"] == "firing"
    ]


def test_drift_alert_retrains_through_airflow_and_the_control_does_not(env):
    from ct_pipeline.adapters.airflow_api import AirflowAPI
    from ct_pipeline.adapters.local_airflow import LocalAirflow
    from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack
    from ct_pipeline.adapters.prometheus import PrometheusAPI
    from ct_pipeline.domain.assets import retrain_asset_uri
    from ct_pipeline.settings import AirflowSettings

    timeline: list[tuple[str, datetime]] = []

    def mark(event: str, at: datetime | None = None) -> None:
        timeline.append((event, at or datetime.now(UTC)))

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    before_drift = today - timedelta(days=2)
    ctpipe(env, "init")
    ctpipe(
        env,
        "demo-data",
        "--days",
        "45",
        "--rows-per-day",
        "800",
        "--end",
        today.date().isoformat(),
        "--drift-days",
        "2",
    )

    # The champion: trained on the 30 days before the drift, merged, served by the real gateway.
    out = ctpipe(env, "run", MODEL, "--end", before_drift.isoformat(), "--window", "30d")
    assert "promotion proposed" in out
    [first] = json.loads(ctpipe(env, "promotions", "list", "--json"))
    ctpipe(env, "promotions", "merge", first["id"])
    ctpipe(env, "reconcile")

    # The engines: a real Airflow, Prometheus + Alertmanager + Pushgateway, and the alert bridge.
    ctpipe(env, "airflow", "up", timeout=300)
    ctpipe(env, "monitoring", "up", "--interval", "2s", timeout=180)
    settings = local_settings(env)
    endpoints = LocalMonitoringStack(settings).endpoints()
    assert endpoints is not None
    prometheus = PrometheusAPI(endpoints.prometheus_url)
    airflow = LocalAirflow(settings).endpoints()
    assert airflow is not None
    api = AirflowAPI(AirflowSettings(api_url=airflow.url, username=airflow.username, password=airflow.password))
    retrain_uri = retrain_asset_uri(MODEL)
    wait_until("the training DAG to be parsed", lambda: api.asset_id(retrain_uri) is not None, 120)
    assert api.last_event(retrain_uri) is None

    # Control: rows from before the drift. The report holds, Prometheus fires nothing, nobody retrains.
    control_start = datetime.now(UTC)
    sent = sent_rows(ctpipe(env, "traffic", MODEL, "--end", before_drift.isoformat(), "--days", "2", "--rows", "3000"))
    time.sleep(5)  # the gateway closes its prediction-log part (3 s roll) and the monitor can read it
    control = monitor_json(env, f"{int((datetime.now(UTC) - control_start).total_seconds()) + 5}s")
    report = control["report"]
    assert report["predictions"] == sent > 1_000  # every row sent was logged, and read back
    assert not [f for f in report["findings"] if f["breached"] and f["kind"] == "feature_drift"], report["findings"]
    assert report["alert_path"]["pushed"], report["alert_path"]
    time.sleep(8)  # several scrape + evaluation rounds at 2 s
    assert not firing(prometheus, "CtFeatureDrift")
    assert api.last_event(retrain_uri) is None

    # Drift: the last two days' rows (fraudsters moved to small, foreign, night purchases), plus a plain shift.
    mark("drift injected (drifted traffic starts)")
    drift_start = datetime.now(UTC)
    sent = sent_rows(ctpipe(env, "traffic", MODEL, "--end", today.isoformat(), "--days", "2", "--rows", "3000"))
    time.sleep(5)
    drifted = monitor_json(env, f"{int((datetime.now(UTC) - drift_start).total_seconds()) + 2}s")
    report = drifted["report"]
    assert report["predictions"] == sent
    mark("monitor report written")
    flagged = {c["feature"] for c in report["drift"] if c["drifted"]}
    assert flagged, report["drift"]
    assert report["retrain_reason"].startswith("retrained because `")
    html = Path(report["artifacts"][0]) / "report.html"
    assert "breach" in html.read_text()
    print("\nflagged:", sorted(flagged), "\nreason:", report["retrain_reason"])

    alert = wait_until("Prometheus to fire CtFeatureDrift", lambda: firing(prometheus, "CtFeatureDrift"), 60)
    mark("Prometheus alert firing", datetime.fromisoformat(alert[0]["activeAt"].replace("Z", "+00:00")))
    assert alert[0]["labels"]["ct_action"] == "retrain"
    event_at = wait_until("the bridge's retrain asset event", lambda: api.last_event(retrain_uri), 90)
    mark("retrain asset event (Alertmanager -> bridge -> Airflow)", event_at)

    # The scheduler runs the training DAG on the asset; its promotion says why.
    def asset_runs():
        path = f"/api/v2/dags/{DAG}/dagRuns"
        runs = api._request("GET", path, "list runs", params={"order_by": "-run_after"}).json()["dag_runs"]
        return [r for r in runs if r["run_type"] == "asset_triggered"]

    runs = wait_until("an asset-triggered run of the training DAG", asset_runs, 60)
    mark("training DAG run started", datetime.fromisoformat(runs[0]["start_date"] or runs[0]["run_after"]))
    done = wait_until(
        "the training run to finish",
        lambda: [r for r in asset_runs() if r["state"] in ("success", "failed")],
        900,
        every=5,
    )
    assert done[0]["state"] == "success", done[0]
    mark("training DAG run finished", datetime.fromisoformat(done[0]["end_date"]))
    assert len(asset_runs()) == 1  # one alert storm, one retrain
    opened = [p for p in json.loads(ctpipe(env, "promotions", "list", "--json")) if p["status"] == "open"]
    assert opened, "the retrained model was not promoted"
    promotion = opened[-1]
    mark("promotion opened", datetime.fromisoformat(promotion["created_at"]))
    assert "retrained because `" in promotion["body"], promotion["body"][:1500]
    assert "Why this run" in promotion["body"]

    t0 = timeline[0][1]
    print("\ntimeline:")
    for event, at in timeline:
        print(f"  +{(at - t0).total_seconds():7.1f}s  {at:%H:%M:%S}  {event}")
