"""One Settings read at the edge: nested groups, the flat variable names users set, and one MLflow store."""

from __future__ import annotations

import pytest

from ct_pipeline.settings import Settings, load_settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "CTPIPE_MLFLOW_TRACKING_URI",
        "GITHUB_TOKEN",
        "CTPIPE_GITHUB_TOKEN",
        "DOCKER_HOST",
        "CTPIPE_DOCKER_HOST",
        "BENTOML_HOME",
        "CTPIPE_BENTOML_HOME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CTPIPE_HOME", str(tmp_path / "home"))
    return monkeypatch


def test_groups_read_the_documented_flat_names(clean_env, tmp_path):
    clean_env.setenv("CTPIPE_IMAGE_ENGINE", "none")
    clean_env.setenv("CTPIPE_IMAGE_REGISTRY", "registry.example:5000")
    clean_env.setenv("CTPIPE_GITOPS_REMOTE", "github.com/acme/gitops")
    clean_env.setenv("CTPIPE_GIT_AUTHOR_NAME", "release-bot")
    clean_env.setenv("CTPIPE_GATEWAY_PORT", "18000")
    clean_env.setenv("CTPIPE_GITHUB_TOKEN", "t0ken")
    s = Settings()
    assert s.paths.home_dir == (tmp_path / "home").resolve()
    assert (s.image.engine, s.image.registry) == ("none", "registry.example:5000")
    assert (s.gitops.remote, s.gitops.author_name) == ("github.com/acme/gitops", "release-bot")
    assert s.serving.gateway_port == 18000 and s.serving.gateway_url == "http://127.0.0.1:18000"
    assert s.github.token is not None and s.github.token.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(s)  # secrets stay out of logs


def test_github_token_is_the_fallback_only(clean_env):
    clean_env.setenv("GITHUB_TOKEN", "from-actions")
    s = Settings()
    assert s.github.token is None and s.github.fallback_token.get_secret_value() == "from-actions"


def test_mlflow_tracking_uri_alone_is_the_store_of_every_step(clean_env, tmp_path):
    """MLflow's own variable used to reach only the fluent API (train logged there) while the registry adapter
    used the CTPIPE default (the gate read another store). Both names now resolve once, in the settings."""
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    clean_env.setenv("MLFLOW_TRACKING_URI", store)
    s = Settings()
    assert s.tracking_uri == store and s.registry_uri == store
    assert s.child_env()["MLFLOW_TRACKING_URI"] == store  # what the bento build / model server processes get

    import mlflow

    from ct_pipeline.adapters.mlflow import MlflowTracker

    tracker = MlflowTracker(s.tracking_uri, s.registry_uri)
    assert tracker.client._tracking_client.tracking_uri == store
    before = mlflow.get_tracking_uri()
    with tracker.scope():  # the fluent API (flavors' log_model, pyfunc loading) on the same store
        assert mlflow.get_tracking_uri() == store and mlflow.get_registry_uri() == store
    assert mlflow.get_tracking_uri() == before  # ... and the process's own state is left as it was


def test_the_tracker_leaves_the_environment_as_it_was(clean_env, tmp_path):
    import os

    from ct_pipeline.adapters.mlflow import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'a.db'}")
    with tracker.scope():
        assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow.set_tracking_uri would export it
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_ctpipe_name_wins_over_mlflows(clean_env, tmp_path):
    clean_env.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    clean_env.setenv("CTPIPE_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert Settings().tracking_uri == "http://127.0.0.1:5000"


def test_replace_changes_fields_of_groups_and_names_unknown_ones(clean_env, tmp_path):
    s = load_settings(paths={"home": tmp_path / "x"}, image={"engine": "podman"})
    assert s.image.engine == "podman" and s.paths.home == tmp_path / "x"
    assert s.replace(image={"engine": "none"}).image.engine == "none" and s.image.engine == "podman"
    with pytest.raises(ValueError, match=r"unknown settings group\(s\): \['imaeg'\]"):
        s.replace(imaeg={"engine": "none"})


def test_a_bad_value_names_the_variable(clean_env):
    from ct_pipeline.errors import ConfigError

    clean_env.setenv("CTPIPE_IMAGE_ENGINE", "kaniko")
    with pytest.raises(ConfigError, match=r"invalid settings: CTPIPE_IMAGE_ENGINE='kaniko': Input should be 'auto'"):
        load_settings()
