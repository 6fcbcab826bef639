"""The one MLflow adapter: tracking (experiments, runs, params, metrics, datasets, logged models) and the model
registry (versions, aliases, tags, loading), against one store.

Every MLflow call of ct-pipeline goes through :class:`MlflowTracker`, built once per run from the settings, so a
run cannot end up split across two stores (the tracking URI used to come from CTPIPE_MLFLOW_TRACKING_URI in one
place and from MLflow's ambient MLFLOW_TRACKING_URI in another). The client calls name the store explicitly. The
fluent API (the flavors' ``log_model``, ``pyfunc.load_model``, ``models:/`` downloads) reads MLflow's process-wide
URIs: each fluent call runs inside :meth:`MlflowTracker.scope`, which points them at this store and puts the
previous values back, without touching the environment.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_pipeline.domain.records import ModelRef
from ct_pipeline.errors import RegistryError, TrackingError

if TYPE_CHECKING:
    import pandas as pd

_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class MlflowTracker:
    """:class:`~ct_pipeline.ports.Tracker` over ``MlflowClient`` (a sqlite store or a tracking server alike)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """MLflow's fluent API on this store for the duration; the process's previous state is restored.

        Sets MLflow's module state directly: ``mlflow.set_tracking_uri`` would also export MLFLOW_TRACKING_URI
        into the environment of the whole process."""
        import mlflow.tracking._model_registry.utils as registry_state
        import mlflow.tracking._tracking_service.utils as tracking_state

        saved = (tracking_state._tracking_uri, registry_state._registry_uri)
        setattr(tracking_state, "_tracking_uri", self.tracking_uri)  # noqa: B010 (module state, typed None)
        setattr(registry_state, "_registry_uri", self.registry_uri)  # noqa: B010
        try:
            yield
        finally:
            tracking_state._tracking_uri, registry_state._registry_uri = saved

    def __repr__(self) -> str:
        return f"MlflowTracker({self.tracking_uri!r})"

    # -- tracking

    def ensure_experiment(self, name: str, artifact_location: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # An explicit artifact location keeps artifacts out of the current directory.
        return self.client.create_experiment(name, artifact_location=artifact_location)

    @contextmanager
    def start_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
        """The ``log_*`` calls below write to this run (MLflow's active run) until the context ends."""
        import mlflow

        with self.scope(), mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags)) as run:
            yield run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.log_params(dict(params))

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        import mlflow

        mlflow.log_metrics(dict(metrics))

    def dataset(self, frame: pd.DataFrame, *, source: str, targets: str, name: str) -> Any:
        """An MLflow dataset of ``frame`` (hashed once here; log it to many runs)."""
        from mlflow.data.pandas_dataset import from_pandas

        return from_pandas(frame, source=source, targets=targets, name=name)

    def log_dataset(self, dataset: Any, context: str) -> None:
        import mlflow

        mlflow.log_input(dataset, context=context)

    def log_model(
        self,
        flavor: str,
        model: Any,
        *,
        registered_model_name: str,
        input_example: pd.DataFrame,
        output_example: Any,
        pip_requirements: list[str],
        **flavor_options: Any,
    ) -> str:
        from mlflow.models import infer_signature

        module = importlib.import_module(f"mlflow.{flavor}")
        info = module.log_model(
            model,
            name="model",
            signature=infer_signature(input_example, output_example),
            input_example=input_example,
            registered_model_name=registered_model_name,
            pip_requirements=pip_requirements,
            **flavor_options,
        )
        return str(info.registered_model_version)

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_path: str) -> None:
        self.client.log_dict(run_id, data, artifact_path)

    def log_files(self, run_id: str, files: Mapping[str, bytes], artifact_dir: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self.client.log_artifacts(run_id, tmp, artifact_dir)

    def read_artifact(self, run_id: str, artifact_path: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, artifact_path, tmp)
            return Path(local).read_bytes()

    def download_model(self, model: str, version: str, dst: Path) -> Path:
        """The registered version's MLflow model directory, copied to ``dst`` (for packaging)."""
        import mlflow

        try:
            with self.scope():
                return Path(mlflow.artifacts.download_artifacts(f"models:/{model}/{version}", dst_path=str(dst)))
        except Exception as exc:  # MlflowException, OSError: the artifacts are gone or unreachable
            raise RegistryError(f"cannot download {model} v{version} from {self.tracking_uri}: {exc}") from exc

    @staticmethod
    def input_dtypes(model_dir: Path) -> dict[str, str] | None:
        """Column -> MLflow dtype name from a model directory's signature (None without a named signature)."""
        from mlflow.models import Model

        signature = Model.load(str(model_dir / "MLmodel")).signature
        if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
            return None
        dtypes = {}
        for column in signature.inputs.inputs:
            dtype = getattr(column, "type", None)
            dtypes[column.name] = getattr(dtype, "name", str(dtype)) if dtype is not None else "double"
        return dtypes

    # -- registry

    def get_alias(self, model: str, alias: str) -> ModelRef | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(model, alias)
        except MlflowException as exc:
            if exc.error_code in _MISSING:
                return None
            raise TrackingError(
                f"MLflow registry {self.registry_uri}: reading alias {alias} of {model}: {exc}"
            ) from exc
        return ModelRef(version=str(mv.version), run_id=mv.run_id or "")

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model, alias, str(version))

    def delete_alias(self, model: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(model, alias)
        except MlflowException:
            pass  # already gone

    def set_version_tags(self, model: str, version: str, tags: Mapping[str, str]) -> None:
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

    def model_version_run(self, model: str, version: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(model, str(version)).run_id or ""
        except MlflowException as exc:
            raise RegistryError(
                f"registered model {model!r} version {version!r} not found in the MLflow registry "
                f"({self.registry_uri}): {getattr(exc, 'message', exc)}"
            ) from None

    def versions_tagged(self, model: str, key: str, value: str) -> list[str]:
        found = self.client.search_model_versions(f"name = '{model}' and tags.`{key}` = '{value}'")
        return sorted((str(v.version) for v in found), key=int)

    def set_model_tag(self, model: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(model, key, value)

    def load_pyfunc(self, model: str, version: str) -> Any:
        import mlflow.pyfunc

        try:
            with self.scope():
                return mlflow.pyfunc.load_model(f"models:/{model}/{version}")
        except Exception as exc:  # artifacts gone, flavor missing, ...: the caller reports it
            raise RegistryError(f"cannot load {model} v{version} from the registry: {exc}") from exc
