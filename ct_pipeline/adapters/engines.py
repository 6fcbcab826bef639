"""Container engines that build and push the model-service image: the Docker API through the ``docker`` SDK (a
Docker daemon, or podman's Docker-compatible socket), or the ``podman`` / ``buildah`` CLIs (BentoML's containerize
backends). :func:`select_engine` picks the configured one (``auto``: the first that works) and every "not
available" names what is missing.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ct_pipeline.errors import EngineUnavailable, ImageError
from ct_pipeline.ports import ImageEngine
from ct_pipeline.settings import Settings

log = logging.getLogger(__name__)

SETUP_HINT = "scripts/containers-setup.sh sets up podman, a base image and a registry on 127.0.0.1:5000"


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
    name = ""
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


@dataclass
class Probe:
    name: str
    builder: ImageEngine | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.builder is not None


def docker_endpoints(settings: Settings) -> list[str]:
    """Docker API endpoints to try, in order: settings, DOCKER_HOST, the podman socket, the default socket."""
    found = [settings.image.docker_host]  # CTPIPE_DOCKER_HOST, else DOCKER_HOST (settings alias)
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


def _probe_cli(cls: type[PodmanEngine | BuildahEngine], settings: Settings, exists_args: list[str]) -> Probe:
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


def select_engine(settings: Settings) -> ImageEngine:
    """The engine ``settings.image.engine`` names (or, for ``auto``, the first that works); raises
    :class:`EngineUnavailable` naming what is missing."""
    mode = settings.image.engine
    if mode == "none":
        raise EngineUnavailable("CTPIPE_IMAGE_ENGINE=none: image builds are switched off")
    names = ["docker", "podman", "buildah"] if mode == "auto" else [mode]
    probes = []
    for name in names:
        found = probe(settings, name)
        if found.builder is not None:
            log.info("image engine: %s (%s)", found.builder.describe(), found.detail)
            return found.builder
        probes.append(found)
    missing = "; ".join(f"{p.name}: {p.detail}" for p in probes)
    raise EngineUnavailable(
        f"no usable container engine (CTPIPE_IMAGE_ENGINE={mode}) - {missing}. {SETUP_HINT} "
        "(then `. $CTPIPE_HOME/containers/env`); CTPIPE_IMAGE_ENGINE=none packages the Bento only."
    )
