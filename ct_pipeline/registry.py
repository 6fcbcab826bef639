"""MLflow model registry adapter: aliases, version tags, loading models, and following Git.

The registry never leads: ``champion`` is whatever the GitOps base branch deploys (see ``sync_champion``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ct_pipeline.domain.records import DeployedModel, ModelRef
from ct_pipeline.errors import RegistryError

CHAMPION = "champion"
CHALLENGER = "challenger"




class ModelRegistry(Protocol):
    def get_alias(self, model: str, alias: str) -> ModelRef | None: ...
    def set_alias(self, model: str, alias: str, version: str) -> None: ...
    def delete_alias(self, model: str, alias: str) -> None: ...
    def set_version_tags(self, model: str, version: str, tags: dict[str, str]) -> None: ...
    def get_version_tags(self, model: str, version: str) -> dict[str, str]: ...
    def load_pyfunc(self, model: str, version: str) -> Any: ...
    def versions_tagged(self, model: str, key: str, value: str) -> list[str]: ...
    def set_model_tag(self, model: str, key: str, value: str) -> None: ...


ROLLED_BACK = "ct.rolled_back"
FINGERPRINT = "ct.fingerprint"


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

    def versions_tagged(self, model: str, key: str, value: str) -> list[str]:
        found = self.client.search_model_versions(f"name = '{model}' and tags.`{key}` = '{value}'")
        return sorted((str(v.version) for v in found), key=int)

    def set_model_tag(self, model: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(model, key, value)

    def load_pyfunc(self, model: str, version: str) -> Any:
        import mlflow.pyfunc

        try:
            return mlflow.pyfunc.load_model(f"models:/{model}/{version}")
        except Exception as exc:  # artifacts gone, flavor missing, ...: the caller reports it
            raise RegistryError(f"cannot load {model} v{version} from the registry: {exc}") from exc


@dataclass(frozen=True)
class ProductionPeriod:
    """Version ``version`` was what ``environment``'s base branch deployed from ``since`` until ``until``."""

    version: str | None
    since: datetime
    until: datetime | None
    commit: str
    cause: str  # "promote" or "revert"


def record_history(
    registry: ModelRegistry, model: str, environment: str, periods: list[ProductionPeriod], rolled_back: dict[str, str]
) -> list[str]:
    """Mirror Git's production history into the registry: a model tag, and a mark on every rolled-back version.

    Git stays the record; the registry gets a copy people can query next to the versions (mlflow #2169).
    """
    notes = []
    history = [
        {
            "version": p.version,
            "since": p.since.isoformat(),
            "until": p.until.isoformat() if p.until else None,
            "commit": p.commit[:12],
            "cause": p.cause,
        }
        for p in periods[-40:]  # tag values are bounded; Git keeps the full history
    ]
    registry.set_model_tag(model, f"ct.production_history.{environment}", json.dumps(history))
    already = set(registry.versions_tagged(model, ROLLED_BACK, "true"))
    live = periods[-1].version if periods else None
    if live in already:  # brought back on purpose (a forced promotion): no longer counts as rolled back
        registry.set_version_tags(model, live, {ROLLED_BACK: "false"})
        notes.append(f"{model}: v{live} is deployed again; rolled-back mark cleared")
    for version, commit in rolled_back.items():
        if version == live:
            continue
        if version not in already:
            registry.set_version_tags(model, version, {ROLLED_BACK: "true", f"{ROLLED_BACK}.commit": commit})
            notes.append(f"{model}: v{version} marked rolled back (reverted in {commit[:10]})")
    return notes


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
