from __future__ import annotations

import difflib
import re

import pytest
from ruamel.yaml import YAML

from ct_pipeline.domain.manifest import (
    ManifestError,
    add_app_to_environment,
    app_files,
    bump,
    changed_values,
    monitoring_values_path,
    read_deployed,
    render_app_kustomization,
    render_initial_values,
    render_monitoring_values,
)
from ct_pipeline.domain.records import BentoRef
from tests.support.factories import make_spec

MARKER = '# {"$imagepolicy": "flux-system:fraud:tag"}'


def make_bento(version: str = "3", image: bool = True, model: str = "fraud-detector") -> BentoRef:
    return BentoRef(
        model=model,
        version=version,
        run_id=f"run{version}" + "0" * 28,
        bento_tag=f"fraud_detector_service:v{version}abc",
        bento_model_tag=f"fraud-detector:m{version}",
        data_hash="sha256:" + "d" * 64,
        image_repository="127.0.0.1:5000/fraud-detector" if image else None,
        image_tag=f"v{version}" if image else None,
        image_digest=("sha256:" + "e" * 64) if image else None,
    )


def changed_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    removed, added = [], []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:])
        elif line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:])
    return removed, added


def safe_load(text: str):
    return YAML(typ="safe").load(text)


def test_initial_values_shape_and_nothing_deployed():
    spec = make_spec()
    text = render_initial_values(spec)
    assert text.startswith("# ct-serving values: fraud-detector in staging.\n")
    data = safe_load(text)
    assert data["model"] == {"name": "fraud-detector", "version": "", "runId": "", "bentoTag": "", "dataHash": ""}
    assert data["image"] == {"repository": "", "tag": "", "digest": ""}
    assert data["modelServer"]["replicas"] == 2 and data["gateway"]["replicas"] == 2
    assert read_deployed(text, spec) is None


def test_initial_values_differ_between_environments_only_in_values():
    staging, production = (render_initial_values(make_spec(environment=env)) for env in ("staging", "production"))

    def skeleton(text: str, env: str) -> list[str]:  # keys, comments and markers; values blanked
        return [re.sub(r":[^#]*", ": ", line) for line in text.replace(env, "<env>").splitlines()]

    assert skeleton(staging, "staging") == skeleton(production, "production")
    assert safe_load(production)["modelServer"]["replicas"] == 3
    assert staging.count('"$imagepolicy"') == production.count('"$imagepolicy"') == 2
    assert "infrastructure/production" in production and "flux/image-updates-production" in production
    # an environment without settings of its own starts with staging's
    dev = render_initial_values(make_spec(environment="dev"))
    assert dev.startswith("# ct-serving values: fraud-detector in dev.\n")
    assert safe_load(dev)["modelServer"] == safe_load(staging)["modelServer"]


@pytest.mark.parametrize("name", ["yes", "123", "1e3", "null", "on"])
def test_initial_values_quote_names_yaml_would_retype(name):
    data = safe_load(render_initial_values(make_spec(name)))
    assert data["model"]["name"] == name


def test_bump_changes_only_model_and_image_lines_and_keeps_marker():
    spec = make_spec()
    old = render_initial_values(spec).replace('  tag: ""\n', f'  tag: "" {MARKER}\n')
    new = bump(old, make_bento("3"))

    removed, added = changed_lines(old, new)
    keys = ["version", "runId", "bentoTag", "dataHash", "repository", "tag", "digest"]
    assert [line.split(":")[0].strip() for line in removed] == keys
    assert [line.split(":")[0].strip() for line in added] == keys
    # every other line is byte for byte the same
    old_rest = [line for line in old.splitlines() if line not in removed]
    new_rest = [line for line in new.splitlines() if line not in added]
    assert old_rest == new_rest
    assert f'  tag: "v3" {MARKER}\n' in new
    # the trailing comment keeps its column
    old_version = next(line for line in old.splitlines() if "version:" in line)
    new_version = next(line for line in new.splitlines() if "version:" in line)
    assert new_version.index("#") == old_version.index("#")
    assert new_version.endswith(old_version[old_version.index("#") :])

    deployed = read_deployed(new, spec, commit="c" * 40)
    assert deployed is not None
    assert deployed.version == "3" and deployed.run_id == "run3" + "0" * 28
    assert deployed.bento_tag == "fraud_detector_service:v3abc"
    assert deployed.image_tag == "v3" and deployed.image_digest == "sha256:" + "e" * 64
    assert deployed.commit == "c" * 40 and deployed.environment == "staging"


HAND_EDITED = """\
# hand-edited values; note the 4-space indentation
model:
    name: fraud-detector   # do not rename
    version: '2'           # single quotes stay single
    runId: abc123
    bentoTag: "svc:old"
    dataHash:              # empty on purpose
image:
    repository: 127.0.0.1:5000/fraud-detector
    tag: v2 # {"$imagepolicy": "flux-system:fraud:tag"}
    digest: ""
modelServer:
    replicas: 3            # reviewed by hand
    resources: {limits: {cpu: "2"}}
extraEnv:
  - name: A
    value: "1"
"""


def test_bump_keeps_styles_of_a_hand_edited_file():
    new = bump(HAND_EDITED, make_bento("3"))
    # unchanged values (image.repository) are not even re-quoted
    assert new == (
        HAND_EDITED.replace("version: '2'           #", "version: '3'           #")
        .replace("runId: abc123", "runId: run3" + "0" * 28)
        .replace('bentoTag: "svc:old"', 'bentoTag: "fraud_detector_service:v3abc"')
        .replace("dataHash:              #", 'dataHash: "sha256:' + "d" * 64 + '" #')
        .replace("tag: v2 #", "tag: v3 #")
        .replace('digest: ""', 'digest: "sha256:' + "e" * 64 + '"')
    )


def test_bump_without_image_leaves_image_untouched():
    old = HAND_EDITED
    new = bump(old, make_bento("4", image=False))
    removed, _ = changed_lines(old, new)
    assert all(line.strip().split(":")[0] in {"version", "runId", "bentoTag", "dataHash"} for line in removed)
    assert safe_load(new)["image"] == safe_load(old)["image"]


def test_bump_adds_missing_keys_and_keeps_comments():
    old = render_initial_values(make_spec()).replace('  dataHash: ""\n', "").replace('  digest: ""\n', "")
    old = old.replace('  tag: ""\n', f'  tag: "" {MARKER}\n')
    new = bump(old, make_bento("5"))
    data = safe_load(new)
    assert data["model"]["dataHash"] == "sha256:" + "d" * 64
    assert data["image"]["digest"] == "sha256:" + "e" * 64
    assert MARKER in new and new.startswith("# ct-serving values: fraud-detector in staging.\n")
    assert data["modelServer"] == safe_load(render_initial_values(make_spec()))["modelServer"]


def test_bump_then_bump_again_is_stable():
    once = bump(render_initial_values(make_spec()), make_bento("6"))
    assert bump(once, make_bento("6")) == once
    assert [c[0] for c in changed_values(once, bump(once, make_bento("7")))] == [
        "model.version",
        "model.runId",
        "model.bentoTag",
        "image.tag",
    ]


def test_read_deployed_accepts_an_unquoted_numeric_version():
    text = render_initial_values(make_spec()).replace('version: ""', "version: 12")
    assert read_deployed(text, "fraud-detector", "staging").version == "12"
    new = bump(text, make_bento("13"))
    assert safe_load(new)["model"]["version"] == "13"  # a string, not the int 13


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image:\n  tag: x\n", "no 'model' block"),
        ("model: just-a-string\n", "no 'model' block"),
        ("- a\n- b\n", "must be a mapping"),
        ("model: [unclosed\n", "not valid YAML"),
        ("model:\n  name: churn\n  version: ''\n", "is for model 'churn', not 'fraud-detector'"),
    ],
)
def test_bump_and_read_reject_bad_files(text, message):
    with pytest.raises(ManifestError, match=message):
        bump(text, make_bento("3"))
    with pytest.raises(ManifestError, match=message):
        read_deployed(text, make_spec())


# ------------------------------------------------------------------------------------------- monitoring values


def test_monitoring_values_are_the_generated_rule_groups_and_dashboard():
    from ct_pipeline.domain.alert_rules import alert_rules

    spec = make_spec()
    text = render_monitoring_values(spec)
    assert text.startswith(
        "# Generated by ct-pipeline from the monitoring section of models/fraud-detector.yaml; "
        "do not edit: change the spec.\n"
    )
    data = safe_load(text)
    groups = alert_rules(spec)["groups"]
    assert groups and all(g["rules"] for g in groups)
    assert data == {
        "monitoring": {"prometheusRule": {"enabled": True, "groups": groups}, "grafanaDashboard": {"enabled": True}}
    }
    assert render_monitoring_values(make_spec()) == text  # deterministic bytes
    assert render_monitoring_values(make_spec(environment="production")) == text  # one set of rules per model
    # and the hand-reviewed values file never sets a key the generated file sets (later valuesFrom wins)
    assert set(safe_load(render_initial_values(spec))) & set(data) == set()


def test_monitoring_values_follow_the_spec_monitors():
    spec = make_spec(monitoring={"monitors": [{"name": "latency", "kind": "slo", "latency_p99_ms": 100}]})
    rules = safe_load(render_monitoring_values(spec))["monitoring"]["prometheusRule"]["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["CtSloLatencyP99", "CtMonitorStale", "CtMonitorMissing"]
    assert "> 0.1" in rules[0]["expr"]


def test_the_values_file_turns_prediction_log_and_service_monitor_on():
    data = safe_load(render_initial_values(make_spec()))
    assert data["predictionLog"] == {"enabled": True}  # the chart's PVC by default
    assert data["serviceMonitor"] == {"enabled": True}
    assert "monitoring" not in data


def test_app_files_of_a_new_model():
    spec = make_spec("churn", "production")
    files = app_files(spec)
    assert files == {
        "apps/production/churn/values.yaml": render_initial_values(spec),
        "apps/production/churn/monitoring.yaml": render_monitoring_values(spec),
        "apps/production/churn/kustomization.yaml": render_app_kustomization(spec),
    }
    kustomization = safe_load(files["apps/production/churn/kustomization.yaml"])
    assert kustomization["namePrefix"] == "churn-"
    assert [g["files"] for g in kustomization["configMapGenerator"]] == [["values.yaml"], ["monitoring.yaml"]]
    # a values file at a path of its own: the monitoring file sits next to it, named after it; no kustomization
    custom = make_spec(gitops={"environment": "staging", "manifest": "clusters/x/fraud.yaml"})
    assert monitoring_values_path(custom) == "clusters/x/fraud-monitoring.yaml"
    assert set(app_files(custom)) == {"clusters/x/fraud.yaml", "clusters/x/fraud-monitoring.yaml"}
    ks = safe_load(render_app_kustomization(custom))
    assert [g["files"] for g in ks["configMapGenerator"]] == [
        ["values.yaml=fraud.yaml"],
        ["monitoring.yaml=fraud-monitoring.yaml"],
    ]


def test_add_app_to_environment_keeps_the_file_and_lists_each_app_once():
    text = (
        "# the models here\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n  - ../base/ct-serving\n  - fraud-detector\n"
    )
    added = add_app_to_environment(text, "churn")
    assert added == text + "  - churn\n"
    assert add_app_to_environment(added, "churn") is None
    assert add_app_to_environment(text, "fraud-detector") is None
    assert safe_load(add_app_to_environment("kind: Kustomization\n", "churn"))["resources"] == ["churn"]
    with pytest.raises(ManifestError, match="resources must be a list"):
        add_app_to_environment("resources: churn\n", "x")
    with pytest.raises(ManifestError, match="not valid YAML"):
        add_app_to_environment("resources: [\n", "x")
