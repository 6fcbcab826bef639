"""MLflow model registry adapter: aliases, version tags, loading models, and following Git.

The registry never leads: ``champion`` is whatever the GitOps base branch deploys (see ``sync_champion``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ct_pipeline.records import DeployedModel, ModelRef

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryError(RuntimeError):
    pass


class ModelRegistry(Protocol):
    def get_alias(self, model: str, alias: str) -> ModelRef | None: ...
    def set_alias(self, model: str, alias: str, version: str) -> None: ...
    def delete_alias(self, model: str, alias: str) -> None: ...
    def set_version_tags(self, model: str, version: str, tags: dict[str, str]) -> None: ...
    def get_version_tags(self, model: str, version: str) -> dict[str, str]: ...
    def load_pyfunc(self, model: str, version: str) -> Any: ...


@dataclass
class MlflowRegistry:
    """Thin adapter over ``MlflowClient``; works with a sqlite store or a tracking server alike."""

    tracking_uri: str

    def __post_init__(self) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def get_alias(self, model: str, alias: str) -> ModelRef | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(model, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return ModelRef(version=str(mv.version), run_id=mv.run_id or "")

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model, alias, str(version))

    def delete_alias(self, model: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(model, alias)
        except MlflowException:
            pass

    def set_version_tags(self, model: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model, str(version), key, str(value))

    def get_version_tags(self, model: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(model, str(version)).tags)

    def version_exists(self, model: str, version: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(model, str(version))
            return True
        except MlflowException:
            return False

    def load_pyfunc(self, model: str, version: str) -> Any:
        import mlflow.pyfunc

        try:
            return mlflow.pyfunc.load_model(f"models:/{model}/{version}")
        except Exception as exc:  # artifacts gone, flavor missing, ...: the caller reports it
            raise RegistryError(f"cannot load {model} v{version} from the registry: {exc}") from exc


def sync_champion(registry: ModelRegistry, model: str, deployed: DeployedModel | None) -> str:
    """Make ``champion`` point at what Git deploys; returns a one-line account of what changed."""
    current = registry.get_alias(model, CHAMPION)
    if deployed is None:
        if current is None:
            return f"{model}: nothing deployed and no champion alias: in sync"
        registry.delete_alias(model, CHAMPION)
        return f"{model}: nothing deployed on the base branch: removed champion alias (was v{current.version})"
    if current is not None and current.version == deployed.version:
        return f"{model}: champion is v{deployed.version}, as deployed: in sync"
    registry.set_alias(model, CHAMPION, deployed.version)
    registry.set_version_tags(
        model,
        deployed.version,
        {"ct.deployed.environment": deployed.environment, "ct.deployed.commit": deployed.commit or ""},
    )
    was = f"v{current.version}" if current else "none"
    at = (deployed.commit or "")[:10]
    return f"{model}: champion moved {was} -> v{deployed.version} to follow {deployed.environment} ({at})"
