"""CLI error paths on the real parts: `init` (a git remote), then the pipeline's first steps.

(The rest of the CLI error paths: tests/unit/test_cli.py.)"""

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


def test_empty_window_is_reported_without_traceback(in_repo):
    # No data generated in this CTPIPE_HOME: init the remote, then the pull step must say what is missing.
    assert runner.invoke(app, ["init"]).exit_code == 0
    result = runner.invoke(app, ["run", "fraud-detector", "--end", "2026-01-01"])
    assert result.exit_code == 1
    assert "parquet source" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output
