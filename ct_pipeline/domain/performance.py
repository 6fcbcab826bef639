"""Realized performance of the serving model once labels arrive: the metric and a bootstrap confidence interval.

Pure statistics, no I/O. The point value is sklearn's; the interval is a percentile bootstrap over row
resamples, vectorized through the weighted metrics the gate uses (ct_pipeline.domain.metrics), so 1,000
resamples of 100k rows cost seconds, not minutes. A metric from 300 labels without its interval invites
retraining on noise; with it, "AUC 0.79 [0.74, 0.84]" says what the window can and cannot tell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

CLASSIFICATION_METRICS = ("roc_auc", "average_precision", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
BOOTSTRAP_CHUNK = 50  # resamples per vectorized block: bounds memory at 50 x rows floats

_POINT: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": lambda y, s: float(skm.roc_auc_score(y, s)),
    "average_precision": lambda y, s: float(skm.average_precision_score(y, s)),
    "log_loss": lambda y, s: float(skm.log_loss(y, np.clip(s, 1e-15, 1 - 1e-15), labels=[0, 1])),
    "rmse": lambda y, s: float(np.sqrt(skm.mean_squared_error(y, s))),
    "mae": lambda y, s: float(skm.mean_absolute_error(y, s)),
    "r2": lambda y, s: float(skm.r2_score(y, s)),
}


@dataclass(frozen=True)
class RealizedMetric:
    """A metric on the labelled window, with its percentile bootstrap interval at ``confidence``."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    positives: int | None  # classification: rows labelled 1; regression: None
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        def safe(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {
            "metric": self.metric,
            "value": safe(self.value),
            "ci_low": safe(self.ci_low),
            "ci_high": safe(self.ci_high),
            "n": int(self.n),
            "positives": None if self.positives is None else int(self.positives),
            "confidence": float(self.confidence),
        }


def _bootstrap(metric: str, y: np.ndarray, s: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The metric on ``resamples`` row resamples (with replacement), ``BOOTSTRAP_CHUNK`` at a time.

    Ranking metrics sort once: a row drawn uniformly is a position drawn uniformly in score order, so each
    resample is a (tie block x class) count table, and AUC / AP follow from cumulative sums over the blocks.
    """
    n = len(y)
    out = []
    if metric in ("roc_auc", "average_precision"):
        descending = metric == "average_precision"
        order = np.argsort(-s if descending else s, kind="mergesort")
        sorted_s = s[order]
        block = np.concatenate([[0], np.cumsum(sorted_s[1:] != sorted_s[:-1])])  # tie block of each position
        blocks = int(block[-1]) + 1
        code = y[order].astype(np.int64) * blocks + block  # (class, block) cell of each sorted position
        for start in range(0, resamples, BOOTSTRAP_CHUNK):
            rows = min(BOOTSTRAP_CHUNK, resamples - start)
            cells = code[rng.integers(0, n, size=(rows, n))] + (np.arange(rows) * 2 * blocks)[:, None]
            table = np.bincount(cells.ravel(), minlength=rows * 2 * blocks).reshape(rows, 2, blocks)
            neg, pos = table[:, 0, :], table[:, 1, :]
            if descending:  # AP: precision at the end of each tie block, weighted by its positives
                tp, fp = np.cumsum(pos, axis=1, dtype=np.float64), np.cumsum(neg, axis=1, dtype=np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out.append(np.nansum(pos * tp / (tp + fp), axis=1) / pos.sum(axis=1))
            else:  # AUC: each positive beats the negatives in lower blocks, ties count half
                below = np.cumsum(neg, axis=1, dtype=np.float64) - 0.5 * neg
                with np.errstate(invalid="ignore", divide="ignore"):
                    wins = np.einsum("ij,ij->i", pos.astype(np.float64), below)
                    out.append(wins / (pos.sum(axis=1, dtype=np.float64) * neg.sum(axis=1, dtype=np.float64)))
        return np.concatenate(out) if out else np.empty(0)
    if metric == "log_loss":
        p = np.clip(s, 1e-15, 1 - 1e-15)
        per_row = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    elif metric == "mae":
        per_row = np.abs(s - y)
    else:  # rmse, r2
        per_row = (s - y) ** 2
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        draws = rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, resamples - start), n))
        mean = per_row[draws].mean(axis=1)
        if metric == "rmse":
            out.append(np.sqrt(mean))
        elif metric == "r2":
            drawn_y = y[draws]
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(1 - mean / drawn_y.var(axis=1))
        else:
            out.append(mean)
    return np.concatenate(out) if out else np.empty(0)


def _validate(metric: str, y: np.ndarray, s: np.ndarray) -> int | None:
    if metric not in _POINT:
        raise ValueError(f"unknown metric {metric!r}: expected one of {CLASSIFICATION_METRICS + REGRESSION_METRICS}")
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise ValueError(f"realized {metric}: y_true and scores must be 1-D of one length, got {y.shape}, {s.shape}")
    if len(y) == 0:
        raise ValueError(f"realized {metric} needs labelled rows: the window has none")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(s))):
        raise ValueError(f"realized {metric}: labels and scores must be finite (drop unlabelled rows first)")
    if metric in REGRESSION_METRICS:
        if metric == "r2" and np.all(y == y[0]):
            raise ValueError(f"realized r2 needs varying labels: {len(y)} labels, all {y[0]:g}")
        return None
    classes = np.unique(y)
    if not np.all(np.isin(classes, (0.0, 1.0))):
        raise ValueError(f"realized {metric} needs binary 0/1 labels, got values {classes[:5].tolist()}")
    if len(classes) < 2:
        raise ValueError(f"realized {metric} needs both classes: {len(y)} labels, all {int(classes[0])}")
    return int(y.sum())


def realized_metric(
    metric: str,
    y_true: np.ndarray,
    scores: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> RealizedMetric:
    """The metric of ``scores`` against ``y_true`` and its percentile bootstrap CI (resamples lacking a class
    are skipped: their metric is undefined)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(scores, dtype=float)
    positives = _validate(metric, y, s)
    value = _POINT[metric](y, s)
    distribution = _bootstrap(metric, y, s, resamples, np.random.default_rng(seed))
    distribution = distribution[np.isfinite(distribution)]
    if len(distribution) == 0:
        low = high = float("nan")
    else:
        tail = (1 - confidence) / 2
        low, high = (float(q) for q in np.quantile(distribution, [tail, 1 - tail]))
    return RealizedMetric(metric, value, low, high, len(y), positives, confidence)
