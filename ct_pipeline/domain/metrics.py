"""Metrics, plain and bootstrap-weighted, shared by training and the gate."""

from __future__ import annotations

import numpy as np


def scores_from_prediction(prediction) -> np.ndarray:
    """pyfunc output -> 1-D scores: positive-class column of predict_proba, or the regression value."""
    arr = np.asarray(getattr(prediction, "values", prediction), dtype=float)
    if arr.ndim == 2:
        arr = arr[:, -1]
    return arr.ravel()


def weighted_metric(name: str, y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Metric for each row of weights ``w`` (shape (B, n)) — the bootstrap's resamples (row counts).

    One sort serves every resample, so 1,000 resamples of 100k rows cost a few seconds.
    """
    y = np.asarray(y, dtype=float)
    s = np.asarray(s, dtype=float)
    w = np.atleast_2d(np.asarray(w, dtype=float))
    if name == "roc_auc":
        # Weighted Mann-Whitney: each positive counts the negative weight below it, half the tied weight.
        order = np.argsort(s, kind="mergesort")
        s_sorted, positive = s[order], y[order].astype(bool)
        w_sorted = w[:, order]
        neg_w = np.where(positive, 0.0, w_sorted)
        cum_neg = np.cumsum(neg_w, axis=1, dtype=np.float64)
        pos_idx = np.flatnonzero(positive)  # positives are usually the rare class: gather only them
        lo = np.searchsorted(s_sorted, s_sorted[pos_idx], side="left")
        hi = np.searchsorted(s_sorted, s_sorted[pos_idx], side="right")
        below = np.where(lo > 0, cum_neg[:, np.maximum(lo - 1, 0)], 0.0)
        equal = cum_neg[:, hi - 1] - below
        pos_w = w_sorted[:, pos_idx]
        numer = (pos_w * (below + 0.5 * equal)).sum(axis=1)
        denom = pos_w.sum(axis=1) * cum_neg[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return numer / denom
    if name == "average_precision":
        order = np.argsort(-s, kind="mergesort")
        neg_sorted, y_sorted, w_sorted = -s[order], y[order], w[:, order]
        # Tied scores share one threshold: every row takes the precision at the end of its tie block.
        block_end = np.searchsorted(neg_sorted, neg_sorted, side="right") - 1
        tp = np.cumsum(w_sorted * y_sorted, axis=1)[:, block_end]
        fp = np.cumsum(w_sorted * (1 - y_sorted), axis=1)[:, block_end]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            return np.nansum(w_sorted * y_sorted * precision, axis=1) / (w_sorted * y_sorted).sum(axis=1)
    if name == "log_loss":
        p = np.clip(s, 1e-15, 1 - 1e-15)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        return (w * loss).sum(axis=1) / w.sum(axis=1)
    if name == "rmse":
        return np.sqrt((w * (s - y) ** 2).sum(axis=1) / w.sum(axis=1))
    if name == "mae":
        return (w * np.abs(s - y)).sum(axis=1) / w.sum(axis=1)
    if name == "r2":
        wsum = w.sum(axis=1)
        mean = (w * y).sum(axis=1) / wsum
        ss_res = (w * (y - s) ** 2).sum(axis=1)
        ss_tot = (w * (y - mean[:, None]) ** 2).sum(axis=1)
        return 1 - ss_res / ss_tot
    raise ValueError(f"unknown metric {name!r}")


def metric(name: str, y, s) -> float:
    return float(weighted_metric(name, np.asarray(y), np.asarray(s), np.ones((1, len(y))))[0])


METRICS_BY_TASK = {
    "binary_classification": ["roc_auc", "average_precision", "log_loss"],
    "regression": ["rmse", "mae", "r2"],
}


def all_metrics(task: str, y, s) -> dict[str, float]:
    return {m: metric(m, y, s) for m in METRICS_BY_TASK[task]}
