"""One streaming pass over the recent prediction window: every feature and the score against the reference,
null counts, volume per hour and the versions that served it. Memory is bounded by the reference and the
accumulators' samples, not by the window (10M logged rows stream through in batches)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ct_pipeline.domain.drift import FeatureAccumulator, FeatureReference
from ct_pipeline.domain.monitoring import FeatureDriftMonitor, ScoreDriftMonitor
from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.ports import PredictionLogReader
from ct_pipeline.steps.monitor.reference import Reference

SCORE = "prediction"


@dataclass
class WindowStats:
    start: datetime
    end: datetime
    rows: int = 0  # rows of the judged version
    all_rows: int = 0  # every version
    versions: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    per_hour: np.ndarray = field(default_factory=lambda: np.zeros(0))
    features: dict[str, FeatureAccumulator] = field(default_factory=dict)
    score: FeatureAccumulator | None = None
    nulls: dict[str, int] = field(default_factory=dict)

    def null_rate(self, feature: str) -> float:
        return self.nulls.get(feature, 0) / self.rows if self.rows else 0.0


def feature_references(spec: ModelSpec, reference: Reference) -> dict[str, FeatureReference]:
    """One reference per feature, categorical where the drift monitor says so (or inferred from the values)."""
    drift = next((m for m in spec.monitoring.monitors if isinstance(m, FeatureDriftMonitor)), None)
    declared = set(drift.categorical or []) if drift else set()
    bins = drift.bins if drift else 10
    out = {}
    for name in spec.data.features:
        values = reference.features[name].to_numpy(dtype=float)
        kind = (
            "categorical" if name in declared else (None if drift is None or drift.categorical is None else "numeric")
        )
        out[name] = FeatureReference.build(name, values, kind=kind, bins=bins)
    return out


def score_reference(spec: ModelSpec, reference: Reference) -> FeatureReference:
    monitor = next((m for m in spec.monitoring.monitors if isinstance(m, ScoreDriftMonitor)), None)
    return FeatureReference.build(SCORE, reference.scores, kind="numeric", bins=monitor.bins if monitor else 10)


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_boolean(column.type) or pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(column.to_pylist(), dtype=object)


def scan_window(
    log: PredictionLogReader,
    spec: ModelSpec,
    version: str | None,
    start: datetime,
    end: datetime,
    references: dict[str, FeatureReference],
    score_ref: FeatureReference,
    sample_size: int = 20_000,
    batch_size: int = 65_536,
) -> WindowStats:
    hours = max(1, int(np.ceil((end - start).total_seconds() / 3600)))
    stats = WindowStats(start=start, end=end, per_hour=np.zeros(hours))
    stats.features = {
        name: FeatureAccumulator(ref, sample_size=sample_size, seed=i)
        for i, (name, ref) in enumerate(references.items())
    }
    stats.score = FeatureAccumulator(score_ref, sample_size=sample_size, seed=len(references))
    stats.nulls = dict.fromkeys(spec.data.features, 0)
    start_us = int(start.timestamp() * 1_000_000)
    for batch in log.scan(spec.name, start, end, spec.data.features, batch_size=batch_size):
        stats.all_rows += batch.num_rows
        for item in pc.value_counts(batch.column("version")).to_pylist():
            key = str(item["values"])
            stats.versions[key] = stats.versions.get(key, 0) + int(item["counts"])
        if version is not None:
            batch = batch.filter(pc.equal(batch.column("version"), version))
        if not batch.num_rows:
            continue
        stats.rows += batch.num_rows
        stats.requests += int(pc.sum(pc.equal(batch.column("row"), 0)).as_py() or 0)  # row 0 once per request
        ts = pc.cast(pc.cast(batch.column("ts"), pa.timestamp("us", tz="UTC"), safe=False), pa.int64()).to_numpy(
            zero_copy_only=False
        )
        hour = np.clip((ts - start_us) // 3_600_000_000, 0, hours - 1)
        stats.per_hour += np.bincount(hour, minlength=hours)
        for name, acc in stats.features.items():
            values = _numpy(batch.column(name))
            stats.nulls[name] += int(batch.column(name).null_count)
            acc.update(values)
        stats.score.update(_numpy(batch.column(SCORE)))
    return stats
