"""The BentoML model service's scoring path, in process, on real bentos built from a real MLflow store.

The service calls the sklearn estimator's own method (skipping MLflow's per-call schema enforcement) only
after checking on the model's logged input example that it answers exactly what pyfunc ``predict`` does;
these tests hold it to that for numeric, mixed and string features, and check the fallbacks.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ct_pipeline.adapters.bento import build_bento
from tests.support.factories import FEATURES, SPEC, frame, make_decision, make_spec, register_model, shared_bento_home

pytestmark = pytest.mark.integration

SERVICE = Path(__file__).parents[2] / "serving" / "model_service" / "service.py"
_module_ids = itertools.count()


@pytest.fixture
def pkg_settings(settings, monkeypatch, tmp_path_factory):
    shared = shared_bento_home(tmp_path_factory)
    monkeypatch.setenv("BENTOML_HOME", str(shared))
    return settings.replace(paths={"bentoml_home": shared})


def load_service(bento_home: Path, bento_tag: str, monkeypatch, **env: str):
    """The bento's own service.py + ct_model.json imported as a fresh module; returns (module, instance)."""
    name, _, version = bento_tag.partition(":")
    src = Path(bento_home) / "bentos" / name / version / "src"
    monkeypatch.setenv("CT_MODEL_CONFIG", str(src / "ct_model.json"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"ct_service_under_test_{next(_module_ids)}", src / "service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.CTModelService.inner()


def score(module, service, records: list[dict]) -> list[float]:
    return service.predict([module.Row.model_validate(r) for r in records])


def build(spec, version: str, run_id: str, settings):
    return build_bento(spec, make_decision(spec.name, version, run_id), settings)


def register_pipeline_with_string_feature(name: str):
    """One-hot encoded string column + numbers in a sklearn Pipeline, logged like train.py logs models."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from tests.support.factories import _use_experiment

    x, y = frame(seed=3)
    x["channel"] = np.where(x["amount"] > 0, "web", "store").astype(object)
    x.loc[::7, "channel"] = "phone"
    model = make_pipeline(
        ColumnTransformer([("channel", OneHotEncoder(handle_unknown="ignore"), ["channel"])], remainder="passthrough"),
        LogisticRegression(max_iter=500),
    ).fit(x, y)
    _use_experiment(name)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(x, model.predict_proba(x)[:, 1]),
            input_example=x.head(5),
            pip_requirements=["scikit-learn", "pandas"],
            serialization_format="cloudpickle",
        )
    return str(info.registered_model_version), run.info.run_id, model, x


def test_numeric_model_scores_through_the_estimator_exactly_as_pyfunc(pkg_settings, monkeypatch):
    spec = make_spec(name="svc-numeric")
    version, run_id, model = register_model(spec.name, seed=11)
    ref = build(spec, version, run_id, pkg_settings)
    x, _ = frame(64, seed=12)
    records = x.to_dict(orient="records")

    module, fast = load_service(pkg_settings.paths.bento_home, ref.bento_tag, monkeypatch)
    assert fast.predict_path == "estimator.predict_proba"
    assert fast.metadata()["predict_path"] == "estimator.predict_proba"
    frame_in = fast._frame([module.Row.model_validate(r) for r in records])
    assert list(frame_in.columns) == FEATURES
    assert frame_in.dtypes.astype(str).tolist() == ["float64", "int64", "float64"]  # typed from the signature
    fast_scores = score(module, fast, records)
    assert fast_scores == pytest.approx(list(model.predict_proba(x[FEATURES])[:, 1]), abs=1e-12)
    assert score(module, fast, records[:1]) == fast_scores[:1]

    module_p, through_pyfunc = load_service(
        pkg_settings.paths.bento_home, ref.bento_tag, monkeypatch, CT_PREDICT_PATH="pyfunc"
    )
    assert through_pyfunc.predict_path == "pyfunc"
    assert score(module_p, through_pyfunc, records) == fast_scores  # bit for bit


def test_string_feature_pipeline_scores_as_pyfunc(pkg_settings, monkeypatch):
    name = "svc-strings"
    version, run_id, model, x = register_pipeline_with_string_feature(name)
    features = [*FEATURES, "channel"]
    spec = make_spec(name=name, data={**SPEC["data"], "features": features})
    ref = build(spec, version, run_id, pkg_settings)
    src = Path(pkg_settings.paths.bento_home) / "bentos" / name / ref.bento_tag.partition(":")[2] / "src"
    config = json.loads((src / "ct_model.json").read_text())
    assert config["feature_dtypes"]["channel"] == "string"

    module, service = load_service(pkg_settings.paths.bento_home, ref.bento_tag, monkeypatch)
    assert service.predict_path == "estimator.predict_proba"
    records = x.head(40).to_dict(orient="records")
    records[0]["channel"] = "a channel never seen in training"  # the encoder ignores it, both paths alike
    expected = model.predict_proba(pd.DataFrame(records)[features])[:, 1]
    assert score(module, service, records) == pytest.approx(list(expected), abs=1e-12)
    module_p, through_pyfunc = load_service(
        pkg_settings.paths.bento_home, ref.bento_tag, monkeypatch, CT_PREDICT_PATH="pyfunc"
    )
    assert score(module_p, through_pyfunc, records) == score(module, service, records)


def test_without_an_input_example_every_call_goes_through_pyfunc(pkg_settings, monkeypatch):
    name = "svc-no-example"
    version, run_id, model = register_model(name, seed=21, input_example=False)
    ref = build(make_spec(name=name), version, run_id, pkg_settings)
    module, service = load_service(pkg_settings.paths.bento_home, ref.bento_tag, monkeypatch)
    assert service.predict_path == "pyfunc"  # nothing to verify the direct call on: MLflow's path
    x, _ = frame(8, seed=22)
    records = x.to_dict(orient="records")
    assert score(module, service, records) == pytest.approx(list(model.predict_proba(x)[:, 1]), abs=1e-12)
