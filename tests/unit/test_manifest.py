from __future__ import annotations

import difflib
import re

import pytest
from ruamel.yaml import YAML

from ct_pipeline.domain.manifest import ManifestError, bump, changed_values, read_deployed, render_initial_values
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
