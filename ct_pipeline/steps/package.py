"""Step 5, package: the Bento of the approved version, then the model service as an OCI image built from it,
pushed to a registry and pinned by digest (when a container engine is configured or available).

``build_and_push(bento, settings) -> BentoRef`` returns the BentoRef with ``image_repository``,
``image_tag`` (human: ``<model>-v<version>``) and ``image_digest`` (read back from the registry), which
:func:`ct_pipeline.domain.manifest.bump` writes into the GitOps values file; the chart deploys ``repository@digest``.

- Build context and Dockerfile are BentoML's: the Bento directory with its models, and the Dockerfile BentoML
  generated into the Bento (``env/docker/Dockerfile``, what ``bentoml containerize`` builds). Only its first
  ``FROM`` is pointed at ``settings.image.base`` (a locally built image: nothing is pulled). The image runs as
  BentoML's non-root user ``bentoml`` (uid 1034) and serves ``/livez`` + ``/readyz`` (the chart's probes).
- Engines (:class:`ImageBuilder`): the Docker API through the ``docker`` SDK (a Docker daemon, or podman's
  Docker-compatible socket), or the ``podman`` / ``buildah`` CLIs (BentoML's containerize backends). Chosen by
  ``settings.image.engine``; ``auto`` takes the first that works, and every "not available" names what is missing.
- OCI labels (and, for OCI-format builds of podman/buildah, the same as manifest annotations): source repo, git
  revision, model name, version, MLflow run id, data hash, Bento tag. The Docker API builds the docker format;
  ``settings.image.format="docker"`` makes podman/buildah do the same (and share one layer cache with it).
- Idempotent: when the registry already holds ``<model>-v<version>`` built from the same model version and
  MLflow run, it is reused (same digest, no build); a local image with those labels is pushed without a rebuild.
- A failed build or push raises :class:`ImageError`, so the promotion (the manifest change) never happens.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from ct_pipeline.context import StepContext
from ct_pipeline.domain import tags
from ct_pipeline.domain.records import BentoRef, GateDecision
from ct_pipeline.errors import EngineUnavailable, ImageError
from ct_pipeline.ports import ImageEngine, ImageRegistry
from ct_pipeline.settings import Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

_TAG_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_REPO_BAD = re.compile(r"[^a-z0-9._/-]+")
_FROM = re.compile(r"^(FROM\s+(?:--\S+\s+)*)(\S+)", re.MULTILINE | re.IGNORECASE)


def image_repository(settings: Settings, model: str) -> str:
    """``<registry>/<prefix>/<model>`` (lowercase, as registries require)."""
    parts = [settings.image.registry.strip("/"), settings.image.repository_prefix.strip("/"), model]
    repo = "/".join(p for p in parts if p)
    host, _, path = repo.partition("/")
    path = _REPO_BAD.sub("-", path.lower())
    if not path:
        raise ImageError(f"cannot derive an image repository from registry {settings.image.registry!r}")
    return f"{host}/{path}"


def image_tag(bento: BentoRef) -> str:
    """The human tag: model name + version, e.g. ``fraud-detector-v3`` (<= 128 chars, OCI tag grammar)."""
    tag = _TAG_BAD.sub("-", f"{bento.model}-v{bento.version}").lstrip(".-")
    return tag[:128]


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def source_repository(settings: Settings) -> str:
    """Where the code in the image comes from: settings, else the checkout's ``origin``, else the checkout."""
    return settings.image.source or _git("remote", "get-url", "origin") or REPO_ROOT.as_uri()


def image_labels(bento: BentoRef, settings: Settings) -> dict[str, str]:
    """OCI labels of the model-service image (also written as manifest annotations where the engine can)."""
    from ct_pipeline.steps.promote import code_version

    labels = {
        tags.OCI_TITLE: f"{bento.model} model service",
        tags.OCI_DESCRIPTION: f"BentoML service of {bento.model} v{bento.version} (MLflow run {bento.run_id})",
        tags.OCI_VERSION: bento.version,
        tags.OCI_SOURCE: source_repository(settings),
        tags.OCI_REVISION: code_version(REPO_ROOT) or "unknown",
        tags.OCI_CREATED: datetime.now(UTC).isoformat(timespec="seconds"),
        tags.LABEL_MODEL: bento.model,
        tags.LABEL_MODEL_VERSION: bento.version,
        tags.LABEL_RUN_ID: bento.run_id,
        tags.LABEL_DATA_HASH: bento.data_hash,
        tags.LABEL_BENTO_TAG: bento.bento_tag,
        tags.LABEL_BENTO_MODEL_TAG: bento.bento_model_tag,
    }
    if settings.image.base:
        labels[tags.OCI_BASE_NAME] = settings.image.base
    return labels


def same_model(labels: Mapping[str, str] | None, bento: BentoRef) -> bool:
    """Whether an image's labels say it serves exactly this model version (same MLflow run)."""
    if not labels:
        return False
    wanted = dict(zip(tags.IDENTITY_LABELS, (bento.model, bento.version, bento.run_id), strict=True))
    return all(labels.get(k) == v for k, v in wanted.items())


def prepare_context(bento: BentoRef, settings: Settings, dest: Path) -> str:
    """Lay out the build context of ``bento`` in ``dest`` (as ``bentoml containerize`` does) and return the
    Dockerfile's path relative to it: the Bento, its models under ``models/``, BentoML's generated Dockerfile
    with the first FROM pointed at ``settings.image.base``. Reads the store's files, not BentoML's API, so it
    works whichever store this process's bentoml is bound to."""
    from ruamel.yaml import YAML

    home = settings.paths.bento_home
    name, _, version = bento.bento_tag.partition(":")
    src = home / "bentos" / name / version
    if not (src / "bento.yaml").is_file():
        raise ImageError(f"bento {bento.bento_tag} not found in the bento store {home}")
    shutil.copytree(src, dest, dirs_exist_ok=True)
    info = YAML(typ="safe").load((src / "bento.yaml").read_text()) or {}
    model_tags = [m["tag"] for m in info.get("models") or []]
    model_tags += [m["tag"] for svc in info.get("services") or [] for m in svc.get("models") or []]
    for tag in dict.fromkeys(model_tags):
        m_name, _, m_version = str(tag).partition(":")
        m_src = home / "models" / m_name / m_version
        if not (m_src / "model.yaml").is_file():
            raise ImageError(f"model {tag} of bento {bento.bento_tag} not found in the bento store {home}")
        shutil.copytree(m_src, dest / "models" / m_name / m_version, dirs_exist_ok=True)
        (dest / "models" / m_name / "latest").write_text(m_version)
    (dest / "hf-models").mkdir(exist_ok=True)
    dockerfile = dest / "env" / "docker" / "Dockerfile"
    if not dockerfile.is_file():
        raise ImageError(f"bento {bento.bento_tag} has no env/docker/Dockerfile (BentoML builds one)")
    if settings.image.base:
        text, n = _FROM.subn(lambda m: m.group(1) + settings.image.base, dockerfile.read_text(), count=1)
        if n != 1:
            raise ImageError(f"no FROM line in the Dockerfile of bento {bento.bento_tag}")
        dockerfile.write_text(text)
    return "env/docker/Dockerfile"


def build_and_push(
    bento: BentoRef, settings: Settings, engine: ImageEngine | None = None, registry: ImageRegistry | None = None
) -> BentoRef:
    """Build (or reuse) the image of ``bento``, push it, read its digest back from the registry and return
    ``bento`` with ``image_repository`` / ``image_tag`` / ``image_digest``. Raises :class:`ImageError`."""
    repository, tag = image_repository(settings, bento.model), image_tag(bento)
    ref = f"{repository}:{tag}"
    if registry is None:
        from ct_pipeline.adapters.oci_registry import Registry

        registry = Registry(settings.image.registry, settings.image.registry_insecure)
    try:
        registry.check()  # fail before a long build when the push could not happen anyway
        existing = registry.labels(repository, tag)
        if same_model(existing, bento):
            digest = registry.digest(repository, tag)
            log.info("image %s@%s already in the registry for %s v%s: reused", ref, digest, bento.model, bento.version)
            return _with_image(bento, repository, tag, digest)
        if existing is not None:
            log.warning(
                "registry tag %s holds another build (%s run %s); it will point at the new image",
                ref,
                existing.get(tags.LABEL_MODEL_VERSION),
                existing.get(tags.LABEL_RUN_ID),
            )
        if engine is None:
            from ct_pipeline.adapters.engines import select_engine

            engine = select_engine(settings)
        if same_model(engine.labels(ref), bento):
            log.info("local image %s matches %s v%s: pushing it without a rebuild", ref, bento.model, bento.version)
        else:
            labels = image_labels(bento, settings)
            with tempfile.TemporaryDirectory(prefix=f"image-{bento.model}-") as tmp:
                dockerfile = prepare_context(bento, settings, Path(tmp))
                log.info("building %s from bento %s with %s", ref, bento.bento_tag, engine.name)
                engine.build(Path(tmp), dockerfile, ref, labels, labels)
            if not same_model(engine.labels(ref), bento):
                raise ImageError(f"the {engine.name} build of {ref} did not produce an image labelled for it")
        log.info("pushing %s", ref)
        engine.push(ref, registry.insecure)
        digest = registry.digest(repository, tag)
        if digest is None:
            raise ImageError(f"pushed {ref}, but the registry {registry.base_url} does not list it")
        if not same_model(registry.labels(repository, digest), bento):
            raise ImageError(f"registry image {repository}@{digest} is not labelled for {bento.model} v{bento.version}")
        log.info("image %s@%s", ref, digest)
        return _with_image(bento, repository, tag, digest)
    finally:
        registry.close()


def _with_image(bento: BentoRef, repository: str, tag: str, digest: str | None) -> BentoRef:
    if not digest:
        raise ImageError(f"no digest for {repository}:{tag}")
    return bento.model_copy(update={"image_repository": repository, "image_tag": tag, "image_digest": digest})


def package_image(
    bento: BentoRef,
    settings: Settings,
    engine: Callable[[], ImageEngine | None] | None = None,
    registry: Callable[[], ImageRegistry] | None = None,
) -> BentoRef:
    """The package step's image part: ``none`` -> the Bento only; ``auto`` without a usable engine -> the
    Bento only, with a warning saying what is missing; otherwise :func:`build_and_push` (errors propagate, so
    a failed build or push stops the run before the promotion). ``engine`` / ``registry`` are the context's
    factories (default: the configured engine and registry)."""
    if settings.image.engine == "none":
        log.info("CTPIPE_IMAGE_ENGINE=none: packaging the Bento only")
        return bento
    if engine is None:
        from ct_pipeline.adapters.engines import select_engine

        def engine() -> ImageEngine:
            return select_engine(settings)

    try:
        found = engine()
    except EngineUnavailable as exc:
        if settings.image.engine != "auto":
            raise
        log.warning("%s -> packaging the Bento only (no image)", exc)
        return bento
    if found is None:
        return bento
    return build_and_push(bento, settings, found, registry() if registry is not None else None)


def package(ctx: StepContext, decision: GateDecision) -> BentoRef:
    """The Bento of the approved version, then its image pushed and pinned by digest when an engine is there."""
    bento = ctx.bentos.build(ctx.spec, decision)
    return package_image(bento, ctx.settings, engine=lambda: ctx.image_engine, registry=ctx.image_registry)
