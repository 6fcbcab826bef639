"""The local feedback stack through the CLI a user types, on real parts: ``ctpipe airflow up`` starts a real Airflow
3 (api-server + scheduler + dag-processor, SQLite) that parses the generated DAGs; ``ctpipe retrain`` posts the
model's retrain asset event to it; ``ctpipe monitoring up`` starts Prometheus + Alertmanager + Pushgateway and the
alert bridge, whose webhook answer (suppressed by the cooldown the first event started) proves bridge -> Airflow;
``feedback_ports`` finds the running stack; ``ctpipe stop`` leaves no process behind.

The commands run as subprocesses (``python -m ct_pipeline.cli``), like a user's shell: what they start must outlive
them. The DAGs stay paused (``AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True``): no training run is waited for.
Needs Debian's prometheus, prometheus-alertmanager, prometheus-pushgateway (``make test`` installs them); without
them ``monitoring up`` fails saying so, and so does this test. About 1-2 minutes here.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ct_pipeline.adapters.airflow_api import AirflowAPI
from ct_pipeline.adapters.local_airflow import LocalAirflow
from ct_pipeline.adapters.local_feedback import LocalAlertBridge
from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack
from ct_pipeline.adapters.local_runtime import _live_members
from ct_pipeline.domain.assets import data_asset_uri, retrain_asset_uri
from ct_pipeline.settings import load_settings
from ct_pipeline.wiring import feedback_ports

REPO = Path(__file__).resolve().parents[2]
MODEL = "fraud-detector"
DAGS = ("ct_fraud_detector", "ct_fraud_detector_monitor")


@pytest.fixture
def stack_env(tmp_path, monkeypatch) -> dict[str, str]:
    """A fresh CTPIPE_HOME (AIRFLOW_HOME under it), the repository's specs, no configured Airflow/Pushgateway."""
    home = tmp_path / "ctpipe"
    monkeypatch.setenv("CTPIPE_HOME", str(home))
    monkeypatch.setenv("CTPIPE_MODELS_DIR", str(REPO / "models"))
    for var in list(os.environ):
        if var.startswith(("AIRFLOW__", "CTPIPE_AIRFLOW_", "CTPIPE_PUSHGATEWAY", "CTPIPE_PROMETHEUS", "MLFLOW_")):
            monkeypatch.delenv(var)
    for var in ("AIRFLOW_HOME", "CTPIPE_GITOPS_REMOTE", "CTPIPE_DATA_DIR", "BENTOML_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    yield dict(os.environ)
    # whatever the test did, nothing it started outlives it
    settings = load_settings()
    LocalAlertBridge(settings).down()
    LocalMonitoringStack(settings).down()
    LocalAirflow(settings).down()


def ctpipe(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "ct_pipeline.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"ctpipe {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def wait_for_dags(airflow: LocalAirflow, timeout: float = 120.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    found: dict[str, dict] = {}
    while time.monotonic() < deadline:
        airflow.check_alive()
        found = {d["dag_id"]: d for d in airflow.api_get("/api/v2/dags", limit=100)["dags"]}
        if all(dag in found for dag in DAGS):
            return found
        time.sleep(1)
    errors = airflow.api_get("/api/v2/importErrors")
    raise AssertionError(
        f"{DAGS} not parsed within {timeout:.0f}s (got {sorted(found)}); import errors: {errors}; dag-processor log:\n"
        f"{airflow.log_tail('dag-processor')}"
    )


def test_ctpipe_runs_the_feedback_stack_and_stops_it(stack_env):
    env = stack_env
    started = time.monotonic()
    ctpipe(env, "init")  # the GitOps remote: the retrain policy reads its open promotions

    # -- Airflow
    up = ctpipe(env, "airflow", "up")
    settings = load_settings()
    airflow = LocalAirflow(settings)
    endpoints = airflow.endpoints()
    assert endpoints is not None, up.stdout + up.stderr
    assert endpoints.url.startswith("http://127.0.0.1:")
    assert endpoints.url in up.stdout and f"login {endpoints.username} / {endpoints.password}" in up.stdout
    assert stat.S_IMODE(airflow.passwords_path.stat().st_mode) == 0o600
    assert (settings.paths.home_dir / "airflow" / "airflow.db").is_file()  # AIRFLOW_HOME under CTPIPE_HOME
    again = ctpipe(env, "airflow", "up")  # idempotent: the same instance
    assert LocalAirflow(settings).endpoints() == endpoints and endpoints.url in again.stdout
    status = ctpipe(env, "airflow", "status").stdout
    assert f"Airflow at {endpoints.url}: healthy" in status, status

    dags = wait_for_dags(airflow)
    assert all(dags[d]["is_paused"] for d in DAGS), {d: dags[d]["is_paused"] for d in DAGS}
    assert airflow.api_get("/api/v2/importErrors")["import_errors"] == []
    print(f"\nairflow up, DAGs parsed: {time.monotonic() - started:.0f}s")

    # -- a retrain request from the CLI, recorded by Airflow
    before = datetime.now(UTC) - timedelta(seconds=5)
    sent = ctpipe(env, "retrain", MODEL, "--reason", "manual test").stdout
    assert "sent" in sent and "retrain of fraud-detector requested" in sent, sent
    api = AirflowAPI(endpoints.airflow_settings())
    last = api.last_event(retrain_asset_uri(MODEL))
    assert last is not None and last >= before, (last, before)
    suppressed = ctpipe(env, "retrain", MODEL, "--reason", "again").stdout
    assert "suppressed" in suppressed and "cooldown" in suppressed, suppressed
    assert api.last_event(retrain_asset_uri(MODEL)) == last  # nothing new was posted
    data = ctpipe(env, "retrain", MODEL, "--data", "--reason", "partition 2026-12-01").stdout
    assert "data-arrived event" in data, data
    assert api.last_event(data_asset_uri(MODEL)) is not None

    # -- the alerting stack and the bridge
    mon = ctpipe(env, "monitoring", "up", "--interval", "2s").stdout
    stack = LocalMonitoringStack(settings)
    monitoring = stack.endpoints()
    bridge_url = LocalAlertBridge(settings).url()
    assert monitoring is not None and bridge_url is not None, mon
    for url in (monitoring.prometheus_url, monitoring.alertmanager_url, monitoring.pushgateway_url, bridge_url):
        assert url in mon, (url, mon)
    assert "scrape_interval: 2s" in (stack.dir / "prometheus.yml").read_text()
    am_config = httpx.get(f"{monitoring.alertmanager_url}/api/v2/status", timeout=5).json()["config"]["original"]
    assert f"{bridge_url}/alertmanager" in am_config  # Alertmanager's retrain receiver is the bridge
    health = httpx.get(f"{bridge_url}/healthz", timeout=5).json()
    assert health["airflow"] == endpoints.url and health["models_dir"] == str(REPO / "models")

    webhook = {
        "version": "4",
        "status": "firing",
        "receiver": "ct-retrain",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "CtFeatureDrift", "ct_action": "retrain", "model": MODEL},
                "annotations": {"reason": "`amount` drifted: PSI 0.31 > 0.2"},
            }
        ],
    }
    answer = httpx.post(f"{bridge_url}/alertmanager", json=webhook, timeout=30)
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert result["model"] == MODEL and result["action"] == "suppressed", result
    assert result["suppressed"].startswith("cooldown: last retrain request"), result

    # -- the monitor's ports find the running stack (no configuration)
    ports = feedback_ports(settings)
    assert ports["metrics"] is not None and ports["metrics"].url == monitoring.pushgateway_url
    assert ports["retrain"] is not None and ports["retrain"].api_url == endpoints.url

    status = ctpipe(env, "monitoring", "status").stdout
    assert status.count("ready") >= 4, status

    # -- stop: everything, and nothing left
    groups = list((airflow._read_state() or {})["pids"].values())
    groups += list((stack._read_state() or {})["pids"].values())
    groups.append((LocalAlertBridge(settings)._read_state() or {})["pid"])
    assert len(groups) == 7 and all(_live_members(pid) for pid in groups), groups
    stopped = ctpipe(env, "stop").stdout
    for what in ("alert bridge stopped", "alerting stack", "local Airflow stopped", "local serving stack stopped"):
        assert what in stopped, stopped
    left = {pid: _live_members(pid) for pid in groups if _live_members(pid)}
    assert not left, f"process groups still alive after `ctpipe stop`: {left}"
    assert LocalAirflow(settings).endpoints() is None and stack.endpoints() is None
    assert LocalAlertBridge(settings).url() is None
    assert feedback_ports(settings)["retrain"] is None and feedback_ports(settings)["metrics"] is None
    assert "was not running" in ctpipe(env, "airflow", "down").stdout
    print(f"whole stack up, checked and stopped in {time.monotonic() - started:.0f}s")
