"""Training and the gate against a real MLflow store, on a real time-stamped dataset shipped on PyPI
(vega_datasets' Seattle weather, 2012-2015), and the SQL source against the machine's real PostgreSQL."""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from ct_pipeline.adapters.mlflow import MlflowTracker as MlflowRegistry
from ct_pipeline.domain.records import RunRequest
from ct_pipeline.domain.spec import parse_spec
from ct_pipeline.domain.tags import CHALLENGER, CHAMPION
from ct_pipeline.steps.gate import gate
from ct_pipeline.steps.pull import pull
from ct_pipeline.steps.train import train
from ct_pipeline.wiring import build_context


# The steps as run_pipeline runs them: one context (real MLflow store, real data source) per call.
def step_pull(spec, settings, end):
    return pull(build_context(spec, settings, RunRequest(end=end)))


def step_train(spec, settings, snapshot):
    return train(build_context(spec, settings, RunRequest(end=snapshot.end)), snapshot)


def step_gate(spec, settings, trained):
    return gate(build_context(spec, settings, RunRequest(end=trained.snapshot.end)), trained)


pytestmark = pytest.mark.integration

FEATURES = ["temp_min", "precipitation", "wind", "doy_sin", "doy_cos"]


@pytest.fixture
def weather_csv(tmp_path):
    from vega_datasets import data

    df = data.seattle_weather()
    day = df["date"].dt.dayofyear
    df["doy_sin"], df["doy_cos"] = np.sin(2 * np.pi * day / 365.25), np.cos(2 * np.pi * day / 365.25)
    path = tmp_path / "seattle-weather.csv"
    df.to_csv(path, index=False)
    return path


def weather_spec(path):
    return parse_spec(
        {
            "name": "seattle-temp-max",
            "task": "regression",
            "data": {
                "source": {"kind": "csv", "path": str(path)},
                "time_column": "date",
                "window": "730d",
                "target": "temp_max",
                "features": FEATURES,
                "holdout_fraction": 0.25,
            },
            "candidates": [
                {"name": "lgbm", "kind": "lightgbm", "params": {"n_estimators": 60, "num_leaves": 7}},
                {
                    "name": "ridge",
                    "kind": "sklearn",
                    "estimator": "sklearn.linear_model.Ridge",
                    "params": {"alpha": 1.0},
                },
            ],
            "metric": {"name": "rmse"},
            "gate": {"bootstrap_resamples": 300},
        }
    )


def test_train_and_gate_on_real_weather_data(settings, weather_csv):
    import mlflow
    from mlflow import MlflowClient

    spec = weather_spec(weather_csv)
    end = datetime(2015, 7, 1, tzinfo=UTC)
    snapshot = step_pull(spec, settings, end)
    assert snapshot.rows == 730  # one row per day
    trained = step_train(spec, settings, snapshot)
    assert [c.name for c in trained.candidates] == ["lgbm", "ridge"]
    for candidate in trained.candidates:
        assert 0 < candidate.metrics["rmse"] < 6  # degrees C; a constant guess is ~7
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    run = client.get_run(trained.candidates[0].run_id)
    assert run.data.tags["ct.data_hash"] == snapshot.content_hash
    assert "holdout_rmse" in run.data.metrics
    contexts = sorted(i.tags[0].value for i in run.inputs.dataset_inputs)
    assert contexts == ["evaluation", "training"]
    model_info = mlflow.models.get_model_info(trained.candidates[0].model_uri)
    assert [c["name"] for c in model_info.signature.inputs.to_dict()] == FEATURES

    first = step_gate(spec, settings, trained)
    assert first.promote and first.reason == "no champion yet"
    registry = MlflowRegistry(settings.tracking_uri)
    winner = min(trained.candidates, key=lambda c: c.metrics["rmse"])
    assert registry.get_alias(spec.name, CHALLENGER).version == winner.version == first.challenger.version
    tags = registry.get_version_tags(spec.name, first.challenger.version)
    assert tags["ct.gate.decision"] == "promote" and tags["ct.gate.reason"] == "no champion yet"
    artifact = mlflow.artifacts.load_dict(f"runs:/{first.challenger.run_id}/gate/decision.json")
    assert artifact["reason"] == "no champion yet" and artifact["snapshot"]["content_hash"] == snapshot.content_hash

    # The champion is now the winner; retraining on the same window cannot prove an improvement.
    registry.set_alias(spec.name, CHAMPION, winner.version)
    again = step_gate(spec, settings, step_train(spec, settings, snapshot))
    assert not again.promote
    assert again.champion.version == winner.version
    assert again.delta == pytest.approx(0.0, abs=1e-9)
    assert "fails" in again.reason


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def test_sql_source_on_postgres(settings):
    """Needs the PostgreSQL that this machine kind runs on 127.0.0.1:5432 (trust auth, database `test`)."""
    from datetime import date

    import sqlalchemy as sa

    from ct_pipeline.demo_data import FEATURES as TX_FEATURES
    from ct_pipeline.demo_data import generate_transactions

    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        pytest.fail(f"this test needs PostgreSQL at 127.0.0.1:5432 (database test): {exc}")
    table = f"tx_{datetime.now().strftime('%H%M%S%f')}"
    frame = generate_transactions(date(2026, 2, 1), date(2026, 2, 10), rows_per_day=100, seed=3)
    frame.to_sql(table, engine, index=False)
    try:
        spec = parse_spec(
            {
                "name": "fraud-pg",
                "data": {
                    "source": {
                        "kind": "sql",
                        "url": POSTGRES_URL,
                        "query": f"SELECT * FROM {table} WHERE event_time >= :start AND event_time < :end",
                    },
                    "time_column": "event_time",
                    "window": "3d",
                    "target": "is_fraud",
                    "features": TX_FEATURES,
                },
                "candidates": [{"name": "lgbm", "kind": "lightgbm"}],
                "metric": {"name": "roc_auc"},
            }
        )
        snapshot = step_pull(spec, settings, datetime(2026, 2, 8, tzinfo=UTC))
        in_window = frame[(frame.event_time >= "2026-02-05") & (frame.event_time < "2026-02-08")]
        assert snapshot.rows == len(in_window)
        assert snapshot.source.startswith("postgresql+psycopg://postgres@127.0.0.1")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {table}"))
        engine.dispose()


def test_user_function_candidate(settings, weather_csv, monkeypatch):
    """The Railyard contract: `module:function` with train(train_df, params) -> fitted model."""
    import mlflow

    from ct_pipeline.errors import TrainingError

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "support"))
    data = weather_spec(weather_csv).model_dump()
    data["candidates"] = [
        {"name": "mine", "kind": "function", "function": "user_models:train_scaled_ridge", "params": {"alpha": 2.0}}
    ]
    spec = parse_spec(data)
    snapshot = step_pull(spec, settings, datetime(2015, 7, 1, tzinfo=UTC))
    [result] = step_train(spec, settings, snapshot).candidates
    assert result.kind == "function" and result.metrics["rmse"] < 6
    loaded = mlflow.pyfunc.load_model(result.model_uri)
    frame = __import__("pandas").read_parquet(snapshot.path)[FEATURES].astype("float64").head(3)
    assert loaded.predict(frame).shape == (3,)

    data["candidates"][0]["function"] = "user_models:train_returns_nothing_useful"
    with pytest.raises(TrainingError, match="returned a model without predict"):
        step_train(parse_spec(data), settings, snapshot)
    data["candidates"][0]["function"] = "user_models:no_such_function"
    with pytest.raises(TrainingError, match="cannot be imported"):
        step_train(parse_spec(data), settings, snapshot)
