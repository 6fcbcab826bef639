from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
# The gateway and the BentoML service live in serving/ as deployables of their own.
sys.path.insert(0, str(REPO_ROOT / "serving"))
# Specs in the tests name user training functions as `user_models:<fn>` (tests/support/user_models.py).
sys.path.insert(0, str(TESTS_DIR / "support"))
# Shared scenario helpers: their asserts should explain themselves too.
pytest.register_assert_rewrite("tests.support.merge_styles")

# tests/<folder>/... -> marker (registered in pyproject.toml)
FOLDER_MARKERS = ("unit", "integration", "e2e", "cluster")


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except ValueError:
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture
def ctpipe_home(tmp_path, monkeypatch) -> Path:
    """An isolated CTPIPE_HOME (MLflow sqlite store, bento store, gitops remote) per test."""
    home = tmp_path / "ctpipe"
    monkeypatch.setenv("CTPIPE_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "CTPIPE_GITOPS_REMOTE", "CTPIPE_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def settings(ctpipe_home, monkeypatch):
    from ct_pipeline.settings import Settings

    s = Settings()
    s.paths.home_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.tracking_uri)
    monkeypatch.setenv("BENTOML_HOME", str(s.paths.bento_home))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return s
