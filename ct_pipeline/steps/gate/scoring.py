"""Gate scoring: champion and challenger on the same holdout rows, and the paired bootstrap of the delta."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ct_pipeline.domain.metrics import metric, weighted_metric
from ct_pipeline.domain.records import CandidateResult, ModelRef

BOOTSTRAP_CHUNK = 50  # resamples per vectorised block: bounds memory at 50 x rows floats


def resample_counts(rng: np.random.Generator, resamples: int, rows: int) -> np.ndarray:
    """How often each row is drawn in each resample (classic bootstrap: ``rows`` draws with replacement)."""
    draws = rng.integers(0, rows, size=(resamples, rows)) + (np.arange(resamples) * rows)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * rows).reshape(resamples, rows).astype(np.float32)


def paired_bootstrap(
    metric_name: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    resamples: int,
    confidence: float,
    seed: int,
    maximize: bool,
) -> tuple[float, float, float]:
    """Delta = improvement of challenger over champion (positive is better) and its percentile CI.

    Both models are scored on the same resampled rows, so the noise they share cancels.
    """
    rng = np.random.default_rng(seed)
    sign = 1.0 if maximize else -1.0
    deltas = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        weights = resample_counts(rng, min(BOOTSTRAP_CHUNK, resamples - start), len(y))
        chal = weighted_metric(metric_name, y, challenger, weights)
        champ = weighted_metric(metric_name, y, champion, weights)
        deltas.append(sign * (chal - champ))
    all_deltas = np.concatenate(deltas)
    all_deltas = all_deltas[np.isfinite(all_deltas)]
    point = sign * (metric(metric_name, y, challenger) - metric(metric_name, y, champion))
    alpha = 1.0 - confidence
    low, high = np.quantile(all_deltas, [alpha / 2, 1 - alpha / 2])
    return float(point), float(low), float(high)


def single_row_latency_p95_ms(model, X: pd.DataFrame, samples: int) -> float:
    """p95 of one-row pyfunc predictions (schema enforcement included, as a server would pay it)."""
    rows = [X.iloc[[i % len(X)]] for i in range(samples)]
    model.predict(rows[0])  # warm-up: lazy imports, caches
    timings = np.empty(samples)
    for i, row in enumerate(rows):
        started = time.perf_counter()
        model.predict(row)
        timings[i] = time.perf_counter() - started
    return float(np.percentile(timings, 95) * 1000)


def model_size_bytes(model) -> int | None:
    size = getattr(getattr(model, "metadata", None), "model_size_bytes", None)
    return int(size) if size else None


@dataclass
class Evidence:
    """Everything the checks and the verdict judge, computed once: the holdout, both models' scores, the delta."""

    best: CandidateResult
    challenger: ModelRef
    holdout: pd.DataFrame
    y: np.ndarray
    challenger_scores: np.ndarray
    latency_p95_ms: float
    model_size_bytes: int | None
    champion: ModelRef | None = None
    champion_scores: np.ndarray | None = None
    champion_latency_p95_ms: float | None = None
    champion_model_size_bytes: int | None = None
    champion_error: str | None = None  # the champion exists but cannot be loaded
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def compared(self) -> bool:
        """Both models were scored on the holdout (a champion exists, differs, and loads)."""
        return self.champion_scores is not None
