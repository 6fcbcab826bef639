"""The champion's reference, written by the gate and read by the monitor.

The gate logs, on the challenger's MLflow run, a sample of the training snapshot's features, the model's scores
and labels on the gate's holdout, and the metric it promised (with its CI). Once that challenger is the
champion, the monitor compares the served traffic with exactly these, whatever became of the local snapshot.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ct_pipeline.domain import tags
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.errors import MonitoringError, TrackingError
from ct_pipeline.ports import Tracker

REFERENCE_SAMPLE_ROWS = 50_000


@dataclass(frozen=True)
class Reference:
    features: pd.DataFrame  # float64 columns, one per feature (sampled rows of the training snapshot)
    scores: np.ndarray  # the model's holdout scores
    labels: np.ndarray  # the holdout labels
    promise: dict[str, Any]  # {"metric", "value", "ci_low", "ci_high", "n", "confidence"}
    uri: str


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, compression="zstd")
    return buffer.getvalue()


def reference_files(
    spec: ModelSpec,
    snapshot: pd.DataFrame,
    holdout_labels: np.ndarray,
    holdout_scores: np.ndarray,
    promise: dict[str, Any],
    seed: int = 0,
) -> dict[str, bytes]:
    """The files the gate logs under ``monitoring/reference`` (a seeded sample, so reruns log the same rows)."""
    features = snapshot[spec.data.features].astype("float64")
    if len(features) > REFERENCE_SAMPLE_ROWS:
        features = features.sample(n=REFERENCE_SAMPLE_ROWS, random_state=seed)
    scores = pd.DataFrame({"score": np.asarray(holdout_scores, float), "label": np.asarray(holdout_labels, float)})
    return {
        tags.REFERENCE_FEATURES: _parquet(features.reset_index(drop=True)),
        tags.REFERENCE_SCORES: _parquet(scores),
        tags.REFERENCE_PROMISE: json.dumps(promise, indent=2).encode(),
    }


def load_reference(tracker: Tracker, spec: ModelSpec, run_id: str, version: str) -> Reference:
    base = tags.MONITOR_REFERENCE_DIR
    try:
        features = pd.read_parquet(io.BytesIO(tracker.read_artifact(run_id, f"{base}/{tags.REFERENCE_FEATURES}")))
        scores = pd.read_parquet(io.BytesIO(tracker.read_artifact(run_id, f"{base}/{tags.REFERENCE_SCORES}")))
        promise = json.loads(tracker.read_artifact(run_id, f"{base}/{tags.REFERENCE_PROMISE}"))
    except (TrackingError, OSError, Exception) as exc:  # MLflow raises its own types for a missing artifact
        raise MonitoringError(
            f"{spec.name} v{version} has no monitoring reference in MLflow run {run_id} ({base}/): "
            f"it was promoted before monitoring existed or its artifacts are gone; retrain it to get one ({exc})"
        ) from None
    missing = [f for f in spec.data.features if f not in features.columns]
    if missing:
        raise MonitoringError(f"the reference of {spec.name} v{version} lacks features {missing} (spec changed?)")
    return Reference(
        features=features[spec.data.features],
        scores=scores["score"].to_numpy(float),
        labels=scores["label"].to_numpy(float),
        promise=promise,
        uri=f"runs:/{run_id}/{base}",
    )
