"""Step 2: train every candidate on the window, score it on the most recent holdout, log and register it.

One MLflow run per candidate with params, holdout metrics, the window as dataset inputs (``mlflow.data``),
signature and input example; the model is registered as a new version of the spec's registered model.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from ct_pipeline.data_window import load_snapshot, split_holdout
from ct_pipeline.domain.records import CandidateResult, TrainResult, WindowSnapshot
from ct_pipeline.domain.spec import (
    Candidate,
    FunctionCandidate,
    LightGBMCandidate,
    ModelSpec,
    SklearnCandidate,
    TaskType,
)
from ct_pipeline.errors import TrainingError
from ct_pipeline.settings import Settings


def code_version() -> str | None:
    """Git sha of the ct-pipeline checkout the code runs from (lineage), if it is one."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def experiment_name(spec: ModelSpec) -> str:
    return f"ct-pipeline/{spec.name}"


def ensure_experiment(spec: ModelSpec, settings: Settings) -> str:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    name = experiment_name(spec)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        # An explicit artifact location keeps artifacts out of the current directory.
        return mlflow.create_experiment(name, artifact_location=f"{settings.artifact_root}/{spec.name}")
    return experiment.experiment_id


def _import_attr(path: str, what: str) -> Any:
    """'package.module:attr' -> the attribute."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TrainingError(f"{what} {path!r} cannot be imported: {exc}") from None


def build_estimator(candidate: Candidate, task: TaskType, seed: int = 0) -> Any:
    if isinstance(candidate, LightGBMCandidate):
        import lightgbm as lgb

        cls = lgb.LGBMClassifier if task == TaskType.binary_classification else lgb.LGBMRegressor
        return cls(**{"random_state": seed, "verbose": -1, **candidate.params})
    if isinstance(candidate, SklearnCandidate):
        module, _, name = candidate.estimator.rpartition(".")
        cls = _import_attr(f"{module}:{name}", "estimator")
        try:
            return cls(**candidate.params)
        except TypeError as exc:
            raise TrainingError(f"candidate {candidate.name!r}: bad params for {candidate.estimator}: {exc}") from None
    raise TypeError(f"no estimator for {type(candidate).__name__}")


def fit_candidate(candidate: Candidate, train_df: pd.DataFrame, spec: ModelSpec) -> Any:
    features, target = spec.data.features, spec.data.target
    if isinstance(candidate, FunctionCandidate):
        # The Railyard contract: train(train_df, params) -> fitted model with predict / predict_proba.
        train_fn = _import_attr(candidate.function, "training function")
        model = train_fn(train_df[[*features, target]].copy(), dict(candidate.params))
        method = "predict_proba" if spec.task == TaskType.binary_classification else "predict"
        if not hasattr(model, method):
            raise TrainingError(
                f"candidate {candidate.name!r}: {candidate.function} returned a model without {method}()"
            )
        return model
    estimator = build_estimator(candidate, spec.task)
    return estimator.fit(train_df[features], train_df[target])


def pip_requirements(spec: ModelSpec) -> list[str]:
    """Pinned from this environment: MLflow's own inference imports the model in a subprocess (slow)."""
    from importlib.metadata import PackageNotFoundError, version

    packages = ["mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy"]
    if any(isinstance(c, LightGBMCandidate) for c in spec.candidates):
        packages.append("lightgbm")
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def trusted_types(model: Any) -> list[str]:
    """Types skops must trust to load this model (MLflow 3 saves sklearn models with skops, not pickle).

    We trained the object ourselves, so trusting exactly its own types keeps the safe format usable.
    """
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(model))


def predict_scores(model: Any, X: pd.DataFrame, task: TaskType):
    from ct_pipeline.domain.metrics import scores_from_prediction

    return scores_from_prediction(
        model.predict_proba(X) if task == TaskType.binary_classification else model.predict(X)
    )


def load_split(spec: ModelSpec, snapshot: WindowSnapshot) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and holdout parts of the snapshot, features as float64 (the signature every server enforces).

    Deterministic, so the gate scores champion and challenger on exactly the rows training held out.
    """
    df = load_snapshot(snapshot)
    df[spec.data.features] = df[spec.data.features].astype("float64")
    return split_holdout(df, spec.data.time_column, spec.data.holdout_fraction)


def fingerprint(candidate: Candidate, snapshot: WindowSnapshot) -> str:
    """Same data + same candidate definition = the same model, whatever the version number says.

    The gate uses it to refuse, without force, a retrain of a version that was rolled back.
    """
    import hashlib
    import json

    definition = json.dumps(candidate.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(f"{snapshot.content_hash}|{definition}".encode()).hexdigest()[:32]


def train_candidates(spec: ModelSpec, snapshot: WindowSnapshot, settings: Settings) -> TrainResult:
    import mlflow
    from mlflow.models import infer_signature

    from ct_pipeline.domain.metrics import all_metrics

    train_df, holdout_df = load_split(spec, snapshot)
    if spec.task == TaskType.binary_classification:
        for part, frame in (("train", train_df), ("holdout", holdout_df)):
            if frame[spec.data.target].nunique() < 2:
                raise TrainingError(f"{spec.name}: the {part} split has a single class; widen the window")
    experiment_id = ensure_experiment(spec, settings)
    features = spec.data.features
    train_ds = mlflow.data.from_pandas(
        train_df, source=snapshot.path, targets=spec.data.target, name=f"{spec.name}-train"
    )
    holdout_ds = mlflow.data.from_pandas(
        holdout_df, source=snapshot.path, targets=spec.data.target, name=f"{spec.name}-holdout"
    )
    sha = code_version()
    requirements = pip_requirements(spec)
    results: list[CandidateResult] = []
    for candidate in spec.candidates:
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{candidate.name}-{snapshot.content_hash[7:15]}"
        ) as run:
            mlflow.set_tags(
                {
                    "ct.model": spec.name,
                    "ct.candidate": candidate.name,
                    "ct.candidate_kind": candidate.kind,
                    "ct.data_hash": snapshot.content_hash,
                    "ct.window_start": snapshot.start.isoformat(),
                    "ct.window_end": snapshot.end.isoformat(),
                    **({"mlflow.source.git.commit": sha} if sha else {}),
                }
            )
            mlflow.log_params(
                {
                    "candidate.kind": candidate.kind,
                    "window": snapshot.end.isoformat(),
                    "train_rows": len(train_df),
                    "holdout_rows": len(holdout_df),
                    **{f"param.{k}": v for k, v in candidate.params.items()},
                }
            )
            mlflow.log_input(train_ds, context="training")
            mlflow.log_input(holdout_ds, context="evaluation")
            try:
                model = fit_candidate(candidate, train_df, spec)
            except TrainingError:
                raise
            except Exception as exc:  # a user's estimator or function: report which candidate broke
                raise TrainingError(
                    f"candidate {candidate.name!r} failed to train: {exc.__class__.__name__}: {exc}"
                ) from exc
            scores = predict_scores(model, holdout_df[features], spec.task)
            metrics = all_metrics(spec.task.value, holdout_df[spec.data.target].to_numpy(), scores)
            mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
            example = holdout_df[features].head(5)
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(example, predict_scores(model, example, spec.task)),
                input_example=example,
                registered_model_name=spec.registered_model_name,
                pyfunc_predict_fn="predict_proba" if spec.task == TaskType.binary_classification else "predict",
                skops_trusted_types=trusted_types(model),
                pip_requirements=requirements,
            )
            version = str(info.registered_model_version)
            client = mlflow.MlflowClient()
            version_tags = {
                "ct.candidate": candidate.name,
                "ct.data_hash": snapshot.content_hash,
                "ct.fingerprint": fingerprint(candidate, snapshot),
            }
            for key, value in version_tags.items():
                client.set_model_version_tag(spec.registered_model_name, version, key, value)
            results.append(
                CandidateResult(
                    name=candidate.name,
                    kind=candidate.kind,
                    run_id=run.info.run_id,
                    model_uri=f"models:/{spec.registered_model_name}/{version}",
                    version=version,
                    metrics=metrics,
                    primary_metric=metrics[spec.metric.name],
                )
            )
    return TrainResult(
        model=spec.name, snapshot=snapshot, candidates=results, holdout_rows=len(holdout_df), train_rows=len(train_df)
    )


def best_candidate(spec: ModelSpec, result: TrainResult) -> CandidateResult:
    sign = 1 if spec.direction == "maximize" else -1
    return max(result.candidates, key=lambda c: sign * c.primary_metric)
