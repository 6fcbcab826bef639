"""The feedback stack's CLI and ports with nothing running: no ports, and one clear error line naming what to set.

(The real stack — Airflow, Prometheus, Alertmanager, Pushgateway, the bridge: tests/integration/test_feedback_stack.py.)
"""

import json
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from ct_pipeline.adapters.local_airflow import LocalAirflow
from ct_pipeline.cli import app
from ct_pipeline.wiring import feedback_ports

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
NO_SUCH_PID = 2**22 + 7  # above Linux's largest pid_max: never a live process

FEEDBACK_VARS = (
    "CTPIPE_AIRFLOW_API_URL",
    "CTPIPE_AIRFLOW_USERNAME",
    "CTPIPE_AIRFLOW_PASSWORD",
    "CTPIPE_AIRFLOW_TOKEN",
    "CTPIPE_PUSHGATEWAY_URL",
    "AIRFLOW_HOME",
)


@pytest.fixture
def bare(settings, monkeypatch):
    """Nothing configured, nothing running, the repository's specs."""
    for var in FEEDBACK_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(REPO)
    return settings


def test_feedback_ports_with_nothing_running_or_configured_are_none(bare):
    ports = feedback_ports(bare)
    assert ports["metrics"] is None
    assert ports["retrain"] is None
    assert ports["predictions"] is not None and ports["labels"] is not None


def test_a_stale_local_airflow_state_is_not_running(bare):
    state_dir = bare.paths.home_dir / "airflow"
    state_dir.mkdir(parents=True)
    pids = {name: NO_SUCH_PID for name in ("api-server", "scheduler", "dag-processor")}
    (state_dir / "ctpipe-state.json").write_text(
        json.dumps({"url": "http://127.0.0.1:8080", "port": 8080, "username": "admin", "pids": pids})
    )
    assert LocalAirflow(bare).endpoints() is None
    assert feedback_ports(bare)["retrain"] is None


def test_configured_urls_win_over_local_state(bare):
    configured = bare.replace(
        monitoring={"pushgateway_url": "http://127.0.0.1:9"},
        airflow={"api_url": "http://127.0.0.1:9", "token": SecretStr("t")},
    )
    ports = feedback_ports(configured)
    assert ports["metrics"].url == "http://127.0.0.1:9"
    assert ports["retrain"].api_url == "http://127.0.0.1:9"


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_retrain_without_airflow_names_the_variable(bare):
    line = _one_error(runner.invoke(app, ["retrain", "fraud-detector", "--reason", "manual test"]))
    assert "CTPIPE_AIRFLOW_API_URL" in line and "ctpipe airflow up" in line


def test_retrain_needs_a_reason(bare):
    line = _one_error(runner.invoke(app, ["retrain", "fraud-detector"]))
    assert "--reason is required" in line


def test_retrain_of_an_unknown_model_is_named(bare):
    line = _one_error(runner.invoke(app, ["retrain", "no-such-model", "--reason", "x"]))
    assert "no model spec named 'no-such-model'" in line


def test_monitoring_up_refuses_a_bad_interval(bare):
    line = _one_error(runner.invoke(app, ["monitoring", "up", "--interval", "2 seconds"]))
    assert "--interval '2 seconds' is not a Prometheus duration" in line


def test_airflow_status_when_not_running(bare):
    result = runner.invoke(app, ["airflow", "status"])
    assert result.exit_code == 0, result.output
    assert "not running" in result.output
