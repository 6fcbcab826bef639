"""The BentoML adapter: a gated model version packaged as a Bento (imported from MLflow, built with the serving
code), and the store it lives in.

:meth:`BentoMLStore.build` is idempotent: a bento already labelled with the same model, registered version and
MLflow run id is returned instead of being rebuilt. BentoML binds its store once per process; this adapter binds
it to ``settings.paths.bento_home`` through BentoML's own container (no environment variable is changed), and
builds in a fresh subprocess when this process is already bound to another store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_pipeline.domain.records import BentoRef, GateDecision
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.errors import PackageError, RegistryError
from ct_pipeline.settings import Settings

if TYPE_CHECKING:
    from ct_pipeline.ports import Tracker as MlflowTracker

SERVICE_FILE = Path("model_service") / "service.py"  # under settings.paths.serving_root
# The request contract service.py shares with the gateway: copied next to it into the bento.
CONTRACT_FILE = Path("ct_contract.py")
SERVICE_MODULE = "service"
SERVICE_CLASS = "CTModelService"
SERVICE_IMPORT = f"{SERVICE_MODULE}:{SERVICE_CLASS}"
CONFIG_FILE = "ct_model.json"

# What the bento's container needs at runtime, pinned to the versions this process built with.
RUNTIME_PACKAGES = ("mlflow", "scikit-learn", "lightgbm", "pandas", "numpy", "pydantic")

# Label values are kept Kubernetes/BentoCloud-safe: <= 63 chars, alphanumerics with - _ . inside.
# Full values (e.g. a long data hash) stay in ct_model.json and the bento model metadata.
_LABEL_MAX = 63
_LABEL_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_TAG_BAD_CHARS = re.compile(r"[^a-z0-9_.-]+")

_MLFLOW_TYPES = {"double", "float", "long", "integer", "boolean", "string"}


def sanitize_label(value: Any) -> str:
    """A label value BentoML, OCI and Kubernetes all accept ('' stays '')."""
    text = _LABEL_BAD_CHARS.sub("-", str(value))[:_LABEL_MAX]
    return text.strip("-_.")


def bento_model_name(model: str) -> str:
    """BentoML model/bento name for a spec name (lowercase, digits, '-', '_', '.', <= 63 chars)."""
    name = _TAG_BAD_CHARS.sub("-", model.lower()).strip("-_.")[:_LABEL_MAX].strip("-_.")
    if not name:
        raise PackageError(f"cannot derive a BentoML name from model name {model!r}")
    return name


def bento_model_version(version: str, run_id: str) -> str:
    return f"v{sanitize_label(version)}-{sanitize_label(run_id)[:12]}".lower()


def runtime_requirements() -> list[str]:
    pins = []
    for dist in RUNTIME_PACKAGES:
        try:
            pins.append(f"{dist}=={importlib_metadata.version(dist)}")
        except importlib_metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


def _feature_dtypes(
    tracker: MlflowTracker, mlflow_model_dir: Path, features: list[str], model_uri: str
) -> dict[str, str]:
    """MLflow signature dtypes of the spec's features ('double' when the model has no signature)."""
    dtypes = tracker.input_dtypes(mlflow_model_dir)
    if dtypes is None:
        return {f: "double" for f in features}
    missing = [f for f in features if f not in dtypes]
    if missing:
        raise PackageError(f"model {model_uri} signature lacks spec features {missing} (has {sorted(dtypes)})")
    unsupported = {f: dtypes[f] for f in features if dtypes[f] not in _MLFLOW_TYPES}
    if unsupported:
        raise PackageError(f"model {model_uri}: unsupported feature dtypes {unsupported}")
    return {f: dtypes[f] for f in features}


def _lineage_labels(spec: ModelSpec, version: str, run_id: str, data_hash: str) -> dict[str, str]:
    labels = {
        "ct-pipeline": "true",
        "model": spec.name,
        "version": version,
        "run_id": run_id,
        "data_hash": data_hash,
        "task": str(spec.task),
    }
    return {k: sanitize_label(v) for k, v in labels.items()}


def find_bento(model: str, version: str, run_id: str | None = None):
    """A bento in the local store labelled with this model + version (+ run id), newest first, or None."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentos = bentoml.bentos.list(bento_model_name(model))
    except NotFound:
        return None
    wanted = {"model": sanitize_label(model), "version": sanitize_label(version)}
    if run_id:
        wanted["run_id"] = sanitize_label(run_id)
    matches = [b for b in bentos if all(b.info.labels.get(k) == v for k, v in wanted.items())]
    matches.sort(key=lambda b: b.info.creation_time, reverse=True)
    return matches[0] if matches else None


def _bento_ref(bento, data_hash: str) -> BentoRef:
    labels = dict(bento.info.labels)
    models = bento.info.all_models if hasattr(bento.info, "all_models") else bento.info.models
    return BentoRef(
        model=labels.get("model", bento.tag.name),
        version=labels.get("version", ""),
        run_id=labels.get("run_id", ""),
        bento_tag=str(bento.tag),
        bento_model_tag=str(models[0].tag) if models else "",
        data_hash=data_hash,
        labels=labels,
    )


def _import_bento_model(spec: ModelSpec, version: str, run_id: str, data_hash: str, model_uri: str, local: Path):
    import bentoml
    from bentoml.exceptions import NotFound

    tag = f"{bento_model_name(spec.name)}:{bento_model_version(version, run_id)}"
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.labels.get("run_id") == sanitize_label(run_id):
            return existing
        bentoml.models.delete(tag)  # same tag, different run: a stale import, replace it
    try:
        return bentoml.mlflow.import_model(
            tag,
            str(local),
            signatures={"predict": {"batchable": True, "batch_dim": 0}},
            labels=_lineage_labels(spec, version, run_id, data_hash),
            metadata={"model_uri": model_uri, "run_id": run_id, "data_hash": data_hash, "version": version},
        )
    except Exception as exc:
        raise PackageError(f"could not import {model_uri} (run {run_id}) into BentoML: {exc}") from exc


def _build(spec: ModelSpec, decision: GateDecision, settings: Settings, tracker: MlflowTracker) -> BentoRef:
    import bentoml

    if decision.model != spec.name:
        raise PackageError(f"gate decision is for model {decision.model!r}, spec is {spec.name!r}")
    version = str(decision.challenger.version)
    data_hash = decision.snapshot.content_hash
    model_uri = f"models:/{spec.registered_model_name}/{version}"

    try:
        logged_by = tracker.model_version_run(spec.registered_model_name, version)
    except RegistryError as exc:
        raise PackageError(str(exc)) from None
    run_id = logged_by or decision.challenger.run_id
    if decision.challenger.run_id and logged_by and decision.challenger.run_id != logged_by:
        raise PackageError(
            f"{model_uri} was logged by run {logged_by}, but the gate decision names run {decision.challenger.run_id}"
        )

    existing = find_bento(spec.name, version, run_id)
    if existing is not None:
        return _bento_ref(existing, data_hash)

    with tempfile.TemporaryDirectory(prefix=f"mlflow-{spec.name}-") as download:
        try:
            local = tracker.download_model(spec.registered_model_name, version, Path(download))
        except RegistryError as exc:
            raise PackageError(str(exc)) from None
        bento_model = _import_bento_model(spec, version, run_id, data_hash, model_uri, local)
    features = list(spec.data.features)
    dtypes = _feature_dtypes(tracker, Path(bento_model.path_of("mlflow_model")), features, model_uri)
    labels = _lineage_labels(spec, version, run_id, data_hash)
    config = {
        "service_name": bento_model_name(spec.name).replace("-", "_").replace(".", "_"),
        "bento_model_tag": str(bento_model.tag),
        "model": spec.name,
        "version": version,
        "run_id": run_id,
        "data_hash": data_hash,
        "task": str(spec.task),
        "model_uri": model_uri,
        "features": features,
        "feature_dtypes": dtypes,
        "labels": labels,
        "built_at": datetime.now(UTC).isoformat(),
    }
    serving = settings.paths.serving_root
    service_source, contract_source = serving / SERVICE_FILE, serving / CONTRACT_FILE
    for source in (service_source, contract_source):
        if not source.is_file():
            raise PackageError(f"serving code not found: {source}")

    with tempfile.TemporaryDirectory(prefix=f"bento-{spec.name}-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(service_source, ctx / "service.py")
        shutil.copy2(contract_source, ctx / CONTRACT_FILE.name)
        (ctx / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        description = (
            f"# {spec.name} v{version}\n\n{spec.description}\n\n"
            f"- MLflow: `{model_uri}` (run `{run_id}`)\n- data hash: `{data_hash}`\n- task: {spec.task}\n"
        )
        # bentoml imports the module named "service" from the build context: make sure a
        # previously imported one (from an earlier build in this process) is not reused.
        stashed = sys.modules.pop(SERVICE_MODULE, None)
        try:
            bento = bentoml.bentos.build(
                SERVICE_IMPORT,
                name=bento_model_name(spec.name),
                labels=labels,
                description=description,
                include=["service.py", CONTRACT_FILE.name, CONFIG_FILE],
                python={"packages": runtime_requirements(), "lock_packages": False},
                build_ctx=str(ctx),
            )
        except Exception as exc:
            raise PackageError(f"bentoml build failed for {model_uri}: {exc}") from exc
        finally:
            sys.modules.pop(SERVICE_MODULE, None)
            if stashed is not None:
                sys.modules[SERVICE_MODULE] = stashed
    return _bento_ref(bento, data_hash)


def _bind_store(home: Path) -> Path:
    """Bind this process's bentoml to ``home`` unless it already uses a store; return the store it uses."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from simple_di.providers import _SentinelClass

    provider = BentoMLContainer.bentoml_home
    if not (isinstance(provider._override, _SentinelClass) and isinstance(provider._cache, _SentinelClass)):
        return Path(provider.get()).expanduser().resolve()
    for sub in ("", "bentos", "models", "envs", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    provider.set(str(home))
    return home


class BentoMLStore:
    """:class:`~ct_pipeline.ports.BentoStore` on the local BentoML store at ``settings.paths.bento_home``."""

    def __init__(self, settings: Settings, tracker: MlflowTracker) -> None:
        self.settings, self.tracker = settings, tracker
        self.home = settings.paths.bento_home

    def build(self, spec: ModelSpec, decision: GateDecision) -> BentoRef:
        bound = _bind_store(self.home)
        if bound != self.home:
            return self._build_in_subprocess(spec, decision)
        return _build(spec, decision, self.settings, self.tracker)

    def path_of(self, bento_tag: str) -> Path | None:
        name, _, version = bento_tag.partition(":")
        path = self.home / "bentos" / name / version
        return path if (path / "bento.yaml").is_file() else None

    def _build_in_subprocess(self, spec: ModelSpec, decision: GateDecision) -> BentoRef:
        payload = json.dumps({"spec": spec.model_dump(mode="json"), "decision": decision.to_json_dict()})
        env = {**os.environ, **self.settings.child_env()}  # the child reads the same settings from its environment
        proc = subprocess.run(
            [sys.executable, "-m", "ct_pipeline.adapters.bento"], input=payload, capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise PackageError(f"bento build subprocess failed (exit {proc.returncode}):\n{tail}")
        return BentoRef.model_validate_json(proc.stdout.strip().splitlines()[-1])


def build_bento(spec: ModelSpec, decision: GateDecision, settings: Settings, tracker: MlflowTracker | None = None):
    """Build (or find) the Bento of the approved version with a store and tracker made from ``settings``."""
    if tracker is None:
        from ct_pipeline.wiring import make_tracker

        tracker = make_tracker(settings)
    return BentoMLStore(settings, tracker).build(spec, decision)


def _main() -> None:
    """``python -m ct_pipeline.adapters.bento`` < {"spec", "decision"} JSON: build, print the BentoRef."""
    from ct_pipeline.adapters.mlflow import MlflowTracker
    from ct_pipeline.domain.spec import parse_spec
    from ct_pipeline.settings import load_settings

    data = json.loads(sys.stdin.read())
    settings = load_settings()
    _bind_store(settings.paths.bento_home)
    tracker = MlflowTracker(settings.tracking_uri, settings.registry_uri)
    ref = _build(parse_spec(data["spec"]), GateDecision.model_validate(data["decision"]), settings, tracker)
    print(ref.model_dump_json())


if __name__ == "__main__":
    _main()
