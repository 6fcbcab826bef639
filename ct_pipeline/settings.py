"""Environment configuration: one :class:`Settings` with nested groups, read once at the edge.

Every value has an embedded default under ``CTPIPE_HOME`` so one machine works with no setup; each can be pointed
at the real engines (an MLflow tracking server, a GitOps remote on GitHub, ...) through environment variables.
Each group reads its own prefix (``CTPIPE_IMAGE_*``, ``CTPIPE_GITHUB_*``, ...), so the variable names stay flat and
documented in the README. The CLI callback and the DAG task wrapper build it once and pass it down; nothing below
them reads ``os.environ`` or changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", populate_by_name=True)


class PathsSettings(BaseSettings):
    """``CTPIPE_HOME``, ``CTPIPE_MODELS_DIR``, ``CTPIPE_DATA_DIR``, ``CTPIPE_BENTOML_HOME``, ``CTPIPE_SERVING_DIR``."""

    model_config = _group("CTPIPE_")

    home: Path = Field(default=Path(".ctpipe"), description="Root of all local state (embedded defaults).")
    models_dir: Path = Field(default=Path("models"), description="Directory of model spec YAML files.")
    data_dir: Path | None = Field(default=None, description="Base for relative data paths; default HOME/data.")
    bentoml_home: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("CTPIPE_BENTOML_HOME", "BENTOML_HOME", "bentoml_home"),
        description="BentoML store; default HOME/bentoml.",
    )
    serving_dir: Path | None = Field(
        default=None, description="The serving/ deployables (gateway, model service); default: next to the package."
    )

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def data_root(self) -> Path:
        return (self.data_dir or self.home_dir / "data").expanduser().resolve()

    @property
    def bento_home(self) -> Path:
        return (self.bentoml_home or self.home_dir / "bentoml").expanduser().resolve()

    @property
    def serving_root(self) -> Path:
        return (self.serving_dir or Path(__file__).resolve().parents[1] / "serving").expanduser().resolve()

    @property
    def snapshots_dir(self) -> Path:
        return self.home_dir / "snapshots"

    @property
    def runtime_dir(self) -> Path:
        return self.home_dir / "runtime"

    @property
    def containers_dir(self) -> Path:
        return self.home_dir / "containers"


class MlflowSettings(BaseSettings):
    """``CTPIPE_MLFLOW_TRACKING_URI`` (or MLflow's own ``MLFLOW_TRACKING_URI``), registry and artifact root.

    Both names resolve here, once, so every MLflow call of a run goes to the same store.
    """

    model_config = _group("CTPIPE_MLFLOW_")

    tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CTPIPE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "tracking_uri"),
        description="Default sqlite:///HOME/mlflow.db.",
    )
    registry_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CTPIPE_MLFLOW_REGISTRY_URI", "MLFLOW_REGISTRY_URI", "registry_uri"),
        description="Default: the tracking URI.",
    )
    artifact_root: str | None = Field(default=None, description="Default HOME/mlartifacts.")


class GitOpsSettings(BaseSettings):
    """``CTPIPE_GITOPS_REMOTE``, ``CTPIPE_GITOPS_BRANCH``, ``CTPIPE_GIT_AUTHOR_NAME`` / ``_EMAIL``."""

    model_config = _group("CTPIPE_GITOPS_")

    remote: str | None = Field(default=None, description="GitOps remote URL/path; default HOME/gitops.git.")
    branch: str = "main"
    author_name: str = Field(
        default="ct-pipeline", validation_alias=AliasChoices("CTPIPE_GIT_AUTHOR_NAME", "author_name")
    )
    author_email: str = Field(
        default="ct-pipeline@localhost", validation_alias=AliasChoices("CTPIPE_GIT_AUTHOR_EMAIL", "author_email")
    )
    seed_dir: Path | None = Field(default=None, description="Seed layout of a new GitOps repository; default gitops/.")


class GitHubSettings(BaseSettings):
    """``CTPIPE_GITHUB_*``: where the API is and how to authenticate (token, GitHub App, Airflow connection)."""

    model_config = _group("CTPIPE_GITHUB_")

    api_url: str | None = None
    token: SecretStr | None = None
    fallback_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("GITHUB_TOKEN", "fallback_token"),
        description="GITHUB_TOKEN, used when nothing else is configured (as in GitHub Actions).",
    )
    app_id: str | None = None
    app_private_key: SecretStr | None = None
    app_private_key_path: Path | None = None
    app_installation_id: int | None = None
    airflow_conn_id: str = "github_default"
    labels: list[str] = ["promotion"]
    retries: int = 8
    backoff_factor: float = 1.0
    secondary_rate_wait: float = 60.0
    max_rate_limit_wait: float | None = 900.0
    seconds_between_requests: float | None = 0.25
    seconds_between_writes: float | None = 1.0
    timeout: int = 30
    revert_via: Literal["pr", "push"] = "pr"
    history_limit: int = 1000


class ImageSettings(BaseSettings):
    """``CTPIPE_IMAGE_*``: the model-service OCI image, built from the promoted Bento, pushed, pinned by digest."""

    model_config = _group("CTPIPE_IMAGE_")

    engine: Literal["auto", "docker", "podman", "buildah", "none"] = Field(
        default="auto",
        description="docker = Docker API via the docker SDK (a Docker daemon or podman's compatible socket); "
        "podman / buildah = their CLIs; auto = the first that works; none = Bento only.",
    )
    registry: str = Field(default="127.0.0.1:5000", description="Registry host[:port] images are pushed to.")
    repository_prefix: str = Field(
        default="ct-pipeline", description="Path inside the registry: <registry>/<prefix>/<model>."
    )
    registry_insecure: bool | None = Field(
        default=None, description="Plain HTTP to the registry; default: only for loopback registries."
    )
    base: str = Field(
        default="localhost/ct-pipeline/bento-base:bookworm-py3.11",
        description="FROM of the Bento's Dockerfile (a local image, never pulled; scripts/containers-setup.sh "
        "builds the default); empty = BentoML's own base (python:<version>-slim).",
    )
    source: str | None = Field(
        default=None, description="org.opencontainers.image.source; default: the checkout's git remote origin."
    )
    format: Literal["oci", "docker"] | None = Field(
        default=None,
        description="Image format of podman/buildah builds (default: theirs, oci; manifest annotations need oci). "
        "The Docker API always builds the docker format; 'docker' lets all engines share one layer cache.",
    )
    network: str = Field(default="host", description="Network mode of RUN steps during image builds.")
    build_timeout: int = Field(default=1800, description="Seconds a build or push may take.")
    docker_host: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CTPIPE_DOCKER_HOST", "DOCKER_HOST", "docker_host"),
        description="Docker API endpoint; default DOCKER_HOST, then the podman socket, then "
        "unix:///var/run/docker.sock.",
    )
    podman_socket: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("CTPIPE_PODMAN_SOCKET", "podman_socket"),
        description="podman system service socket; default HOME/containers/podman.sock.",
    )


class ServingSettings(BaseSettings):
    """``CTPIPE_GATEWAY_PORT``, ``CTPIPE_MODEL_SERVER_BASE_PORT``, ``CTPIPE_BIND_HOST``: the local serving stack."""

    model_config = _group("CTPIPE_")

    gateway_port: int = 8700
    model_server_base_port: int = 3700
    bind_host: str = "127.0.0.1"
    prediction_log_roll_seconds: float = Field(
        default=60.0, gt=0, description="Local gateway: seconds after which a prediction-log part is closed."
    )

    @property
    def gateway_url(self) -> str:
        return f"http://{self.bind_host}:{self.gateway_port}"


class MonitoringSettings(BaseSettings):
    """``CTPIPE_PREDICTION_LOG_URI``, ``CTPIPE_PUSHGATEWAY_URL``, ``CTPIPE_PROMETHEUS_URL``,
    ``CTPIPE_ALERTMANAGER_URL``, ``CTPIPE_REPORTS_DIR``: where predictions are read and the numbers go."""

    model_config = _group("CTPIPE_")

    prediction_log_uri: str | None = Field(
        default=None,
        description="Prediction log root: a directory or a pyarrow filesystem URI (s3://bucket/prefix, file://...); "
        "default HOME/runtime/predictions (where the local gateway writes).",
    )
    pushgateway_url: str | None = Field(default=None, description="Prometheus Pushgateway for the monitor's metrics.")
    prometheus_url: str | None = None
    alertmanager_url: str | None = None
    reports_dir: Path | None = Field(default=None, description="Where reports are written; default HOME/reports.")


class AirflowSettings(BaseSettings):
    """``CTPIPE_AIRFLOW_API_URL``, ``CTPIPE_AIRFLOW_USERNAME``/``_PASSWORD`` or ``CTPIPE_AIRFLOW_TOKEN``: the REST
    API v2 that asset events (retrain requests) are posted to."""

    model_config = _group("CTPIPE_AIRFLOW_")

    api_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8080 (no /api/v2)")
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(default=None, description="A JWT from POST /auth/token, instead of a password")
    timeout: float = Field(default=10.0, gt=0)


class Settings(BaseSettings):
    """Everything configurable, in groups; ``Settings()`` reads the environment (once, at the edge)."""

    model_config = SettingsConfigDict(env_prefix="CTPIPE_SETTINGS_", extra="ignore")

    paths: PathsSettings = Field(default_factory=PathsSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    gitops: GitOpsSettings = Field(default_factory=GitOpsSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    image: ImageSettings = Field(default_factory=ImageSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)

    # Resolved defaults, so no caller re-derives them.
    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.paths.home_dir / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow.registry_uri or self.tracking_uri

    @property
    def artifact_root(self) -> str:
        return self.mlflow.artifact_root or (self.paths.home_dir / "mlartifacts").as_uri()

    @property
    def gitops_remote_url(self) -> str:
        return self.gitops.remote or str(self.paths.home_dir / "gitops.git")

    @property
    def prediction_log_uri(self) -> str:
        return self.monitoring.prediction_log_uri or str(self.paths.runtime_dir / "predictions")

    @property
    def reports_dir(self) -> Path:
        return (self.monitoring.reports_dir or self.paths.home_dir / "reports").expanduser().resolve()

    @property
    def podman_socket_path(self) -> Path:
        return (self.image.podman_socket or self.paths.containers_dir / "podman.sock").expanduser().resolve()

    def replace(self, **groups: Mapping[str, Any]) -> Settings:
        """A copy with some fields of some groups changed: ``settings.replace(image={"engine": "none"})``."""
        unknown = set(groups) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown settings group(s): {sorted(unknown)}")
        update = {name: getattr(self, name).model_copy(update=dict(values)) for name, values in groups.items()}
        return self.model_copy(update=update)

    def child_env(self) -> dict[str, str]:
        """Variables for processes this run starts (bentoml, the model server): the same stores as this one."""
        return {
            "CTPIPE_HOME": str(self.paths.home_dir),
            "BENTOML_HOME": str(self.paths.bento_home),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_REGISTRY_URI": self.registry_uri,
            "BENTOML_DO_NOT_TRACK": "true",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }


def load_settings(**groups: Mapping[str, Any]) -> Settings:
    """Read the environment into one :class:`Settings` (the CLI callback and the DAG task wrapper call this);
    ``groups`` override single fields, e.g. ``load_settings(paths={"home": tmp})``. A bad value is a
    :class:`~ct_pipeline.errors.ConfigError` naming the variable."""
    from pydantic import ValidationError

    from ct_pipeline.errors import ConfigError

    try:
        return Settings().replace(**groups)
    except ValidationError as exc:
        prefix = {cls.__name__: cls.model_config.get("env_prefix", "") for cls in _GROUPS}.get(exc.title, "CTPIPE_")
        problems = "; ".join(
            f"{prefix}{'_'.join(str(p) for p in err['loc']).upper()}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


_GROUPS = (
    PathsSettings,
    MlflowSettings,
    GitOpsSettings,
    GitHubSettings,
    ImageSettings,
    ServingSettings,
    MonitoringSettings,
    AirflowSettings,
)
