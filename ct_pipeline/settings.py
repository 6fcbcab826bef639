"""Environment configuration (pydantic-settings): where state lives and which engines to talk to.

Every value has an embedded default under ``CTPIPE_HOME`` so one machine works with no setup; each can be
pointed at the real engines (an MLflow tracking server, a GitOps remote on GitHub, ...) through ``CTPIPE_*``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

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

    # Model-service OCI image (ct_pipeline.image): built from the promoted Bento, pushed, pinned by digest.
    image_engine: Literal["auto", "docker", "podman", "buildah", "none"] = Field(
        default="auto",
        description="docker = Docker API via the docker SDK (a Docker daemon or podman's compatible socket); "
        "podman / buildah = their CLIs; auto = the first that works; none = Bento only.",
    )
    image_registry: str = Field(default="127.0.0.1:5000", description="Registry host[:port] images are pushed to.")
    image_repository_prefix: str = Field(
        default="ct-pipeline", description="Path inside the registry: <registry>/<prefix>/<model>."
    )
    image_registry_insecure: bool | None = Field(
        default=None, description="Plain HTTP to the registry; default: only for loopback registries."
    )
    image_base: str = Field(
        default="localhost/ct-pipeline/bento-base:bookworm-py3.11",
        description="FROM of the Bento's Dockerfile (a local image, never pulled; scripts/containers-setup.sh "
        "builds the default); empty = BentoML's own base (python:<version>-slim).",
    )
    image_source: str | None = Field(
        default=None, description="org.opencontainers.image.source; default: the checkout's git remote origin."
    )
    image_format: Literal["oci", "docker"] | None = Field(
        default=None,
        description="Image format of podman/buildah builds (default: theirs, oci; manifest annotations need oci). "
        "The Docker API always builds the docker format; 'docker' lets all engines share one layer cache.",
    )
    image_network: str = Field(default="host", description="Network mode of RUN steps during image builds.")
    image_build_timeout: int = Field(default=1800, description="Seconds a build or push may take.")
    docker_host: str | None = Field(
        default=None,
        description="Docker API endpoint; default DOCKER_HOST, then the podman socket, then "
        "unix:///var/run/docker.sock.",
    )
    podman_socket: Path | None = Field(
        default=None, description="podman system service socket; default HOME/containers/podman.sock."
    )

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

    @property
    def containers_dir(self) -> Path:
        return self.home_dir / "containers"

    @property
    def podman_socket_path(self) -> Path:
        return (self.podman_socket or self.containers_dir / "podman.sock").expanduser().resolve()


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
