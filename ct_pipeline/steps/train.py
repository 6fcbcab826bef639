"""Step 3, train: every candidate on the window, scored on the most recent holdout, logged and registered.

One MLflow run per candidate with params, holdout metrics, the window as dataset inputs, signature and input
example; the model is logged with its family's MLflow flavor and registered as a new version of the spec's
registered model. All of it goes through the context's tracker.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ct_pipeline.context import StepContext
from ct_pipeline.domain import tags
from ct_pipeline.domain.metrics import all_metrics, scores_from_prediction
from ct_pipeline.domain.records import CandidateResult, TrainResult, WindowSnapshot
from ct_pipeline.domain.spec import ModelSpec, TaskType
from ct_pipeline.domain.window import split_holdout
from ct_pipeline.errors import TrainingError
from ct_pipeline.families import family_for
from ct_pipeline.steps.pull import load_snapshot

BASE_PACKAGES = ("mlflow", "pandas", "numpy")


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


def pip_requirements(spec: ModelSpec) -> list[str]:
    """Pinned from this environment: MLflow's own inference would otherwise import the model in a subprocess."""
    packages = list(BASE_PACKAGES)
    for candidate in spec.candidates:
        packages += [p for p in family_for(candidate).packages if p not in packages]
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def predict_scores(model: Any, X: pd.DataFrame, task: TaskType) -> np.ndarray:
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


def fingerprint(candidate: Any, snapshot: WindowSnapshot) -> str:
    """Same data + same candidate definition = the same model, whatever the version number says.

    The gate uses it to refuse, without force, a retrain of a version that was rolled back.
    """
    definition = json.dumps(candidate.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(f"{snapshot.content_hash}|{definition}".encode()).hexdigest()[:32]


def train(ctx: StepContext, snapshot: WindowSnapshot) -> TrainResult:
    spec, tracker = ctx.spec, ctx.tracker
    train_df, holdout_df = load_split(spec, snapshot)
    if spec.task == TaskType.binary_classification:
        for part, frame in (("train", train_df), ("holdout", holdout_df)):
            if frame[spec.data.target].nunique() < 2:
                raise TrainingError(f"{spec.name}: the {part} split has a single class; widen the window")
    experiment_id = tracker.ensure_experiment(
        experiment_name(spec), artifact_location=f"{ctx.settings.artifact_root}/{spec.name}"
    )
    features = spec.data.features
    train_ds = tracker.dataset(train_df, source=snapshot.path, targets=spec.data.target, name=f"{spec.name}-train")
    holdout_ds = tracker.dataset(
        holdout_df, source=snapshot.path, targets=spec.data.target, name=f"{spec.name}-holdout"
    )
    sha = code_version()
    requirements = pip_requirements(spec)
    results: list[CandidateResult] = []
    for candidate in spec.candidates:
        family = family_for(candidate)
        run_tags = {
            tags.RUN_MODEL: spec.name,
            tags.RUN_CANDIDATE: candidate.name,
            tags.RUN_CANDIDATE_KIND: candidate.kind,
            tags.RUN_DATA_HASH: snapshot.content_hash,
            tags.RUN_WINDOW_START: snapshot.start.isoformat(),
            tags.RUN_WINDOW_END: snapshot.end.isoformat(),
            **({tags.RUN_GIT_COMMIT: sha} if sha else {}),
        }
        run_name = f"{candidate.name}-{snapshot.content_hash[7:15]}"
        with tracker.start_run(experiment_id, run_name, run_tags) as run_id:
            tracker.log_params(
                {
                    "candidate.kind": candidate.kind,
                    "window": snapshot.end.isoformat(),
                    "train_rows": len(train_df),
                    "holdout_rows": len(holdout_df),
                    **{f"param.{k}": v for k, v in candidate.params.items()},
                }
            )
            tracker.log_dataset(train_ds, context="training")
            tracker.log_dataset(holdout_ds, context="evaluation")
            try:
                model = family.fit(candidate, train_df, spec)
            except TrainingError:
                raise
            except Exception as exc:  # a user's estimator or function: report which candidate broke
                raise TrainingError(
                    f"candidate {candidate.name!r} failed to train: {exc.__class__.__name__}: {exc}"
                ) from exc
            scores = predict_scores(model, holdout_df[features], spec.task)
            metrics = all_metrics(spec.task.value, holdout_df[spec.data.target].to_numpy(), scores)
            tracker.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
            example = holdout_df[features].head(5)
            model_version = tracker.log_model(
                family.flavor,
                model,
                registered_model_name=spec.registered_model_name,
                input_example=example,
                output_example=predict_scores(model, example, spec.task),
                pip_requirements=requirements,
                **family.log_options(model, spec),
            )
            tracker.set_version_tags(
                spec.registered_model_name,
                model_version,
                {
                    tags.VERSION_CANDIDATE: candidate.name,
                    tags.VERSION_DATA_HASH: snapshot.content_hash,
                    tags.FINGERPRINT: fingerprint(candidate, snapshot),
                },
            )
            results.append(
                CandidateResult(
                    name=candidate.name,
                    kind=candidate.kind,
                    run_id=run_id,
                    model_uri=f"models:/{spec.registered_model_name}/{model_version}",
                    version=model_version,
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
