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


def test_a_bad_setting_is_one_line_naming_the_variable(in_repo, monkeypatch):
    monkeypatch.setenv("CTPIPE_GATEWAY_PORT", "eighty")
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1
    assert "invalid settings: CTPIPE_GATEWAY_PORT='eighty'" in result.output
    assert "Traceback" not in result.output


def test_a_bug_keeps_its_traceback_and_debug_shows_it_for_errors_too(in_repo, monkeypatch):
    import ct_pipeline.cli as cli

    def broken(*_args, **_kwargs):
        raise KeyError("a bug, not a user mistake")

    monkeypatch.setattr(cli, "_all_specs", broken)
    result = runner.invoke(app, ["sync", "fraud-detector"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)  # not turned into "error: ..."
    assert "error:" not in result.output

    monkeypatch.undo()
    monkeypatch.chdir(REPO)
    plain = runner.invoke(app, ["run", "no-such-model"])
    debug = runner.invoke(app, ["--debug", "run", "no-such-model"])
    assert plain.exit_code == debug.exit_code == 1
    assert "Traceback" not in plain.output and "Traceback" in debug.output
    assert "no model spec named 'no-such-model'" in debug.output
