from pathlib import Path

import pytest

from ct_pipeline.domain.spec import SpecError, load_spec, parse_spec, parse_window

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "name": "m",
    "data": {
        "source": {"kind": "parquet", "path": "x"},
        "time_column": "t",
        "target": "y",
        "features": ["a", "b"],
    },
    "candidates": [{"name": "lgbm", "kind": "lightgbm"}],
    "metric": {"name": "roc_auc"},
}


def with_(path: str, value):
    import copy

    data = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[leaf] = value
    return data


def test_shipped_specs_are_valid():
    spec = load_spec(REPO / "models" / "fraud-detector.yaml")
    assert spec.name == "fraud-detector"
    assert spec.direction == "maximize"
    assert spec.manifest_path == "apps/staging/fraud-detector/values.yaml"
    assert spec.data.window_delta.days == 30


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("data.window", "thirty days", "data.window"),
        ("data.source.kind", "excel", "data.source"),
        ("candidates.0.kind", "xgboost", "candidates.0"),
        ("metric.name", "rmse", "metric.name"),
        ("name", "Bad Name!", "name"),
        ("data.holdout_fraction", 0.95, "data.holdout_fraction"),
        ("data.features", [], "data.features"),
        ("data.tagret", "y", "data.tagret"),
    ],
)
def test_bad_field_is_named(path, value, field):
    with pytest.raises(SpecError) as exc:
        parse_spec(with_(path, value), "models/m.yaml")
    message = str(exc.value)
    assert "models/m.yaml" in message
    assert field in message or field.split(".")[0] in message


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(SpecError, match=r"data\.tagret: Extra inputs are not permitted"):
        parse_spec(with_("data.tagret", "y"))


def test_target_in_features_rejected():
    with pytest.raises(SpecError, match="target 'y' is also listed in features"):
        parse_spec(with_("data.features", ["a", "y"]))


def test_missing_required_field_named():
    data = with_("name", "m")
    del data["data"]["target"]
    with pytest.raises(SpecError, match=r"data\.target: Field required"):
        parse_spec(data)


def test_file_name_must_match(tmp_path):
    import yaml  # noqa: F401  (pyyaml ships with mlflow/airflow)

    (tmp_path / "other.yaml").write_text(
        "name: m\ndata: {source: {kind: csv, path: x.csv}, time_column: t, target: y, features: [a]}\n"
        "candidates: [{name: a, kind: lightgbm}]\nmetric: {name: roc_auc}\n"
    )
    with pytest.raises(SpecError, match="file name must match"):
        load_spec(tmp_path / "other.yaml")


def test_invalid_yaml_named(tmp_path):
    (tmp_path / "m.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "m.yaml")


def test_parse_window():
    assert parse_window("12h").total_seconds() == 12 * 3600
    assert parse_window("2w").days == 14
    with pytest.raises(ValueError):
        parse_window("0d")
