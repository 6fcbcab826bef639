"""build_bento: real builds from a real MLflow sqlite registry (names/labels: tests/unit/test_package.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ct_pipeline.adapters.bento import build_bento
from ct_pipeline.errors import PackageError
from tests.support.factories import FEATURES, make_decision, make_spec, register_model, shared_bento_home


@pytest.fixture
def pkg_settings(settings, monkeypatch, tmp_path_factory):
    """conftest's per-test settings, but with the session's one bento store (bentoml binds it once)."""
    shared = shared_bento_home(tmp_path_factory)
    monkeypatch.setenv("BENTOML_HOME", str(shared))
    return settings.replace(paths={"bentoml_home": shared})


def _stored_bentos(bento_home: Path, name: str) -> dict[str, dict]:
    """tag -> bento.yaml of the bentos on disk (read from the store, not through this process's bentoml,
    which may be bound to another store when the whole suite runs)."""
    from ruamel.yaml import YAML

    base = Path(bento_home) / "bentos" / name
    return {
        f"{name}:{path.parent.name}": YAML(typ="safe").load(path.read_text())
        for path in (base.glob("*/bento.yaml") if base.is_dir() else [])
    }


@pytest.mark.integration
def test_build_bento_for_real(pkg_settings):
    spec = make_spec()
    version, run_id, _ = register_model(spec.name)
    decision = make_decision(spec.name, version, run_id)

    ref = build_bento(spec, decision, pkg_settings)
    assert (ref.model, ref.version, ref.run_id) == ("fraud-detector", version, run_id)
    assert ref.data_hash == "sha256:" + "ab" * 32
    assert ref.bento_tag.startswith("fraud-detector:")
    assert ref.bento_model_tag == f"fraud-detector:v{version}-{run_id[:12]}"
    assert ref.labels["data_hash"] == ("sha256-" + "ab" * 32)[:63]
    assert ref.labels["run_id"] == run_id and ref.labels["version"] == version
    assert all(len(v) <= 63 for v in ref.labels.values())

    stored = _stored_bentos(pkg_settings.paths.bento_home, "fraud-detector")
    info = stored[ref.bento_tag]
    assert info["labels"] == ref.labels and info["service"] == "service:CTModelService"
    assert [m["tag"] for m in info["services"][0]["models"]] == [ref.bento_model_tag]
    bento_dir = Path(pkg_settings.paths.bento_home) / "bentos" / "fraud-detector" / ref.bento_tag.partition(":")[2]
    src = bento_dir / "src"
    assert {p.name for p in src.iterdir()} <= {"ct_model.json", "service.py", "ct_contract.py", "bentofile.yaml"}
    serving = Path(__file__).parents[2] / "serving"
    assert (src / "service.py").read_bytes() == (serving / "model_service" / "service.py").read_bytes()
    # the request contract service.py imports, the same file the gateway imports
    assert (src / "ct_contract.py").read_bytes() == (serving / "ct_contract.py").read_bytes()
    config = json.loads((src / "ct_model.json").read_text())
    assert config["features"] == FEATURES
    assert config["feature_dtypes"] == {"amount": "double", "n_tx": "long", "age-days": "double"}
    assert config["data_hash"] == "sha256:" + "ab" * 32 and config["model_uri"] == f"models:/fraud-detector/{version}"
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "mlflow==" in requirements and "scikit-learn==" in requirements
    model_dir = (
        Path(pkg_settings.paths.bento_home) / "models" / "fraud-detector" / ref.bento_model_tag.partition(":")[2]
    )
    assert (model_dir / "mlflow_model" / "MLmodel").is_file()

    # idempotent: the same model + version returns the existing bento
    again = build_bento(spec, decision, pkg_settings)
    assert again.bento_tag == ref.bento_tag
    stored = _stored_bentos(pkg_settings.paths.bento_home, "fraud-detector")
    assert [tag for tag, b in stored.items() if b["labels"]["run_id"] == run_id] == [ref.bento_tag]


@pytest.mark.integration
def test_unknown_version_names_it(pkg_settings):
    spec = make_spec()
    register_model(spec.name)
    with pytest.raises(PackageError, match=r"registered model 'fraud-detector' version '99' not found"):
        build_bento(spec, make_decision(spec.name, "99", "0" * 32), pkg_settings)


@pytest.mark.integration
def test_decision_run_mismatch(pkg_settings):
    spec = make_spec()
    version, _, _ = register_model(spec.name)
    with pytest.raises(PackageError, match="gate decision names run ffff"):
        build_bento(spec, make_decision(spec.name, version, "f" * 32), pkg_settings)
    with pytest.raises(PackageError, match="gate decision is for model 'other'"):
        build_bento(spec, make_decision("other", version, "f" * 32), pkg_settings)


@pytest.mark.integration
def test_other_store_builds_in_a_subprocess(settings, tmp_path_factory, monkeypatch):
    """bentoml is already bound to the shared store in this process: a build for another store still lands
    in that store (via a subprocess), not in the bound one."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    def _bound_bento_home():
        return Path(BentoMLContainer.bentoml_home.get()).resolve()

    shared = shared_bento_home(tmp_path_factory)
    monkeypatch.setenv("BENTOML_HOME", str(shared))
    import bentoml

    bentoml.bentos.list()  # make sure this process is bound to a store (the shared one, unless bound before)
    assert _bound_bento_home() is not None
    other = settings.paths.home_dir / "other-bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(other))
    s = settings.replace(paths={"bentoml_home": other})

    spec = make_spec()
    version, run_id, _ = register_model(spec.name)
    ref = build_bento(spec, make_decision(spec.name, version, run_id), s)
    name, _, ver = ref.bento_tag.partition(":")
    assert (other / "bentos" / name / ver / "bento.yaml").is_file()
    assert not (_bound_bento_home() / "bentos" / name / ver).exists()
