"""The prediction log end to end: the gateway's writer (serving/gateway/predlog.py) and the monitor's reader
(ct_pipeline.adapters.prediction_log.ParquetPredictionLog), on a local directory and on a real S3 endpoint (moto in
server mode: S3 over HTTP on 127.0.0.1), plus the reader's memory bound over millions of rows.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from gateway.predlog import Lineage, PredictionLog
from gateway.routes import create_app
from gateway.settings import GatewaySettings

from ct_pipeline.adapters.prediction_log import BASE_COLUMNS, ParquetPredictionLog
from ct_pipeline.errors import MonitoringError
from ct_pipeline.ports import PredictionLogReader
from tests.support.factories import free_tcp_port

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
V3 = Lineage("fraud", "3", "r3", "sha256:d3", "sha256:i3", ("amount", "n_tx"), ("double", "long"))
# version 4 dropped n_tx and added country (a model change): old files lack country, new ones lack n_tx
V4 = Lineage("fraud", "4", "r4", "sha256:d4", "sha256:i4", ("amount", "country"), ("double", "string"))
OTHER = Lineage("churn", "1", "c1", None, None, ("amount",), ("double",))


def _write(log: PredictionLog, records: list[tuple[float, str, Lineage, list, list]]) -> None:
    async def main():
        log.start()
        for record in records:
            assert log.record(*record)
        await log.close()

    asyncio.run(main())


def _records() -> list[tuple[float, str, Lineage, list, list]]:
    out = []
    for i in range(6):  # 13:00, 13:30, ... 15:30 -> three hours, two versions
        ts = (T0 + timedelta(minutes=30 * i)).timestamp()
        if i < 3:
            out.append(
                (ts, f"a{i}", V3, [{"amount": float(i), "n_tx": i}, {"amount": -float(i), "n_tx": None}], [0.1, 0.2])
            )
        else:
            out.append((ts, f"b{i}", V4, [{"amount": float(i), "country": "de"}], [0.3]))
        out.append((ts, f"c{i}", OTHER, [{"amount": 9.0}], [0.9]))
    return out


def _rows(reader: ParquetPredictionLog, model: str, start: datetime, end: datetime, features) -> list[dict]:
    batches = list(reader.scan(model, start, end, features, batch_size=2))
    assert all(b.num_rows <= 2 for b in batches)
    rows = [r for b in batches for r in b.to_pylist()]
    return sorted(rows, key=lambda r: (r["ts"], r["request_id"], r["row"]))


def test_local_log_round_trip_with_pruning_and_a_changed_model(tmp_path):
    root = tmp_path / "predictions"
    _write(PredictionLog(root, flush_interval=0.05, writer="gw-0"), _records())
    # a part still being written next to the complete ones: never read
    live = next(root.rglob("*.parquet"))
    (live.parent / "v9-000000-gw-1-1-1.parquet.tmp").write_bytes(b"PAR1 partial")
    reader = ParquetPredictionLog(root)
    assert isinstance(reader, PredictionLogReader) and reader.location == str(root)

    rows = _rows(reader, "fraud", T0, T0 + timedelta(hours=3), ["amount", "n_tx", "country"])
    assert [(r["request_id"], r["row"], r["version"]) for r in rows] == [
        ("a0", 0, "3"), ("a0", 1, "3"), ("a1", 0, "3"), ("a1", 1, "3"), ("a2", 0, "3"), ("a2", 1, "3"),
        ("b3", 0, "4"), ("b4", 0, "4"), ("b5", 0, "4"),
    ]  # fmt: skip
    assert list(rows[0]) == [*BASE_COLUMNS, "amount", "n_tx", "country"]
    assert (rows[2]["amount"], rows[2]["n_tx"], rows[2]["country"], rows[2]["prediction"]) == (1.0, 1, None, 0.1)
    assert rows[3]["n_tx"] is None  # logged as missing
    assert (rows[6]["n_tx"], rows[6]["country"]) == (None, "de")  # v4 files have no n_tx: a null column
    assert rows[0]["ts"] == T0

    # [13:30, 14:30): the boundary row at 14:30 is out, 13:00 is out; only two hours are even listed
    start, end = T0 + timedelta(minutes=30), T0 + timedelta(minutes=90)
    assert [r["request_id"] for r in _rows(reader, "fraud", start, end, ["amount"])] == ["a1", "a1", "a2", "a2"]
    assert {Path(f).parent.name for f in reader.files("fraud", start, end)} == {"hour=13", "hour=14"}
    assert reader.files("fraud", T0 + timedelta(hours=2), T0 + timedelta(hours=2, minutes=1)) == sorted(
        str(p) for p in root.glob("model=fraud/date=2026-11-22/hour=15/*.parquet")
    )
    assert reader.count("fraud", start, end) == 4
    assert reader.count("fraud", T0, T0 + timedelta(days=1)) == 9
    assert reader.count("churn", T0, T0 + timedelta(days=1)) == 6
    assert [r["amount"] for r in _rows(reader, "churn", T0, T0 + timedelta(days=1), ["amount"])] == [9.0] * 6

    # nothing logged: no batches (the caller words the error)
    assert list(reader.scan("fraud", T0 - timedelta(days=3), T0, ["amount"])) == []
    assert list(reader.scan("nope", T0, T0 + timedelta(days=1), ["amount"])) == []
    assert list(ParquetPredictionLog(tmp_path / "missing").scan("fraud", T0, T0 + timedelta(days=1), ["x"])) == []
    assert ParquetPredictionLog(f"file://{root}").count("fraud", T0, T0 + timedelta(days=1)) == 9
    with pytest.raises(MonitoringError, match=r"\['row'\] clash"):
        list(reader.scan("fraud", T0, T0 + timedelta(days=1), ["row"]))


def test_replicas_never_collide_on_one_volume(tmp_path):
    records = [(T0.timestamp(), "r", V3, [{"amount": 1.0, "n_tx": 1}], [0.5])]
    for pod in ("ct-gw-7d9-abcde", "ct-gw-7d9-fghij"):
        _write(PredictionLog(tmp_path, writer=pod), records)
    names = sorted(p.name for p in tmp_path.rglob("*.parquet"))
    assert len(names) == 2 and "ct-gw-7d9-abcde" in names[0] and "ct-gw-7d9-fghij" in names[1]
    assert ParquetPredictionLog(tmp_path).count("fraud", T0, T0 + timedelta(hours=1)) == 2


# ------------------------------------------------------------------------------------------- memory

_SCAN = textwrap.dedent(
    """
    import json, resource, sys
    from datetime import datetime, UTC
    import pyarrow as pa
    from ct_pipeline.adapters.prediction_log import ParquetPredictionLog

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024

    root, features = sys.argv[1], json.loads(sys.argv[2])
    reader = ParquetPredictionLog(root)
    list(reader.scan("big", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 1, tzinfo=UTC), features))
    before = rss()
    rows = batches = 0
    total = 0.0
    for batch in reader.scan("big", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), features):
        rows += batch.num_rows
        batches += 1
        total += pa.compute.sum(batch.column("f0")).as_py() or 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    arrow_peak = pa.default_memory_pool().max_memory()  # what Arrow held at most, whatever the allocator kept
    print(json.dumps({"rows": rows, "batches": batches, "before": before, "peak": peak, "total": total,
                      "arrow_peak": arrow_peak}))
    """
)


def test_scanning_millions_of_rows_keeps_memory_bounded(tmp_path):
    """5M logged rows (~0.6 GB as Arrow columns) stream through the reader in batches; the scanning process
    grows by a bounded amount, far below what materializing the window would take."""
    import numpy as np

    n_files, per_file, n_features = 40, 125_000, 12
    features = [f"f{i}" for i in range(n_features)]
    rng = np.random.default_rng(7)
    start_us = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    t0 = time.monotonic()
    total = 0.0
    for i in range(n_files):
        hour = i % 24
        day = 1 + i // 24
        ts = start_us + ((day - 1) * 24 + hour) * 3_600_000_000 + np.sort(rng.integers(0, 3_600_000_000, per_file))
        values = [rng.normal(size=per_file) for _ in features]
        total += float(values[0].sum())
        table = pa.table(
            {
                "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "request_id": pa.compute.cast(pa.array(np.arange(per_file) + i * per_file), pa.string()),
                "row": pa.array(np.zeros(per_file, dtype=np.int32)),
                "model": pa.array(["big"] * per_file),
                "version": pa.array(["1"] * per_file),
                "run_id": pa.array(["r"] * per_file),
                "data_hash": pa.nulls(per_file, pa.string()),
                "image_digest": pa.nulls(per_file, pa.string()),
                "prediction": pa.array(rng.random(per_file)),
                "features": pa.StructArray.from_arrays([pa.array(v) for v in values], names=features),
            }
        )
        folder = tmp_path / "model=big" / f"date=2026-01-{day:02d}" / f"hour={hour:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"v1-000000-gw-1-{i}.parquet", row_group_size=25_000, compression="zstd")
    rows = n_files * per_file
    arrow_bytes = rows * (8 + 8 + 4 + 8 + 8 * n_features)  # ts, request id (>= 8), row, prediction, features
    res = subprocess.run(
        [sys.executable, "-c", _SCAN, str(tmp_path), json.dumps(features)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rows"] == rows and out["batches"] >= rows // 65_536
    assert out["total"] == pytest.approx(total)  # every row read, once
    growth = out["peak"] - out["before"]
    print(
        f"scan: Arrow pool peak {out['arrow_peak'] / 1e6:.0f} MB, RSS growth {growth / 1e6:.0f} MB, "
        f"rows {arrow_bytes / 1e6:.0f} MB"
    )
    assert arrow_bytes > 500e6
    # Arrow's own peak is the bound that matters (mimalloc may keep freed pages, so RSS is noisier under load)
    assert out["arrow_peak"] < 150e6, (
        f"Arrow held {out['arrow_peak'] / 1e6:.0f} MB at once for {arrow_bytes / 1e6:.0f} MB"
    )
    assert growth < arrow_bytes, f"scan grew RSS by {growth / 1e6:.0f} MB for {arrow_bytes / 1e6:.0f} MB of rows"
    assert time.monotonic() - t0 < 60


# ------------------------------------------------------------------------------------------- S3 (moto)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 endpoint over HTTP (moto's server) with a bucket, and the AWS variables pointing at it."""
    from moto.server import ThreadedMotoServer

    port = free_tcp_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(key, value)
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(var, raising=False)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="ct-logs")
        try:
            yield client
        finally:
            server.stop()


def _keys(client, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="ct-logs", Prefix=prefix).get("Contents", []))


def test_s3_log_objects_appear_only_complete_and_read_back_equal(s3, tmp_path):
    records = _records()
    log = PredictionLog(
        "s3://ct-logs/predlog", flush_interval=0.05, roll_seconds=3600, writer="gw-s3", spool_dir=tmp_path / "spool"
    )
    assert log.directory is None and log.root == "ct-logs/predlog"
    now = time.time()

    async def main():
        log.start()
        log.record(now, "now", V3, [{"amount": 5.0, "n_tx": 5}], [0.5])
        await log.flush()  # written into an open part of the current hour: nothing closed yet
        assert log.written_rows == 0 and len(list((tmp_path / "spool").iterdir())) == 1
        assert _keys(s3) == []  # no partial object is ever visible
        for record in records:
            log.record(*record)
        await log.close()

    asyncio.run(main())
    assert log.written_rows == 16 and log.dropped_rows == 0 and log.last_error is None
    keys = _keys(s3)
    assert keys and all(k.startswith("predlog/model=") and k.endswith(".parquet") and "gw-s3" in k for k in keys)
    assert list((tmp_path / "spool").iterdir()) == []  # uploaded spool files are removed

    reader = ParquetPredictionLog("s3://ct-logs/predlog")
    got = _rows(reader, "fraud", T0, T0 + timedelta(days=1), ["amount", "n_tx", "country"])
    local = tmp_path / "local"
    _write(PredictionLog(local, writer="gw-s3"), records)
    want = _rows(ParquetPredictionLog(local), "fraud", T0, T0 + timedelta(days=1), ["amount", "n_tx", "country"])
    assert got == want and len(got) == 9
    assert reader.count("churn", T0, T0 + timedelta(days=1)) == 6
    assert list(reader.scan("fraud", T0 - timedelta(days=2), T0, ["amount"])) == []
    assert list(ParquetPredictionLog("s3://ct-logs/elsewhere").scan("fraud", T0, T0 + timedelta(days=1), [])) == []


def test_s3_upload_failure_is_retried_then_counted(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_tcp_port()}")  # nobody listens there
    log = PredictionLog("s3://ct-logs/retry", writer="gw-r", spool_dir=tmp_path, max_upload_attempts=2)
    dropped: list[int] = []
    log.on_dropped = dropped.append

    async def main():
        log.start()
        log.record(T0.timestamp(), "x", V3, [{"amount": 1.0, "n_tx": 1}], [0.5])
        await log.flush(close_all=True)
        assert len(log._uploads) == 1 and log.last_error and dropped == []  # kept for a retry
        await log.flush(close_all=True)

    asyncio.run(main())
    assert dropped == [1] and log.dropped_rows == 1 and log.written_rows == 0
    assert list(tmp_path.iterdir()) == [] and _keys(s3, "retry/") == []


def test_gateway_writes_its_log_to_s3(s3):
    """The gateway configured with CT_GATEWAY_PREDICTION_LOG_URI=s3://... (a fake model server behind it)."""
    features = ["amount", "n_tx"]

    def model_server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metadata":
            meta = {"model": "gw-s3", "version": "7", "run_id": "r7", "features": features,
                    "feature_dtypes": {"amount": "double", "n_tx": "long"}}  # fmt: skip
            return httpx.Response(200, json=meta)
        if request.url.path == "/predict":
            return httpx.Response(200, json=[r["amount"] / 10 for r in json.loads(request.content)["rows"]])
        return httpx.Response(200, text="ok")

    settings = GatewaySettings(
        upstream_url="http://model:3000",
        prediction_log_uri="s3://ct-logs/gateway",
        prediction_log_dir="/nonexistent/ignored",
        prediction_log_writer="ct-gw-pod-1",
        prediction_log_flush_interval=0.05,
    )
    sent = [{"amount": float(i), "n_tx": i} for i in range(5)]
    start = datetime.now(UTC) - timedelta(minutes=1)
    with TestClient(create_app(settings, transport=httpx.MockTransport(model_server))) as c:
        for i, row in enumerate(sent):
            assert c.post("/predict", json={"rows": [row]}, headers={"X-Request-Id": f"q{i}"}).status_code == 200
    end = datetime.now(UTC) + timedelta(minutes=1)
    assert all("ct-gw-pod-1" in k for k in _keys(s3, "gateway/"))
    rows = _rows(ParquetPredictionLog("s3://ct-logs/gateway"), "gw-s3", start, end, features)
    assert [(r["request_id"], r["amount"], r["n_tx"], r["prediction"], r["version"]) for r in rows] == [
        (f"q{i}", float(i), i, i / 10, "7") for i in range(5)
    ]
    assert not Path("/nonexistent/ignored").exists()
