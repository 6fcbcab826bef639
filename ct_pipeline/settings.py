"""Environment configuration (pydantic-settings): where state lives and which engines to talk to.

Every value has an embedded default under ``CTPIPE_HOME`` so one machine works with no setup; each can be
pointed at the real engines (an MLflow tracking server, a GitOps remote on GitHub, ...) through ``CTPIPE_*``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CTPIPE_", extra="ignore")

    home: Path = Field(default=Path(".ctpipe"), description="Root of all local state (embedded defaults).")
    models_dir: Path = Field(default=Path("models"), description="Directory of model spec YAML files.")
    data_dir: Path | None = Field(default=None, description="Base for relative data paths; default HOME/data.")
    mlflow_tracking_uri: str | None = Field(default=None, description="Default sqlite:///HOME/mlflow.db.")
    mlflow_artifact_root: str | None = Field(default=None, description="Default HOME/mlartifacts.")
    bentoml_home: Path | None = Field(default=None, description="Default HOME/bentoml.")
    gitops_remote: str | None = Field(default=None, description="GitOps remote URL/path; default HOME/gitops.git.")
    gitops_branch: str = "main"
    git_author_name: str = "ct-pipeline"
    git_author_email: str = "ct-pipeline@localhost"
    gateway_port: int = 8700
    model_server_base_port: int = 3700
    bind_host: str = "127.0.0.1"

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def data_root(self) -> Path:
        return (self.data_dir or self.home_dir / "data").expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or (self.home_dir / "mlartifacts").as_uri()

    @property
    def bento_home(self) -> Path:
        return (self.bentoml_home or self.home_dir / "bentoml").expanduser().resolve()

    @property
    def gitops_remote_url(self) -> str:
        return self.gitops_remote or str(self.home_dir / "gitops.git")

    @property
    def snapshots_dir(self) -> Path:
        return self.home_dir / "snapshots"

    @property
    def runtime_dir(self) -> Path:
        return self.home_dir / "runtime"


def get_settings() -> Settings:
    return Settings()


def configure_environment(settings: Settings) -> None:
    """Point MLflow and BentoML at the configured stores.

    BentoML reads BENTOML_HOME when it is first imported, so call this before importing bentoml.
    Explicit environment variables win over the embedded defaults.
    """
    import os

    settings.home_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BENTOML_HOME", str(settings.bento_home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
