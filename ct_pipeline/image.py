"""The model service as an OCI image: built from the promoted Bento, pushed to a registry, pinned by digest.

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

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from ct_pipeline.domain.records import BentoRef
from ct_pipeline.errors import EngineUnavailable, ImageError
from ct_pipeline.settings import Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_HINT = "scripts/containers-setup.sh sets up podman, a base image and a registry on 127.0.0.1:5000"

# Label keys: OCI pre-defined annotation keys + ours (reverse-DNS).
OCI = "org.opencontainers.image"
CT = "io.ct-pipeline"
IDENTITY_LABELS = (f"{CT}.model", f"{CT}.model-version", f"{CT}.mlflow-run-id")

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)

_TAG_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_REPO_BAD = re.compile(r"[^a-z0-9._/-]+")
_FROM = re.compile(r"^(FROM\s+(?:--\S+\s+)*)(\S+)", re.MULTILINE | re.IGNORECASE)






# --------------------------------------------------------------------------------------------- names + labels


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
    from ct_pipeline.promote import code_version

    labels = {
        f"{OCI}.title": f"{bento.model} model service",
        f"{OCI}.description": f"BentoML service of {bento.model} v{bento.version} (MLflow run {bento.run_id})",
        f"{OCI}.version": bento.version,
        f"{OCI}.source": source_repository(settings),
        f"{OCI}.revision": code_version(REPO_ROOT) or "unknown",
        f"{OCI}.created": datetime.now(UTC).isoformat(timespec="seconds"),
        f"{CT}.model": bento.model,
        f"{CT}.model-version": bento.version,
        f"{CT}.mlflow-run-id": bento.run_id,
        f"{CT}.data-hash": bento.data_hash,
        f"{CT}.bento-tag": bento.bento_tag,
        f"{CT}.bento-model-tag": bento.bento_model_tag,
    }
    if settings.image.base:
        labels[f"{OCI}.base.name"] = settings.image.base
    return labels


def same_model(labels: Mapping[str, str] | None, bento: BentoRef) -> bool:
    """Whether an image's labels say it serves exactly this model version (same MLflow run)."""
    if not labels:
        return False
    wanted = dict(zip(IDENTITY_LABELS, (bento.model, bento.version, bento.run_id), strict=True))
    return all(labels.get(k) == v for k, v in wanted.items())


# --------------------------------------------------------------------------------------------- build context


def _bento_home(settings: Settings) -> Path:
    from ct_pipeline.package import bento_home

    return bento_home(settings)


def prepare_context(bento: BentoRef, settings: Settings, dest: Path) -> str:
    """Lay out the build context of ``bento`` in ``dest`` (as ``bentoml containerize`` does) and return the
    Dockerfile's path relative to it: the Bento, its models under ``models/``, BentoML's generated Dockerfile
    with the first FROM pointed at ``settings.image.base``. Reads the store's files, not BentoML's API, so it
    works whichever store this process's bentoml is bound to."""
    from ruamel.yaml import YAML

    home = _bento_home(settings)
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


# --------------------------------------------------------------------------------------------- registry API


class Registry:
    """The registry HTTP API (v2 / OCI distribution), anonymous access: digests and labels of tags."""

    def __init__(self, host: str, insecure: bool | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.host = host.strip("/")
        hostname = self.host.rsplit(":", 1)[0].strip("[]")
        if insecure is None:
            insecure = hostname in ("localhost", "::1") or hostname.startswith("127.")
        self.insecure = insecure
        self.base_url = f"{'http' if insecure else 'https'}://{self.host}"
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self._client.close()

    def _get(self, method: str, path: str, accept: tuple[str, ...] = ()):
        import httpx

        headers = {"Accept": ", ".join(accept)} if accept else {}
        try:
            return self._client.request(method, path, headers=headers)
        except httpx.HTTPError as exc:
            raise ImageError(f"registry {self.base_url} is not reachable: {exc}") from None

    def check(self) -> None:
        resp = self._get("GET", "/v2/")
        if resp.status_code == 401:
            raise ImageError(f"registry {self.base_url} wants authentication, which ct-pipeline does not do yet")
        if resp.status_code != 200:
            raise ImageError(f"registry {self.base_url}/v2/ answered {resp.status_code}, not a registry API?")

    @staticmethod
    def _name(repository: str) -> str:
        host, _, name = repository.partition("/")
        return name

    def digest(self, repository: str, reference: str) -> str | None:
        """``Docker-Content-Digest`` of ``HEAD /v2/<name>/manifests/<reference>`` (None when absent)."""
        resp = self._get("HEAD", f"/v2/{self._name(repository)}/manifests/{reference}", MANIFEST_TYPES + INDEX_TYPES)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ImageError(f"registry HEAD {repository}:{reference} answered {resp.status_code}")
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest or not digest.startswith("sha256:"):
            raise ImageError(f"registry gave no Docker-Content-Digest for {repository}:{reference}")
        return digest

    def manifest(self, repository: str, reference: str) -> dict | None:
        """The image manifest of a tag or digest (for an index: its linux/amd64 image), None when absent."""
        name = self._name(repository)
        resp = self._get("GET", f"/v2/{name}/manifests/{reference}", MANIFEST_TYPES + INDEX_TYPES)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ImageError(f"registry GET manifest {repository}:{reference} answered {resp.status_code}")
        doc = resp.json()
        if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
            entries = doc.get("manifests") or []
            pick = next(
                (m for m in entries if (m.get("platform") or {}).get("architecture") in ("amd64", None)),
                entries[0] if entries else None,
            )
            return self.manifest(repository, pick["digest"]) if pick else None
        return doc

    def config(self, repository: str, reference: str) -> dict | None:
        """The image config (``config.Labels``, ``config.User``, ...) of a tag or digest, None when absent."""
        manifest = self.manifest(repository, reference)
        if manifest is None:
            return None
        digest = (manifest.get("config") or {}).get("digest")
        if not digest:
            raise ImageError(f"manifest of {repository}:{reference} has no config")
        resp = self._get("GET", f"/v2/{self._name(repository)}/blobs/{digest}")
        if resp.status_code != 200:
            raise ImageError(f"registry GET config blob of {repository}:{reference} answered {resp.status_code}")
        return resp.json()

    def labels(self, repository: str, reference: str) -> dict[str, str] | None:
        config = self.config(repository, reference)
        if config is None:
            return None
        return dict((config.get("config") or {}).get("Labels") or {})


# --------------------------------------------------------------------------------------------- engines


@runtime_checkable
class ImageBuilder(Protocol):
    """A container engine that builds an image from a context and pushes it to a registry."""

    name: str

    def describe(self) -> str: ...

    def build(
        self, context: Path, dockerfile: str, ref: str, labels: Mapping[str, str], annotations: Mapping[str, str]
    ) -> None: ...

    def labels(self, ref: str) -> dict[str, str] | None:
        """Labels of the local image ``ref``, None when there is none."""
        ...

    def push(self, ref: str, insecure: bool) -> None: ...


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


class DockerEngine:
    """The Docker Engine API through the ``docker`` SDK: a Docker daemon or podman's compatible socket."""

    name = "docker"

    def __init__(self, base_url: str, network: str = "host", timeout: int = 1800) -> None:
        import docker

        self.base_url = base_url
        self.network = network
        self.client = docker.DockerClient(base_url=base_url, timeout=timeout)

    def describe(self) -> str:
        try:
            version = self.client.version()
            components = {c.get("Name", ""): c.get("Version", "") for c in version.get("Components") or []}
            server = "podman" if "Podman Engine" in components else "docker"
            return f"docker SDK -> {server} {version.get('Version', '')} at {self.base_url}"
        except Exception:  # describe is informational only
            return f"docker SDK -> {self.base_url}"

    def build(self, context, dockerfile, ref, labels, annotations) -> None:
        from docker.errors import APIError, BuildError

        try:
            _, logs = self.client.images.build(
                path=str(context),
                dockerfile=dockerfile,
                tag=ref,
                labels=dict(labels),
                network_mode=self.network,
                rm=True,
                forcerm=True,
                pull=False,
            )
        except BuildError as exc:
            out = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
            raise ImageError(f"image build of {ref} failed ({self.base_url}): {exc.msg}\n{_tail(out)}") from None
        except APIError as exc:
            raise ImageError(f"image build of {ref} failed ({self.base_url}): {exc.explanation or exc}") from None
        for chunk in logs:
            if chunk.get("stream"):
                log.debug("build: %s", chunk["stream"].rstrip())

    def labels(self, ref: str) -> dict[str, str] | None:
        from docker.errors import ImageNotFound

        try:
            return dict(self.client.images.get(ref).labels or {})
        except ImageNotFound:
            return None

    def push(self, ref: str, insecure: bool) -> None:
        from docker.errors import APIError

        repository, _, tag = ref.rpartition(":")
        try:
            for chunk in self.client.images.push(repository, tag=tag, stream=True, decode=True):
                error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message")
                if error:
                    raise ImageError(f"push of {ref} failed ({self.base_url}): {error}")
        except APIError as exc:
            raise ImageError(f"push of {ref} failed ({self.base_url}): {exc.explanation or exc}") from None


class _CliEngine:
    binary = ""

    def __init__(self, network: str = "host", timeout: int = 1800, image_format: str | None = None) -> None:
        path = shutil.which(self.binary)
        if path is None:
            raise EngineUnavailable(f"'{self.binary}' not found on PATH")
        self.path = path
        self.network = network
        self.timeout = timeout
        self.format = image_format or "oci"

    def _build_args(self, context: Path, dockerfile: str, ref: str, labels, annotations) -> list[str]:
        args = ["build", "--layers", f"--format={self.format}", f"--network={self.network}", "--pull=never"]
        args += ["-f", str(Path(context) / dockerfile), "-t", ref, *self._kv("--label", labels)]
        if self.format == "oci":  # the docker format has no manifest annotations
            args += self._kv("--annotation", annotations)
        return [*args, str(context)]

    def build(self, context, dockerfile, ref, labels, annotations) -> None:
        self._run(*self._build_args(Path(context), dockerfile, ref, labels, annotations), what=f"image build of {ref}")

    def _run(self, *args: str, what: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(
                [self.path, *args], capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise ImageError(f"{what} timed out after {self.timeout} s ({self.binary})") from None
        if check and proc.returncode != 0:
            raise ImageError(f"{what} failed ({self.binary} {args[0]}, exit {proc.returncode}):\n{_tail(proc.stderr)}")
        return proc

    def describe(self) -> str:
        proc = self._run("--version", what="version", check=False)
        return proc.stdout.strip() or self.binary

    @staticmethod
    def _kv(flag: str, values: Mapping[str, str]) -> list[str]:
        return [arg for k, v in values.items() for arg in (flag, f"{k}={v}")]


class PodmanEngine(_CliEngine):
    """``podman build`` / ``podman push`` (BentoML's ``containerize --backend podman`` runs the same build)."""

    name = "podman"
    binary = "podman"

    def labels(self, ref: str) -> dict[str, str] | None:
        proc = self._run("image", "inspect", ref, what="inspect", check=False)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout or "[]")
        return dict(data[0].get("Labels") or data[0].get("Config", {}).get("Labels") or {}) if data else None

    def push(self, ref: str, insecure: bool) -> None:
        self._run("push", f"--tls-verify={str(not insecure).lower()}", ref, what=f"push of {ref}")


class BuildahEngine(_CliEngine):
    """``buildah build`` / ``buildah push`` (BentoML's ``containerize --backend buildah``)."""

    name = "buildah"
    binary = "buildah"

    def labels(self, ref: str) -> dict[str, str] | None:
        proc = self._run("inspect", "--type", "image", ref, what="inspect", check=False)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout or "{}")
        config = (data.get("OCIv1") or {}).get("config") or (data.get("Docker") or {}).get("config") or {}
        return dict(config.get("Labels") or {})

    def push(self, ref: str, insecure: bool) -> None:
        self._run("push", f"--tls-verify={str(not insecure).lower()}", ref, f"docker://{ref}", what=f"push of {ref}")


# --------------------------------------------------------------------------------------------- detection


@dataclass
class Probe:
    name: str
    builder: ImageBuilder | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.builder is not None


def docker_endpoints(settings: Settings) -> list[str]:
    """Docker API endpoints to try, in order: settings, DOCKER_HOST, the podman socket, the default socket."""
    found = [settings.image.docker_host, os.environ.get("DOCKER_HOST")]
    if settings.podman_socket_path.exists():
        found.append(f"unix://{settings.podman_socket_path}")
    if Path("/var/run/docker.sock").exists():
        found.append("unix:///var/run/docker.sock")
    return list(dict.fromkeys(e for e in found if e))


def probe_docker(settings: Settings) -> Probe:
    try:
        import docker
    except ImportError:
        return Probe("docker", None, "the 'docker' Python package is not installed (pip install docker)")
    endpoints = docker_endpoints(settings)
    if not endpoints:
        return Probe(
            "docker",
            None,
            f"no Docker API endpoint: DOCKER_HOST / CTPIPE_DOCKER_HOST unset, no podman socket at "
            f"{settings.podman_socket_path}, no /var/run/docker.sock",
        )
    problems = []
    for endpoint in endpoints:
        try:
            client = docker.DockerClient(base_url=endpoint, timeout=10)
            client.ping()
        except Exception as exc:  # any failure means "not this endpoint"
            problems.append(f"{endpoint}: {type(exc).__name__}: {str(exc)[:160]}")
            continue
        if settings.image.base:
            try:
                client.images.get(settings.image.base)
            except docker.errors.ImageNotFound:
                problems.append(f"{endpoint}: base image {settings.image.base} is missing")
                client.close()
                continue
        client.close()
        engine = DockerEngine(endpoint, network=settings.image.network, timeout=settings.image.build_timeout)
        return Probe("docker", engine, endpoint)
    return Probe("docker", None, "; ".join(problems))


def _probe_cli(cls: type[_CliEngine], settings: Settings, exists_args: list[str]) -> Probe:
    try:
        engine = cls(
            network=settings.image.network, timeout=settings.image.build_timeout, image_format=settings.image.format
        )
    except EngineUnavailable as exc:
        return Probe(cls.name, None, str(exc))
    if settings.image.base:
        proc = engine._run(*exists_args, settings.image.base, what="image check", check=False)
        if proc.returncode != 0:
            return Probe(cls.name, None, f"base image {settings.image.base} is missing in {cls.binary}'s storage")
    else:
        proc = engine._run("info", what="info", check=False)
        if proc.returncode != 0:
            return Probe(cls.name, None, f"'{cls.binary} info' failed: {_tail(proc.stderr, 2)}")
    return Probe(cls.name, engine, engine.path)


def probe(settings: Settings, name: str) -> Probe:
    if name == "docker":
        return probe_docker(settings)
    if name == "podman":
        return _probe_cli(PodmanEngine, settings, ["image", "exists"])
    if name == "buildah":
        return _probe_cli(BuildahEngine, settings, ["inspect", "--type", "image"])
    raise ValueError(f"unknown image engine {name!r} (docker, podman, buildah)")


def select_engine(settings: Settings) -> ImageBuilder:
    """The engine ``settings.image.engine`` names (or, for ``auto``, the first that works); raises
    :class:`EngineUnavailable` naming what is missing."""
    mode = settings.image.engine
    if mode == "none":
        raise EngineUnavailable("CTPIPE_IMAGE_ENGINE=none: image builds are switched off")
    names = ["docker", "podman", "buildah"] if mode == "auto" else [mode]
    probes = []
    for name in names:
        found = probe(settings, name)
        if found.ok:
            log.info("image engine: %s (%s)", found.builder.describe(), found.detail)
            return found.builder
        probes.append(found)
    missing = "; ".join(f"{p.name}: {p.detail}" for p in probes)
    raise EngineUnavailable(
        f"no usable container engine (CTPIPE_IMAGE_ENGINE={mode}) - {missing}. {SETUP_HINT} "
        "(then `. $CTPIPE_HOME/containers/env`); CTPIPE_IMAGE_ENGINE=none packages the Bento only."
    )


# --------------------------------------------------------------------------------------------- the step


def build_and_push(bento: BentoRef, settings: Settings, engine: ImageBuilder | None = None) -> BentoRef:
    """Build (or reuse) the image of ``bento``, push it, read its digest back from the registry and return
    ``bento`` with ``image_repository`` / ``image_tag`` / ``image_digest``. Raises :class:`ImageError`."""
    repository, tag = image_repository(settings, bento.model), image_tag(bento)
    ref = f"{repository}:{tag}"
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
                existing.get(f"{CT}.model-version"),
                existing.get(f"{CT}.mlflow-run-id"),
            )
        engine = engine or select_engine(settings)
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


def package_image(bento: BentoRef, settings: Settings) -> BentoRef:
    """The package step's image part: ``none`` -> the Bento only; ``auto`` without a usable engine -> the
    Bento only, with a warning saying what is missing; otherwise :func:`build_and_push` (errors propagate, so
    a failed build or push stops the run before the promotion)."""
    if settings.image.engine == "none":
        log.info("CTPIPE_IMAGE_ENGINE=none: packaging the Bento only")
        return bento
    try:
        engine = select_engine(settings)
    except EngineUnavailable as exc:
        if settings.image.engine != "auto":
            raise
        log.warning("%s -> packaging the Bento only (no image)", exc)
        return bento
    return build_and_push(bento, settings, engine=engine)
