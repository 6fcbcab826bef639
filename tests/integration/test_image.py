"""The model-service OCI image on the real engine: podman (its Docker-compatible socket through the docker SDK,
and the podman / buildah CLIs), a real registry (Debian's docker-registry on 127.0.0.1:5000), real Bentos.

Needs scripts/containers-setup.sh to work on this machine (root + apt for the first run, ~3 min; then ~1 s):
the module runs it itself and FAILS, saying why, when it cannot. Nothing here is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ct_pipeline.adapters.engines import select_engine
from ct_pipeline.adapters.oci_registry import Registry
from ct_pipeline.domain.records import BentoRef
from ct_pipeline.domain.tags import CT_LABEL as CT
from ct_pipeline.domain.tags import OCI
from ct_pipeline.errors import EngineUnavailable, ImageError
from ct_pipeline.settings import Settings, load_settings
from ct_pipeline.steps import package as image_mod
from ct_pipeline.steps.package import build_and_push, package_image, prepare_context
from tests.support.factories import bento_ref as _ref
from tests.support.factories import frame, free_tcp_port, make_decision, make_spec, register_model, shared_bento_home

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP = REPO_ROOT / "scripts" / "containers-setup.sh"
# Where the engine's state lives (base image, layer cache, registry storage): the make/demo home, captured
# before the per-test fixtures point CTPIPE_HOME elsewhere, so the base image is built once per machine.
CONTAINERS_HOME = Path(os.environ.get("CTPIPE_HOME") or REPO_ROOT / ".ctpipe").resolve()
PREFIX = f"ct-test-{uuid.uuid4().hex[:8]}"  # a fresh repository per run: the first push is a real one
REQUIRED_LABELS = [
    f"{OCI}.source",
    f"{OCI}.revision",
    f"{OCI}.version",
    f"{CT}.model",
    f"{CT}.model-version",
    f"{CT}.mlflow-run-id",
    f"{CT}.data-hash",
]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_timings(request):
    """Print the measured timings of the image tests at the end of the module (setup, build, push, pull, run)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and TIMINGS:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for what, seconds in TIMINGS.items():
                reporter.write_line(f"image timing: {what}: {seconds:.1f} s")


# ------------------------------------------------------------------------------------------ no engine needed


def test_labels_carry_lineage(tmp_path):
    s = load_settings(paths={"home": tmp_path}, image={"source": "https://github.com/acme/ct-pipeline"})
    labels = image_mod.image_labels(_ref(), s)
    assert labels[f"{OCI}.source"] == "https://github.com/acme/ct-pipeline"
    assert labels[f"{CT}.mlflow-run-id"] == "0123456789abcdef" and labels[f"{CT}.data-hash"] == "sha256:" + "ab" * 32
    assert labels[f"{OCI}.revision"] not in ("", "unknown")  # this checkout is a git repository
    assert image_mod.same_model(labels, _ref()) and not image_mod.same_model(labels, _ref(run_id="other"))


def test_no_engine_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    s = load_settings(
        paths={"home": tmp_path},
        image={
            "engine": "auto",
            "docker_host": f"unix://{tmp_path}/no.sock",
            "base": "localhost/ct-pipeline/no-such-base:1",
        },
    )
    with pytest.raises(EngineUnavailable) as exc:
        select_engine(s)
    text = str(exc.value)
    assert "docker:" in text and "no.sock" in text and "podman:" in text and "buildah:" in text
    assert "containers-setup.sh" in text and "CTPIPE_IMAGE_ENGINE=none" in text
    # auto without an engine: the package step keeps the Bento only
    assert package_image(_ref(), s) == _ref()
    # a configured engine that is not there is an error, not a silent Bento-only run
    with pytest.raises(EngineUnavailable, match="CTPIPE_IMAGE_ENGINE=docker"):
        package_image(_ref(), s.replace(image={"engine": "docker"}))
    assert package_image(_ref(), s.replace(image={"engine": "none"})) == _ref()


def test_unreachable_registry_fails_before_building(tmp_path):
    s = load_settings(paths={"home": tmp_path}, image={"registry": f"127.0.0.1:{free_tcp_port()}"})

    class NoBuild:
        name = "spy"

        def __getattr__(self, item):
            raise AssertionError(f"engine.{item} must not be called")

    with pytest.raises(ImageError, match="not reachable"):
        build_and_push(_ref(), s, engine=NoBuild())


# ------------------------------------------------------------------------------------------ the real engine


@pytest.fixture(scope="module")
def containers():
    """Run scripts/containers-setup.sh (idempotent) and put its environment into this process."""
    env = {**os.environ, "CTPIPE_HOME": str(CONTAINERS_HOME)}
    for var in ("CTPIPE_IMAGE_REGISTRY", "CTPIPE_IMAGE_BASE"):
        env.pop(var, None)
    started = time.monotonic()
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, env=env, timeout=840)
    TIMINGS["setup"] = time.monotonic() - started
    assert proc.returncode == 0, f"scripts/containers-setup.sh failed (the image tests need it):\n{proc.stderr}"
    exported = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        exported[key.strip()] = value.strip()
    assert {"CONTAINERS_CONF", "CTPIPE_DOCKER_HOST", "CTPIPE_IMAGE_BASE"} <= set(exported), proc.stdout
    with pytest.MonkeyPatch.context() as mp:
        for key, value in exported.items():
            if not key.startswith("CTPIPE_"):  # CONTAINERS_*: the podman/buildah CLIs read them
                mp.setenv(key, value)
        yield exported


@pytest.fixture(scope="module")
def img_settings(containers, tmp_path_factory):
    home = tmp_path_factory.mktemp("image-home")
    with pytest.MonkeyPatch.context() as mp:
        s = load_settings(
            paths={"home": home, "bentoml_home": shared_bento_home(tmp_path_factory)},
            image={
                "engine": "docker",
                "docker_host": containers["CTPIPE_DOCKER_HOST"],
                "registry": containers["CTPIPE_IMAGE_REGISTRY"],
                "base": containers["CTPIPE_IMAGE_BASE"],
                "repository_prefix": PREFIX,
            },
        )
        s.paths.home_dir.mkdir(parents=True, exist_ok=True)
        mp.setenv("MLFLOW_TRACKING_URI", s.tracking_uri)
        mp.setenv("BENTOML_HOME", str(s.paths.bento_home))
        mp.setenv("BENTOML_DO_NOT_TRACK", "true")
        mp.setenv("CTPIPE_HOME", str(home))
        yield s


@pytest.fixture(scope="module")
def docker_client(img_settings):
    import docker

    client = docker.DockerClient(base_url=img_settings.image.docker_host, timeout=600)
    yield client
    # drop this run's images (all engines share podman's storage) but not their untagged parents: those are the
    # layer cache the next run builds on (the Docker API's image removal would prune them)
    tags = [tag for img in client.images.list() for tag in img.tags if f"/{PREFIX}" in tag]
    if tags:
        subprocess.run(["podman", "rmi", "--no-prune", "--force", *tags], capture_output=True, timeout=300)
    client.close()


@pytest.fixture(scope="module")
def bento(img_settings):
    """A real Bento of a real MLflow model version (logistic regression on 3 features)."""
    from ct_pipeline.adapters.bento import build_bento

    spec = make_spec()
    version, run_id, model = register_model(spec.name)
    ref = build_bento(spec, make_decision(spec.name, version, run_id), img_settings)
    return ref, model


@pytest.fixture(scope="module")
def pushed(img_settings, bento):
    """The image built with the docker SDK against podman's socket, pushed to the registry."""
    ref, _ = bento
    started = time.monotonic()
    out = build_and_push(ref, img_settings)
    TIMINGS["build+push (docker SDK)"] = time.monotonic() - started
    return out


class _SpyEngine:
    """Wraps a real engine and records calls; ``forbid_build`` makes a build a test failure."""

    def __init__(self, engine, forbid_build: bool = False):
        self.engine, self.forbid_build, self.calls = engine, forbid_build, []
        self.name = engine.name

    def describe(self):
        return self.engine.describe()

    def build(self, *args, **kwargs):
        self.calls.append("build")
        assert not self.forbid_build, "the image was rebuilt"
        return self.engine.build(*args, **kwargs)

    def labels(self, ref):
        return self.engine.labels(ref)

    def push(self, ref, insecure):
        self.calls.append("push")
        return self.engine.push(ref, insecure)


def test_context_is_bentomls_with_the_local_base(img_settings, bento, tmp_path):
    ref, _ = bento
    dockerfile = (tmp_path / prepare_context(ref, img_settings, tmp_path)).read_text()
    assert dockerfile.count(f"FROM {img_settings.image.base} AS base-container") == 1
    assert "USER bentoml" in dockerfile and "python:3.11-slim" not in dockerfile
    name, _, version = ref.bento_model_tag.partition(":")
    assert (tmp_path / "models" / name / version / "mlflow_model" / "MLmodel").is_file()
    assert (tmp_path / "src" / "ct_model.json").is_file() and (tmp_path / "bento.yaml").is_file()


def test_auto_detects_podman_socket_through_docker_host(img_settings, monkeypatch):
    from ct_pipeline.settings import ImageSettings

    monkeypatch.delenv("CTPIPE_DOCKER_HOST", raising=False)
    monkeypatch.setenv("DOCKER_HOST", img_settings.image.docker_host)
    from_env = ImageSettings(engine="auto").docker_host  # DOCKER_HOST is read once, into the settings
    assert from_env == img_settings.image.docker_host
    engine = select_engine(img_settings.replace(image={"engine": "auto", "docker_host": from_env}))
    assert engine.name == "docker" and "podman" in engine.describe()


def test_build_push_pin_by_digest(img_settings, bento, pushed):
    ref, _ = bento
    repository = f"{img_settings.image.registry}/{PREFIX}/fraud-detector"
    assert (pushed.image_repository, pushed.image_tag) == (repository, f"fraud-detector-v{ref.version}")
    assert pushed.image_digest.startswith("sha256:") and len(pushed.image_digest) == 71
    assert pushed.model_copy(update={"image_repository": None, "image_tag": None, "image_digest": None}) == ref

    registry = Registry(img_settings.image.registry)
    try:
        assert registry.digest(repository, pushed.image_tag) == pushed.image_digest
        config = registry.config(repository, pushed.image_digest)
    finally:
        registry.close()
    labels = config["config"]["Labels"]
    assert all(labels.get(k) for k in REQUIRED_LABELS), {k: labels.get(k) for k in REQUIRED_LABELS}
    assert labels[f"{CT}.mlflow-run-id"] == ref.run_id and labels[f"{CT}.data-hash"] == ref.data_hash
    assert labels[f"{OCI}.version"] == ref.version and labels[f"{CT}.bento-tag"] == ref.bento_tag
    assert config["config"]["User"] == "bentoml"  # BentoML's non-root user, set by its Dockerfile

    # the GitOps values file records repository, human tag and digest; the chart then runs repository@digest
    from ct_pipeline.domain.manifest import bump, read_deployed, render_initial_values

    spec = make_spec()
    deployed = read_deployed(bump(render_initial_values(spec), pushed), spec)
    assert (deployed.image_repository, deployed.image_tag, deployed.image_digest) == (
        repository,
        pushed.image_tag,
        pushed.image_digest,
    )


def test_rerun_reuses_the_image(img_settings, bento, pushed):
    ref, _ = bento
    spy = _SpyEngine(select_engine(img_settings), forbid_build=True)
    started = time.monotonic()
    again = build_and_push(ref, img_settings, engine=spy)
    TIMINGS["re-run (registry reuse)"] = time.monotonic() - started
    assert again == pushed and spy.calls == []


def test_local_image_is_pushed_without_rebuild(img_settings, bento, pushed):
    """The registry lost the tag (e.g. an earlier push failed): the local image is pushed again, not rebuilt."""
    import httpx

    ref, _ = bento
    name = pushed.image_repository.partition("/")[2]
    url = f"http://{img_settings.image.registry}/v2/{name}/manifests/{pushed.image_digest}"
    assert httpx.delete(url).status_code == 202
    spy = _SpyEngine(select_engine(img_settings), forbid_build=True)
    again = build_and_push(ref, img_settings, engine=spy)
    assert spy.calls == ["push"]
    assert (again.image_repository, again.image_tag) == (pushed.image_repository, pushed.image_tag)
    registry = Registry(img_settings.image.registry)
    try:
        assert registry.digest(again.image_repository, again.image_tag) == again.image_digest
    finally:
        registry.close()


def _wait_ready(url: str, container, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        container.reload()
        if container.status not in ("created", "running"):
            raise AssertionError(f"container exited ({container.status}):\n{container.logs().decode()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{url}/readyz not ready in {timeout} s:\n{container.logs().decode()[-3000:]}")


def _post(url: str, body: dict) -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def test_pull_by_digest_run_predict_health_nonroot(img_settings, docker_client, bento, pinned_image):
    ref, model = bento
    pinned = pinned_image
    # pull by digest from the registry (the local tag is dropped first, so the pull is what provides it)
    docker_client.images.remove(f"{pinned.image_repository}:{pinned.image_tag}", force=True)
    started = time.monotonic()
    pulled = docker_client.images.pull(f"{pinned.image_repository}@{pinned.image_digest}")
    TIMINGS["pull by digest"] = time.monotonic() - started
    assert pulled.labels[f"{CT}.mlflow-run-id"] == ref.run_id

    port = free_tcp_port()
    container = docker_client.containers.run(
        f"{pinned.image_repository}@{pinned.image_digest}",
        command=["--host", "127.0.0.1", "--port", str(port)],  # the entrypoint runs `bentoml serve ARGS $BENTO`
        network_mode="host",
        environment={"BENTOML_DO_NOT_TRACK": "true"},
        detach=True,
    )
    try:
        started = time.monotonic()
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, container)
        TIMINGS["container start -> /readyz"] = time.monotonic() - started

        x, _ = frame(n=5, seed=3)
        rows = x.to_dict(orient="records")
        scores = _post(f"{url}/predict", {"rows": rows})
        expected = model.predict_proba(x)[:, 1]
        assert [round(s, 6) for s in scores] == [round(float(e), 6) for e in expected]
        assert _post(f"{url}/metadata", {})["run_id"] == ref.run_id

        # inside the container: the user, and the endpoints the chart's probes (and clients) use
        uid = container.exec_run(["id", "-u"])
        assert uid.exit_code == 0 and uid.output.decode().strip() == "1034"  # bentoml, not root (0)
        check = (
            "import json, urllib.request as u\n"
            f"b = 'http://127.0.0.1:{port}'\n"
            "print(u.urlopen(b + '/livez').status, u.urlopen(b + '/readyz').status)\n"
            "r = u.Request(b + '/predict', data=json.dumps({'rows': %s}).encode(),"
            " headers={'Content-Type': 'application/json'})\n"
            "print(json.load(u.urlopen(r)))\n" % json.dumps(rows[:1])
        )
        inside = container.exec_run(["python", "-c", check])
        assert inside.exit_code == 0, inside.output.decode()
        health, predicted = inside.output.decode().strip().splitlines()
        assert health == "200 200"
        assert round(json.loads(predicted)[0], 6) == round(float(expected[0]), 6)
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def pinned_image(img_settings, pushed):
    """The pinned image as the registry holds it after the other docker-engine tests ran."""
    registry = Registry(img_settings.image.registry)
    try:
        digest = registry.digest(pushed.image_repository, pushed.image_tag)
    finally:
        registry.close()
    return pushed.model_copy(update={"image_digest": digest})


@pytest.mark.parametrize(
    "engine, image_format, media_type",
    [
        ("podman", None, "application/vnd.oci.image.manifest.v1+json"),  # podman's default: OCI, with annotations
        ("buildah", "docker", "application/vnd.docker.distribution.manifest.v2+json"),  # shares the SDK's cache
    ],
)
def test_cli_engines_build_and_push(img_settings, bento, engine, image_format, media_type):
    """BentoML's containerize backends (the podman / buildah CLIs): the same labels; OCI builds also carry them
    as manifest annotations."""
    ref, _ = bento
    s = img_settings.replace(
        image={"engine": engine, "format": image_format, "repository_prefix": f"{PREFIX}-{engine}"}
    )
    started = time.monotonic()
    out = build_and_push(ref, s)
    TIMINGS[f"build+push ({engine} CLI)"] = time.monotonic() - started
    registry = Registry(s.image.registry)
    try:
        assert registry.digest(out.image_repository, out.image_tag) == out.image_digest
        manifest = registry.manifest(out.image_repository, out.image_digest)
        labels = registry.labels(out.image_repository, out.image_digest)
    finally:
        registry.close()
    assert manifest["mediaType"] == media_type
    assert all(labels.get(k) for k in REQUIRED_LABELS) and labels[f"{CT}.mlflow-run-id"] == ref.run_id
    if image_format is None:
        annotations = manifest.get("annotations") or {}
        assert all(annotations.get(k) == labels[k] for k in REQUIRED_LABELS), annotations


# ------------------------------------------------------------------------------------------ in the loop


class _RefusingRegistry(BaseHTTPRequestHandler):
    """Answers the API version check, has no images, refuses every upload: every push fails."""

    def _send(self, code: int, body: bytes = b"{}") -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self._send(200 if self.path == "/v2/" else 404)

    do_HEAD = do_GET

    def do_POST(self):
        self._send(403, b'{"errors": [{"code": "DENIED", "message": "pushes refused"}]}')

    do_PUT = do_PATCH = do_POST

    def log_message(self, *args):
        pass


def _cli_env(img_settings: Settings, home: Path, **extra: str) -> dict[str, str]:
    """A throwaway ct-pipeline environment for `ctpipe` subprocesses (MLflow, BentoML, git state under ``home``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CTPIPE_", "AIRFLOW", "MLFLOW_", "BENTOML_"))}
    environ.update(
        {
            "CTPIPE_HOME": str(home),
            "CTPIPE_MODELS_DIR": str(home / "models"),
            "CTPIPE_DATA_DIR": str(home / "data"),
            "CTPIPE_IMAGE_ENGINE": "docker",
            "CTPIPE_DOCKER_HOST": img_settings.image.docker_host,
            "CTPIPE_IMAGE_REGISTRY": img_settings.image.registry,
            "CTPIPE_IMAGE_BASE": img_settings.image.base,
            "CTPIPE_IMAGE_REPOSITORY_PREFIX": PREFIX,
            **extra,
        }
    )
    return environ


def _ctpipe(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    ctpipe = Path(sys.executable).parent / "ctpipe"
    return subprocess.run([str(ctpipe), *args], env=environ, capture_output=True, text=True, timeout=600)


def _write_model(home: Path, end: datetime) -> None:
    from ruamel.yaml import YAML

    from tests.support.factories import SPEC

    (home / "models").mkdir(parents=True)
    with (home / "models" / "image-loop.yaml").open("w") as fh:
        YAML(typ="safe").dump({**SPEC, "name": "image-loop"}, fh)
    x, y = frame(n=400, seed=7)
    x["ts"] = [end - timedelta(hours=i + 1) for i in range(len(x))][::-1]
    x["is_fraud"] = y
    (home / "data").mkdir()
    x.to_csv(home / "data" / "tx.csv", index=False)


def _git(home: Path, *args: str) -> str:
    cmd = ["git", "--git-dir", str(home / "gitops.git"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _promotion_values(home: Path, manifest_path: str) -> dict[str, str]:
    """branch -> values file of the model on every promote/* branch of the GitOps remote."""
    branches = _git(home, "for-each-ref", "--format=%(refname:short)", "refs/heads/promote/").split()
    return {b: _git(home, "show", f"{b}:{manifest_path}") for b in branches}


def test_loop_promotes_the_image_by_digest_and_a_failed_push_changes_nothing(img_settings, docker_client, tmp_path):
    """`ctpipe run` end to end (a fresh process, as users run it): the promotion's values file pins the pushed
    image by digest. Then a run whose push fails exits non-zero naming the push, and the GitOps remote is left
    exactly as it was (no new branch, no manifest change)."""
    from ct_pipeline.domain.manifest import read_deployed

    home = tmp_path / "home"
    end = datetime(2026, 11, 1, tzinfo=UTC)
    _write_model(home, end)
    environ = _cli_env(img_settings, home)
    init = _ctpipe(environ, "init")
    assert init.returncode == 0, init.stderr
    spec = make_spec(name="image-loop")
    main_before = _git(home, "rev-parse", "main")

    args = ["run", "image-loop", "--end", end.isoformat(), "--force", "--reason", "test_image", "--json"]
    run = _ctpipe(environ, *args)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout)
    bento = BentoRef.model_validate(outcome["bento"])
    assert outcome["status"] == "promoted"
    assert bento.image_repository == f"{img_settings.image.registry}/{PREFIX}/image-loop"
    values = _promotion_values(home, spec.manifest_path)
    assert list(values) == [outcome["promotion"]["branch"]]
    deployed = read_deployed(values[outcome["promotion"]["branch"]], spec)
    assert (deployed.version, deployed.image_tag) == (bento.version, f"image-loop-v{bento.version}")
    registry = Registry(img_settings.image.registry)
    try:  # the values file pins exactly what the registry serves under the human tag
        assert deployed.image_digest == bento.image_digest == registry.digest(bento.image_repository, bento.image_tag)
    finally:
        registry.close()

    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refusing = _cli_env(img_settings, home, CTPIPE_IMAGE_REGISTRY=f"127.0.0.1:{server.server_address[1]}")
        failed = _ctpipe(refusing, *args)
    finally:
        server.shutdown()
    assert failed.returncode != 0 and "push of" in failed.stderr, failed.stderr[-3000:]
    assert _promotion_values(home, spec.manifest_path) == values  # no new promotion branch, no manifest change
    assert _git(home, "rev-parse", "main") == main_before
