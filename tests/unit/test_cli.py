"""CLI error paths: a user's mistake gets one clear line naming what is wrong, and a non-zero exit.

(The one that runs `init` + a pipeline step on real git/MLflow: tests/integration/test_cli.py.)"""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ct_pipeline.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def in_repo(settings, monkeypatch):
    monkeypatch.chdir(REPO)
    return settings


def test_validate_ok(in_repo):
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "fraud-detector" in result.output


def test_unknown_model_is_named(in_repo):
    result = runner.invoke(app, ["run", "no-such-model"])
    assert result.exit_code == 1
    assert "no model spec named 'no-such-model'" in result.output
    assert "known: fraud-detector" in result.output


def test_force_without_reason_refused(in_repo):
    result = runner.invoke(app, ["run", "fraud-detector", "--force"])
    assert result.exit_code == 1
    assert "--force needs --reason" in result.output


def test_bad_end_date(in_repo):
    result = runner.invoke(app, ["run", "fraud-detector", "--end", "yesterday"])
    assert result.exit_code == 1
    assert "--end 'yesterday' is not an ISO date" in result.output


def test_invalid_spec_dir(settings, tmp_path, monkeypatch):
    (tmp_path / "m.yaml").write_text("name: m\n")
    monkeypatch.setenv("CTPIPE_MODELS_DIR", str(tmp_path))
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1
    assert "data: Field required" in result.output
