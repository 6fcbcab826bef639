"""The GitOps manifest: the ``ct-serving`` Helm values file of one model in one environment.

A promotion rewrites only ``model.*`` and ``image.*``; everything else in the file (replicas, resources,
comments, Flux image-automation markers such as ``# {"$imagepolicy": "flux-system:fraud:tag"}``) is reviewed
by hand and must survive a bump byte for byte. So :func:`bump` parses the file with ruamel.yaml's round-trip
loader only to *locate* the scalars it changes, then splices the new values into the original text: every
other byte of the file is left as it was (quote style is kept; the gap before a trailing comment absorbs a
change in length so comments stay in their column where possible). Only when a key has to be added (or a
block is in flow style) does it fall back to a full ruamel.yaml round-trip dump. Either way the result is
re-parsed and checked: the changed keys hold the new values and nothing else in the document differs.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from ct_pipeline.domain.alert_rules import alert_rules, dump_yaml
from ct_pipeline.domain.records import BentoRef, DeployedModel
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.errors import ManifestError

# values key -> BentoRef field
MODEL_FIELDS = {"version": "version", "runId": "run_id", "bentoTag": "bento_tag", "dataHash": "data_hash"}
IMAGE_FIELDS = {"repository": "image_repository", "tag": "image_tag", "digest": "image_digest"}

# Plain scalars that YAML 1.1 (Helm's parser) or 1.2 would not read back as the same string.
_YAML11_SPECIAL = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", ""}
_PLAIN_SAFE_RE = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./@+-]*$")
_NUMBERISH_RE = re.compile(r"^[-+.]?[0-9]|^\.(inf|nan)$", re.IGNORECASE)


# The values file of a model that was never promoted. Every environment gets the same keys, comments and
# Flux image-automation markers; only the hand-reviewed sizes below differ (_ENVIRONMENT_SETTINGS). The
# committed seed (gitops/apps/<env>/fraud-detector/values.yaml) is exactly this text for each environment
# (tests/cluster/test_k8s_manifests.py checks it), so `ctpipe init` and the seed cannot drift apart.
_INITIAL_VALUES = """\
# ct-serving values: {name} in {environment}.
# Promotions rewrite only model.* and image.*; everything else is reviewed by hand.
model:
  name: {name_yaml}
  version: ""        # MLflow registered model version; "" = nothing deployed yet
  runId: ""
  bentoTag: ""
  dataHash: ""
image:
  repository: ""     # model server image (the containerized Bento), pinned by digest
  tag: ""
  digest: ""
modelServer:
  replicas: {model_server_replicas}
  resources:
    requests:
      cpu: "{model_server_cpu}"
      memory: {model_server_memory}
    limits:
      memory: {model_server_memory_limit}
  autoscaling:
    enabled: true
    maxReplicas: {model_server_max_replicas}
gateway:
  replicas: {gateway_replicas}
  # Updated by Flux image automation (infrastructure/{environment}), proposed on flux/image-updates-{environment}.
  image:
    repository: ghcr.io/ct-pipeline/ct-gateway
    tag: "0.1.0" # {{"$imagepolicy": "flux-system:ct-gateway:tag"}}
    digest: "" # {{"$imagepolicy": "flux-system:ct-gateway:digest"}}
  settings:
    max_rows: {gateway_max_rows}
    request_timeout: {gateway_request_timeout}
# Every answered row, for the monitor. On the chart's PVC by default (ReadWriteOnce mounts on one node: see the
# chart's predictionLog.persistence), or an object store: uri: s3://bucket/prefix + credentialsSecret: <secret>.
predictionLog:
  enabled: true
# The SLO alerts read the gateway's series: Prometheus (Operator) scrapes them through this ServiceMonitor.
serviceMonitor:
  enabled: true
# Alert rules and the Grafana dashboard: monitoring.yaml next to this file, generated from the spec.
"""

# Hand-reviewed sizes per environment (YAML text as written in the file). Staging spells out the chart's
# defaults (charts/ct-serving/values.yaml); an environment not listed starts with staging's.
_ENVIRONMENT_SETTINGS: dict[str, dict[str, str]] = {
    "staging": {
        "model_server_replicas": "2",
        "model_server_cpu": "250m",
        "model_server_memory": "512Mi",
        "model_server_memory_limit": "1Gi",
        "model_server_max_replicas": "6",
        "gateway_replicas": "2",
        "gateway_max_rows": "1000",
        "gateway_request_timeout": "30.0",
    },
    "production": {
        "model_server_replicas": "3",
        "model_server_cpu": "1",
        "model_server_memory": "1Gi",
        "model_server_memory_limit": "2Gi",
        "model_server_max_replicas": "12",
        "gateway_replicas": "3",
        "gateway_max_rows": "500",
        "gateway_request_timeout": "10.0",
    },
}


def _plain_ok(value: str) -> bool:
    return bool(_PLAIN_SAFE_RE.match(value)) and value.lower() not in _YAML11_SPECIAL and not _NUMBERISH_RE.match(value)


def _yaml_scalar(value: str, style: str | None = None) -> str:
    """Render ``value`` as a one-line YAML string scalar in ``style`` ('"', "'" or None = plain if safe)."""
    if style == "'" and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    if style is None and _plain_ok(value):
        return value
    return json.dumps(value, ensure_ascii=False)  # JSON strings are valid YAML double-quoted scalars


def render_initial_values(spec: ModelSpec) -> str:
    """The values file of ``spec`` with nothing deployed yet (``model.version: ""``), sized for its environment."""
    environment = spec.gitops.environment
    settings = _ENVIRONMENT_SETTINGS.get(environment, _ENVIRONMENT_SETTINGS["staging"])
    return _INITIAL_VALUES.format(
        name=spec.name, environment=environment, name_yaml=_yaml_scalar(spec.name), **settings
    )


def monitoring_values_path(spec: ModelSpec) -> str:
    """Path of the generated monitoring values file of ``spec``: ``monitoring.yaml`` next to its values file
    (``<stem>-monitoring.yaml`` when the values file is not called values.yaml, so two models never share it)."""
    folder, name = posixpath.split(spec.manifest_path)
    stem = posixpath.splitext(name)[0]
    return posixpath.join(folder, "monitoring.yaml" if stem == "values" else f"{stem}-monitoring.yaml")


def render_monitoring_values(spec: ModelSpec) -> str:
    """The generated second values file of ``spec`` (``apps/<env>/<model>/monitoring.yaml``): the chart's
    ``monitoring.*`` with the PrometheusRule's groups from :func:`ct_pipeline.domain.alert_rules.alert_rules` and
    the Grafana dashboard on. The same spec gives the same bytes; no key overlaps the hand-reviewed values file."""
    groups = [group for group in alert_rules(spec)["groups"] if group.get("rules")]
    values = {
        "monitoring": {"prometheusRule": {"enabled": True, "groups": groups}, "grafanaDashboard": {"enabled": True}}
    }
    header = (
        f"# Generated by ct-pipeline from the monitoring section of models/{spec.name}.yaml; "
        "do not edit: change the spec.\n"
    )
    return header + dump_yaml(values)


# The app directory's kustomization of a model (apps/<env>/<model>/kustomization.yaml): one HelmRelease
# "<model>-ct-serving" with its values from two generated ConfigMaps (the committed seed is exactly this text).
_APP_KUSTOMIZATION = """\
# {name}'s release: HelmRelease {name}-ct-serving, values from values.yaml (reviewed by hand) and
# monitoring.yaml (generated from models/{name}.yaml) here.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: {name}-
resources:
  - ../../base/ct-serving-release
configMapGenerator:
  - name: values
    namespace: ct-serving
    files:
      - {values}
  - name: monitoring
    namespace: ct-serving
    files:
      - {monitoring}
"""


def render_app_kustomization(spec: ModelSpec) -> str:
    """The kustomization of ``spec``'s app directory (the folder of its values file)."""

    def entry(key: str, path: str) -> str:  # the ConfigMap key the HelmRelease reads, from the file at path
        name = posixpath.basename(path)
        return name if name == key else f"{key}={name}"

    return _APP_KUSTOMIZATION.format(
        name=spec.name,
        values=entry("values.yaml", spec.manifest_path),
        monitoring=entry("monitoring.yaml", monitoring_values_path(spec)),
    )


def app_files(spec: ModelSpec) -> dict[str, str]:
    """The files of a new model's app directory: values file (nothing deployed), generated monitoring values and,
    for the default layout (``apps/<env>/<model>/``), the kustomization that turns them into its HelmRelease."""
    files = {
        spec.manifest_path: render_initial_values(spec),
        monitoring_values_path(spec): render_monitoring_values(spec),
    }
    if spec.gitops.manifest is None:
        files[posixpath.join(posixpath.dirname(spec.manifest_path), "kustomization.yaml")] = render_app_kustomization(
            spec
        )
    return files


def add_app_to_environment(text: str, app: str) -> str | None:
    """``apps/<env>/kustomization.yaml`` with ``app`` (a model's folder) added to its resources, or None when it
    is listed already. Comments and the rest of the file are kept (ruamel.yaml round trip)."""
    yaml = _rt_yaml()
    yaml.indent(mapping=2, sequence=4, offset=2)
    try:
        data = yaml.load(text)
    except YAMLError as exc:
        raise ManifestError(f"environment kustomization is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError("environment kustomization must be a mapping")
    resources = data.get("resources")
    if resources is None:
        resources = data["resources"] = []
    if not isinstance(resources, list):
        raise ManifestError("environment kustomization: resources must be a list")
    if any(str(r).rstrip("/") in (app, f"./{app}") for r in resources):
        return None
    resources.append(app)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _rt_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold long values such as image digests
    return yaml


def _load(text: str) -> Any:
    try:
        return _rt_yaml().load(text)
    except YAMLError as exc:
        raise ManifestError(f"values file is not valid YAML: {exc}") from None


def _plain(data: Any) -> Any:
    """Comparable plain-Python form of a round-trip document (drops comments and styles)."""
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    if hasattr(data, "value") and type(data).__name__ == "TaggedScalar":
        return str(data.value)
    if isinstance(data, str):
        return str(data)
    return data


def _model_block(data: Any, expected_model: str | None) -> dict:
    if not isinstance(data, dict):
        raise ManifestError("values file must be a mapping with a 'model' block")
    block = data.get("model")
    if not isinstance(block, dict):
        raise ManifestError("values file has no 'model' block (model.name, model.version, ...)")
    name = block.get("name")
    if expected_model is not None and str(name) != expected_model:
        raise ManifestError(f"values file is for model {name!r}, not {expected_model!r}")
    return block


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(_plain(value))
    return text or None


def read_deployed(
    text: str,
    spec_or_model: ModelSpec | str,
    environment: str | None = None,
    commit: str | None = None,
) -> DeployedModel | None:
    """What the values file says is deployed, or None when ``model.version`` is empty.

    ``environment`` defaults to the spec's environment; ``commit`` is recorded on the result (the base
    commit the file was read at). Raises :class:`ManifestError` when the file names another model.
    """
    if isinstance(spec_or_model, ModelSpec):
        model = spec_or_model.name
        environment = environment or spec_or_model.gitops.environment
    else:
        model = spec_or_model
    if not environment:
        raise ValueError("read_deployed needs an environment when given a model name")
    data = _load(text)
    block = _model_block(data, model)
    version = _str_or_none(block.get("version"))
    if version is None:
        return None
    image = data.get("image") if isinstance(data.get("image"), dict) else {}
    return DeployedModel(
        model=model,
        environment=environment,
        version=version,
        run_id=_str_or_none(block.get("runId")),
        bento_tag=_str_or_none(block.get("bentoTag")),
        data_hash=_str_or_none(block.get("dataHash")),
        image_repository=_str_or_none(image.get("repository")),
        image_tag=_str_or_none(image.get("tag")),
        image_digest=_str_or_none(image.get("digest")),
        commit=commit,
    )


def planned_changes(bento: BentoRef) -> dict[tuple[str, str], str]:
    """The (block, key) -> new value pairs a bump to ``bento`` writes.

    ``image.*`` is only touched when the BentoRef carries image fields; then all three are written (a
    missing digest becomes "" so a stale digest never pins the previous image).
    """
    changes: dict[tuple[str, str], str] = {
        ("model", key): getattr(bento, attr) or "" for key, attr in MODEL_FIELDS.items()
    }
    if any(getattr(bento, attr) for attr in IMAGE_FIELDS.values()):
        changes.update({("image", key): getattr(bento, attr) or "" for key, attr in IMAGE_FIELDS.items()})
    return changes


class _NeedsRoundTrip(Exception):
    """The value cannot be spliced in place; use the ruamel.yaml round-trip dump instead."""


def _scalar_end(line: str, col: int) -> tuple[int, str | None]:
    """End column (exclusive) and quote style of the one-line scalar starting at ``line[col]``."""
    first = line[col : col + 1]
    if first == '"':
        i = col + 1
        while i < len(line):
            if line[i] == "\\":
                i += 2
                continue
            if line[i] == '"':
                return i + 1, '"'
            i += 1
        raise _NeedsRoundTrip
    if first == "'":
        i = col + 1
        while i < len(line):
            if line[i] == "'":
                if line[i + 1 : i + 2] == "'":
                    i += 2
                    continue
                return i + 1, "'"
            i += 1
        raise _NeedsRoundTrip
    if first in ("", "#") or first in "&!*|>{[":
        raise _NeedsRoundTrip
    comment = re.search(r"\s#", line[col:])
    end = col + comment.start() if comment else len(line)
    return len(line[:end].rstrip()), None


def _splice(text: str, data: Any, changes: dict[tuple[str, str], str]) -> str:
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []  # (line, start, end, replacement)
    for (block_name, key), value in changes.items():
        block = data.get(block_name)  # a CommentedMap knows its lines and its style
        if not isinstance(block, CommentedMap) or key not in block or block.fa.flow_style():
            raise _NeedsRoundTrip
        key_line, _ = block.lc.key(key)
        if block[key] is None:  # "key:" with no value: insert after the colon
            body = lines[key_line].rstrip("\r\n")
            match = re.match(rf"^(\s*{re.escape(key)}\s*:)(\s*)(#.*)?$", body)
            if not match:
                raise _NeedsRoundTrip
            start = match.end(1)
            edits.append((key_line, start, start, " " + _yaml_scalar(value, '"')))
            continue
        if isinstance(block[key], str) and str(block[key]) == value:
            continue  # unchanged: leave the line exactly as it is
        line_no, col = block.lc.value(key)
        if line_no != key_line or isinstance(block[key], (dict, list)):
            raise _NeedsRoundTrip
        body = lines[line_no].rstrip("\r\n")
        end, style = _scalar_end(body, col)
        if style is None and str(block[key]) != body[col:end]:
            raise _NeedsRoundTrip  # multi-line plain scalar or non-string (int, bool) we won't guess about
        if style is None and not isinstance(block[key], str):
            style = '"'
        edits.append((line_no, col, end, _yaml_scalar(value, style)))
    for line_no, start, end, new in sorted(edits, reverse=True):
        line = lines[line_no]
        old_len = end - start
        gap = re.match(r"[ \t]*", line[end:]).group(0)  # type: ignore[union-attr]  # always matches
        after = line[end + len(gap) :]
        if after.startswith("#") and gap and set(gap) == {" "}:
            gap = " " * max(1, len(gap) - (len(new) - old_len))  # keep the comment in its column
        lines[line_no] = line[:start] + new + gap + after
    return "".join(lines)


def _round_trip(text: str, changes: dict[tuple[str, str], str]) -> str:
    from ruamel.yaml.util import load_yaml_guess_indent

    data, seq_indent, seq_offset = load_yaml_guess_indent(text)
    mapping_indent = data["model"].lc.col or 2  # column of the model block's keys
    yaml = _rt_yaml()
    yaml.indent(mapping=mapping_indent, sequence=seq_indent or mapping_indent, offset=seq_offset or 0)
    data = yaml.load(text)
    for (block_name, key), value in changes.items():
        block = data.get(block_name)
        if block is None:
            from ruamel.yaml.comments import CommentedMap

            block = data[block_name] = CommentedMap()
        single = isinstance(block.get(key), SingleQuotedScalarString)
        block[key] = (SingleQuotedScalarString if single else DoubleQuotedScalarString)(value)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def bump(text: str, bento: BentoRef) -> str:
    """Point the values file at ``bento``: sets ``model.*`` (and ``image.*`` when ``bento`` has an image).

    Everything else is kept byte for byte. Raises :class:`ManifestError` when the file has no ``model``
    block, names another model, or a non-model/image part would change.
    """
    data = _load(text)
    _model_block(data, bento.model)
    if "image" in data and not isinstance(data["image"], dict):
        raise ManifestError("values file has an 'image' key that is not a mapping")
    changes = planned_changes(bento)
    try:
        new_text = _splice(text, data, changes)
    except _NeedsRoundTrip:
        new_text = _round_trip(text, changes)
    _verify(text, new_text, changes)
    return new_text


def _verify(old_text: str, new_text: str, changes: dict[tuple[str, str], str]) -> None:
    expected = _plain(_load(old_text))
    for (block_name, key), value in changes.items():
        expected.setdefault(block_name, {})[key] = value
    actual = _plain(_load(new_text))
    if actual != expected:
        raise ManifestError("internal error: bumping the values file would change more than model.*/image.*")


def changed_values(old_text: str | None, new_text: str) -> list[tuple[str, str | None, str]]:
    """``[(dotted key, old, new)]`` for the model/image keys that differ (old is None for a new file)."""
    old: dict = (_plain(_load(old_text)) if old_text else None) or {}
    new: dict = _plain(_load(new_text)) or {}
    out = []
    for block_name in ("model", "image"):
        found_old, found_new = old.get(block_name), new.get(block_name)
        old_block = found_old if isinstance(found_old, dict) else {}
        new_block = found_new if isinstance(found_new, dict) else {}
        for key, value in new_block.items():
            before = old_block.get(key) if old_text else None
            if before != value:
                out.append((f"{block_name}.{key}", None if before is None else str(before), str(value)))
    return out
