"""Factories shared by the tests (one copy each): the model spec, registered models, gate decisions, Bento refs,
GitHub publisher settings, free ports. Holds no tests itself.

BentoML binds its store (BENTOML_HOME) the first time it is used in a process, so every serving test
uses ONE bento store per pytest session (``shared_bento_home``); MLflow stores stay per test/module.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

FEATURES = ["amount", "n_tx", "age-days"]
SPEC = {
    "name": "fraud-detector",
    "description": "test model",
    "task": "binary_classification",
    "data": {
        "source": {"kind": "csv", "path": "tx.csv"},
        "time_column": "ts",
        "target": "is_fraud",
        "features": FEATURES,
    },
    "candidates": [{"name": "lr", "kind": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}],
    "metric": {"name": "roc_auc"},
}


def shared_bento_home(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "bentoml-shared"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_spec(name: str | None = None, environment: str | None = None, *, remote: str | None = None, **overrides):
    """The parsed SPEC with top-level overrides (``data=``, ``task=``, ``metric=`` ...); ``name`` and the gitops
    section's ``environment`` / ``remote`` as keywords or positionally (``make_spec("churn", "production")``).
    Nothing given for gitops: the spec's defaults (staging, the remote from settings)."""
    from ct_pipeline.domain.spec import parse_spec

    data = {**SPEC, **overrides}
    if name is not None:
        data["name"] = name
    gitops = dict(data.get("gitops") or {})
    if environment is not None:
        gitops["environment"] = environment
    if remote is not None:
        gitops["remote"] = remote
    if gitops:
        data["gitops"] = gitops
    return parse_spec(data)


def frame(n: int = 300, seed: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        {
            "amount": rng.normal(size=n),
            "n_tx": rng.integers(0, 10, n).astype("int64"),
            "age-days": rng.normal(size=n),
        }
    )
    y = ((x["amount"] + 0.2 * x["n_tx"] + rng.normal(scale=0.5, size=n)) > 1.0).astype(int)
    return x, y


def _use_experiment(name: str) -> None:
    """An experiment whose artifacts live next to the tracking DB, not in ./mlruns of the working directory."""
    import os
    from pathlib import Path

    import mlflow

    if mlflow.get_experiment_by_name(name) is None:
        db = mlflow.get_tracking_uri().removeprefix("sqlite:///")
        root = Path(os.environ.get("CTPIPE_HOME") or Path(db).parent)
        mlflow.create_experiment(name, artifact_location=(root / "mlartifacts" / name).resolve().as_uri())
    mlflow.set_experiment(name)


def register_model(name: str = "fraud-detector", seed: int = 0, C: float = 1.0, input_example: bool = True):
    """Train a tiny LogisticRegression, log + register it; returns (version, run_id, fitted model)."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x, y = frame(seed=seed)
    model = LogisticRegression(C=C, max_iter=500).fit(x, y)
    _use_experiment(name)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(x, model.predict_proba(x)),
            input_example=x.head(3) if input_example else None,
            pip_requirements=["scikit-learn", "pandas"],  # skip slow requirement inference
        )
    return str(info.registered_model_version), run.info.run_id, model


def make_decision(model: str, version: str, run_id: str, data_hash: str = "sha256:" + "ab" * 32):
    from ct_pipeline.domain.records import GateDecision, ModelRef, WindowSnapshot

    snapshot = WindowSnapshot(
        model=model,
        source="csv:tx.csv",
        start=datetime(2026, 10, 1, tzinfo=UTC),
        end=datetime(2026, 11, 1, tzinfo=UTC),
        rows=300,
        content_hash=data_hash,
        path="window.parquet",
        time_column="ts",
        target="is_fraud",
        features=FEATURES,
    )
    return GateDecision(
        model=model,
        promote=True,
        reason="challenger better",
        challenger=ModelRef(version=version, run_id=run_id, metric=0.9),
        metric="roc_auc",
        direction="maximize",
        decided_at=datetime.now(UTC),
        snapshot=snapshot,
    )


def register_regressor(name: str = "house-price", seed: int = 0):
    """A tiny LinearRegression (pyfunc predict -> (n,)), logged + registered; returns (version, run_id, model)."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    x, _ = frame(seed=seed)
    y = 3.0 * x["amount"] - 0.5 * x["n_tx"] + 10.0
    model = LinearRegression().fit(x, y)
    _use_experiment(name)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            signature=infer_signature(x, model.predict(x)),
            pip_requirements=["scikit-learn", "pandas"],
        )
    return str(info.registered_model_version), run.info.run_id, model


def bento_ref(**kw):
    """A BentoRef of fraud-detector v7 (no image), fields overridable."""
    from ct_pipeline.domain.records import BentoRef

    base = {
        "model": "fraud-detector",
        "version": "7",
        "run_id": "0123456789abcdef",
        "bento_tag": "fraud-detector:abc",
        "bento_model_tag": "fraud-detector:v7-0123456789ab",
        "data_hash": "sha256:" + "ab" * 32,
    }
    return BentoRef(**{**base, **kw})


def fast_settings(**overrides):
    """GitHubSettings for tests: no pacing between requests, quick retries, no credentials unless given."""
    from ct_pipeline.settings import GitHubSettings

    values = dict(
        seconds_between_requests=None,
        seconds_between_writes=None,
        backoff_factor=0.05,
        secondary_rate_wait=1,
        retries=4,
        token=None,
        app_id=None,
    )
    values.update(overrides)
    return GitHubSettings(**values)
