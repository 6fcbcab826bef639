"""Realized performance: matured predictions joined with the labels that arrived, the metric with its CI, next
to what the gate promised when this model was promoted."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from ct_pipeline.domain.monitor_report import PerformanceCheck
from ct_pipeline.domain.monitoring import PerformanceMonitor
from ct_pipeline.domain.performance import realized_metric
from ct_pipeline.domain.spec import ModelSpec, parse_window
from ct_pipeline.errors import DataError
from ct_pipeline.ports import LabelsReader, PredictionLogReader


def _keys(frame: pd.DataFrame, monitor: PerformanceMonitor) -> pd.MultiIndex | pd.Index:
    source = monitor.labels
    if source.row:
        return pd.MultiIndex.from_arrays([frame[source.key].astype(str), frame[source.row].astype("int64")])
    return pd.Index(frame[source.key].astype(str))


def performance_check(
    spec: ModelSpec,
    monitor: PerformanceMonitor,
    log: PredictionLogReader,
    labels: LabelsReader,
    version: str | None,
    end: datetime,
    promise: dict,
) -> PerformanceCheck:
    """Predictions in [end - delay - window, end - delay) are old enough for their labels."""
    matured_until = end - parse_window(monitor.delay)
    start = matured_until - spec.monitoring.window_delta
    metric_name = monitor.metric or spec.metric.name
    source = monitor.labels
    label_frame = labels.read(source, start, end)
    for column in [source.key, source.label] + ([source.row] if source.row else []):
        if column not in label_frame.columns:
            raise DataError(f"labels source {source.path or source.url} has no column {column!r}")
    label_frame = label_frame.dropna(subset=[source.label]).drop_duplicates(
        subset=[source.key] + ([source.row] if source.row else []), keep="last"
    )
    by_key = pd.Series(label_frame[source.label].to_numpy(float), index=_keys(label_frame, monitor))
    ys: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    unlabeled = 0
    for batch in log.scan(spec.name, start, matured_until, []):
        frame = batch.select(["request_id", "row", "version", "prediction"]).to_pandas()
        if version is not None:
            frame = frame[frame["version"] == version]
        if source.row:
            index = pd.MultiIndex.from_arrays([frame["request_id"].astype(str), frame["row"].astype("int64")])
        else:
            index = pd.Index(frame["request_id"].astype(str))
        y = by_key.reindex(index).to_numpy()
        known = ~np.isnan(y)
        unlabeled += int((~known).sum())
        ys.append(y[known])
        ss.append(frame["prediction"].to_numpy(float)[known])
    y_all = np.concatenate(ys) if ys else np.zeros(0)
    s_all = np.concatenate(ss) if ss else np.zeros(0)
    check = PerformanceCheck(
        monitor=monitor.name,
        metric=metric_name,
        matured_until=matured_until,
        labels=len(y_all),
        unlabeled=unlabeled,
        positives=int(y_all.sum()) if spec.task == "binary_classification" else None,
        promised=promise.get("value"),
        promised_ci_low=promise.get("ci_low"),
        promised_ci_high=promise.get("ci_high"),
    )
    if len(y_all) < monitor.min_labels:
        return check.model_copy(
            update={
                "detail": f"not judged: {len(y_all):,} matured labels < min_labels {monitor.min_labels} "
                f"(predictions before {matured_until:%Y-%m-%d %H:%M})"
            }
        )
    try:
        realized = realized_metric(metric_name, y_all, s_all, confidence=monitor.confidence)
    except ValueError as exc:
        return check.model_copy(update={"detail": f"not judged: {exc}"})
    maximize = spec.metric.resolved_direction() == "maximize" if metric_name == spec.metric.name else True
    low = promise.get("ci_low")
    high = promise.get("ci_high")
    breached = False
    if maximize and low is not None:
        breached = realized.ci_high < low - monitor.tolerance
    elif not maximize and high is not None:
        breached = realized.ci_low > high + monitor.tolerance
    promised = (
        f"the gate promised {promise['value']:.3f} [{low:.3f}, {high:.3f}]"
        if promise.get("value") is not None and low is not None and high is not None
        else "no promise on record"
    )
    verdict = "below what was promised" if breached else "as promised"
    detail = (
        f"realized {metric_name} {realized.value:.3f} [{realized.ci_low:.3f}, {realized.ci_high:.3f}] "
        f"on {len(y_all):,} labelled predictions, {verdict}: {promised}"
    )
    return check.model_copy(
        update={
            "value": realized.value,
            "ci_low": realized.ci_low,
            "ci_high": realized.ci_high,
            "judged": True,
            "breached": breached,
            "detail": detail,
        }
    )


__all__ = ["performance_check"]
