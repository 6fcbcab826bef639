"""Demo traffic: rows of a model's data replayed through the real gateway, and their labels delivered later.

Each request carries an ``x-request-id`` the gateway logs with its predictions; the labels (the rows' real
outcomes) are written keyed by that id and the row index, as a label feed (chargebacks, defaults) would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ct_pipeline.domain.spec import ModelSpec
from ct_pipeline.errors import DataError, RolloutError
from ct_pipeline.ports import DataReader


@dataclass(frozen=True)
class TrafficResult:
    requests: int
    rows: int
    errors: int
    labels_path: Path | None
    run_id: str


def send_traffic(
    spec: ModelSpec,
    data: DataReader,
    gateway_url: str,
    start: datetime,
    end: datetime,
    *,
    rows: int = 2_000,
    batch: int = 20,
    labels_dir: Path | None = None,
    seed: int = 0,
    timeout: float = 30.0,
) -> TrafficResult:
    """Replay ``rows`` rows (a seeded sample of [start, end)) through ``POST {gateway_url}/predict``."""
    import httpx

    frame, uri = data.read(spec.data.source, spec, start, end)
    if frame.empty:
        raise DataError(f"no rows for {spec.name} in [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) of {uri}")
    sample = frame.sample(n=min(rows, len(frame)), random_state=seed).reset_index(drop=True)
    run_id = uuid.uuid4().hex[:8]
    features = sample[spec.data.features].astype("float64")
    records = features.to_dict(orient="records")
    ids, index, labels = [], [], []
    errors = requests = 0
    with httpx.Client(base_url=gateway_url, timeout=timeout) as client:
        for n, offset in enumerate(range(0, len(records), batch)):
            chunk = records[offset : offset + batch]
            request_id = f"traffic-{run_id}-{n}"
            try:
                response = client.post("/predict", json={"rows": chunk}, headers={"x-request-id": request_id})
            except httpx.HTTPError as exc:
                raise RolloutError(f"gateway {gateway_url} is unreachable: {exc}") from None
            requests += 1
            if response.status_code != 200:
                errors += 1
                continue
            ids += [request_id] * len(chunk)
            index += list(range(len(chunk)))
            labels += sample[spec.data.target].iloc[offset : offset + batch].tolist()
    path = None
    if labels_dir is not None and ids:
        labels_dir.mkdir(parents=True, exist_ok=True)
        path = labels_dir / f"labels-{run_id}.parquet"
        tmp = path.with_suffix(".tmp")
        label_frame = pd.DataFrame({"request_id": ids, "row": np.asarray(index, "int64"), spec.data.target: labels})
        label_frame.to_parquet(tmp, index=False)
        tmp.replace(path)
    return TrafficResult(requests=requests, rows=len(ids), errors=errors, labels_path=path, run_id=run_id)
