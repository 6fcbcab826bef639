"""The real gateway in front of the real BentoML model server, as processes started with the commands the
local runtime (ct_pipeline.adapters.local_runtime) uses: valid and invalid payloads, lineage, micro-batching,
metrics, the prediction log, and the model server going down (503 with a clear body) and coming back (the
gateway recovers by itself).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ct_pipeline.adapters.local_runtime import LocalRuntime, stop_process_group
from ct_pipeline.settings import load_settings
from tests.support.factories import (
    FEATURES,
    frame,
    free_tcp_port,
    make_decision,
    make_spec,
    register_model,
    shared_bento_home,
)

SERVING_DIR = Path(__file__).resolve().parents[2] / "serving"

pytestmark = pytest.mark.integration

MODEL = "gw-integration"
IMAGE_DIGEST = "sha256:" + "5e" * 32


def _wait(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url}: process exited {proc.returncode}\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s\n{log.read_text()[-3000:]}")


class Stack:
    def __init__(self, tmp: Path, bento_tag: str, env: dict[str, str]) -> None:
        self.tmp, self.bento_tag, self.env = tmp, bento_tag, env
        self.server_port, self.gateway_port = free_tcp_port(), free_tcp_port()
        self.server_url = f"http://127.0.0.1:{self.server_port}"
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self.predictions_dir = tmp / "predictions"
        self.server: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None

    def _spawn(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def start_server(self) -> None:
        # the command LocalRuntime._start_model_server runs; the image digest a deployment would set
        cmd = [sys.executable, "-m", "bentoml", "serve", self.bento_tag, "--host", "127.0.0.1", "--port",
               str(self.server_port)]  # fmt: skip
        log = self.tmp / "model-server.log"
        self.server = self._spawn(cmd, {**self.env, "CT_IMAGE_DIGEST": IMAGE_DIGEST}, log)
        _wait(f"{self.server_url}/readyz", 180, self.server, log)

    def stop_server(self) -> None:
        assert self.server is not None
        stop_process_group(self.server.pid, LocalRuntime.MODEL_SERVER_MARK, timeout=20)
        self.server.wait(10)

    def start_gateway(self) -> None:
        # the command LocalRuntime._start_gateway runs
        cmd = [sys.executable, "-m", "uvicorn", LocalRuntime.GATEWAY_MARK, "--app-dir", str(SERVING_DIR),
               "--host", "127.0.0.1", "--port", str(self.gateway_port), "--no-access-log",
               "--timeout-graceful-shutdown", "10"]  # fmt: skip
        env = {
            **self.env,
            "CT_GATEWAY_UPSTREAM_URL": self.server_url,
            "CT_GATEWAY_MAX_ROWS": "50",
            "CT_GATEWAY_MAX_BODY_BYTES": "65536",
            "CT_GATEWAY_RETRIES": "1",
            "CT_GATEWAY_RETRY_BACKOFF": "0.05",
            "CT_GATEWAY_BREAKER_FAILURES": "3",
            "CT_GATEWAY_BREAKER_RESET": "1",
            "CT_GATEWAY_PREDICTION_LOG_DIR": str(self.predictions_dir),
            "CT_GATEWAY_PREDICTION_LOG_FLUSH_INTERVAL": "0.2",
            "CT_GATEWAY_PREDICTION_LOG_ROLL_SECONDS": "1",
        }
        log = self.tmp / "gateway.log"
        self.gateway = self._spawn(cmd, env, log)
        _wait(f"{self.url}/readyz", 60, self.gateway, log)

    def stop(self) -> None:
        for proc, mark in ((self.gateway, LocalRuntime.GATEWAY_MARK), (self.server, LocalRuntime.MODEL_SERVER_MARK)):
            if proc is not None and proc.poll() is None:
                stop_process_group(proc.pid, mark, timeout=20)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-integration")
    bento_home = shared_bento_home(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTPIPE_HOME", str(tmp / "ctpipe"))
        for var in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "CTPIPE_GITOPS_REMOTE", "CTPIPE_DATA_DIR"):
            mp.delenv(var, raising=False)
        settings = load_settings(paths={"bentoml_home": bento_home})
        settings.paths.home_dir.mkdir(parents=True, exist_ok=True)
        mp.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
        mp.setenv("BENTOML_HOME", str(settings.paths.bento_home))
        mp.setenv("BENTOML_DO_NOT_TRACK", "true")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from ct_pipeline.adapters.bento import build_bento

        spec = make_spec(name=MODEL)
        version, run_id, model = register_model(MODEL)
        bento = build_bento(spec, make_decision(MODEL, version, run_id), settings)
        s = Stack(tmp, bento.bento_tag, {**os.environ})
        try:
            s.start_server()
            s.start_gateway()
            yield s, bento, model
        finally:
            s.stop()


def rows(n: int, seed: int = 5) -> list[dict]:
    x, _ = frame(n, seed=seed)
    return x.to_dict(orient="records")


def expected(model, sample: list[dict]) -> list[float]:
    import pandas as pd

    return list(model.predict_proba(pd.DataFrame(sample)[FEATURES])[:, 1])


def test_valid_payload_with_lineage(stack):
    s, bento, model = stack
    sample = rows(4)
    resp = httpx.post(f"{s.url}/predict", json={"rows": sample}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["predictions"] == pytest.approx(expected(model, sample), abs=1e-9)
    lineage = (body["model"], body["version"], body["run_id"], body["data_hash"], body["image_digest"])
    assert lineage == (MODEL, bento.version, bento.run_id, bento.data_hash, IMAGE_DIGEST)
    h = resp.headers
    assert (h["X-Model-Name"], h["X-Model-Version"], h["X-Model-Run-Id"]) == (MODEL, bento.version, bento.run_id)
    assert h["X-Model-Image-Digest"] == IMAGE_DIGEST and h["X-Request-Id"]


@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (lambda r: r.pop("n_tx"), ["body", "rows", 0, "n_tx"]),
        (lambda r: r.update(amount="12.5"), ["body", "rows", 0, "amount"]),
        (lambda r: r.update(amount=None), ["body", "rows", 0, "amount"]),
        (lambda r: r.update(n_tx=2.5), ["body", "rows", 0, "n_tx"]),
        (lambda r: r.update(surprise=1), ["body", "rows", 0, "surprise"]),
    ],
)
def test_invalid_rows_are_422_naming_the_field(stack, mutate, loc):
    s, _, _ = stack
    bad = rows(1)[0]
    mutate(bad)
    resp = httpx.post(f"{s.url}/predict", json={"rows": [bad]}, timeout=30)
    assert resp.status_code == 422, resp.text
    assert [e["loc"] for e in resp.json()["detail"]] == [loc]


def test_invalid_bodies_are_4xx(stack):
    s, _, _ = stack
    post = lambda **kw: httpx.post(f"{s.url}/predict", timeout=30, **kw)  # noqa: E731
    assert post(content=b"{nope", headers={"content-type": "application/json"}).status_code == 422
    assert post(json={"rows": []}).status_code == 422
    too_many = post(json={"rows": rows(51)})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "rows"]
    too_big = post(json={"rows": rows(1), "pad": "x" * 70_000})
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"


def test_concurrent_single_row_requests_are_batched(stack):
    s, _, model = stack
    sample = rows(64, seed=9)

    async def main():
        async with httpx.AsyncClient(base_url=s.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", json={"rows": [r]}) for r in sample))

    before = _metric(s.url, "ct_gateway_batch_rows_count")
    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * 64
    got = [a.json()["predictions"][0] for a in answers]
    assert got == pytest.approx(expected(model, sample), abs=1e-9), "every request gets its own row's score"
    calls = _metric(s.url, "ct_gateway_batch_rows_count") - before
    assert 1 <= calls < 64, f"{calls} model-server calls for 64 concurrent requests"


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_health_metrics_and_docs(stack):
    s, bento, _ = stack
    assert httpx.get(f"{s.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{s.url}/readyz").json()
    assert ready["status"] == "ready" and ready["version"] == bento.version
    text = httpx.get(f"{s.url}/metrics").text
    assert 'ct_gateway_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'ct_gateway_requests_total{endpoint="/predict",method="POST",status="422"}' in text
    assert 'ct_gateway_request_duration_seconds_bucket{endpoint="/predict"' in text
    assert "ct_gateway_batch_rows_bucket" in text and "ct_gateway_batch_requests_bucket" in text
    assert f'ct_gateway_model_info{{model="{MODEL}",run_id="{bento.run_id}"' in text
    assert f'ct_gateway_model_image_info{{image_digest="{IMAGE_DIGEST}",model="{MODEL}"' in text
    assert f'ct_gateway_predicted_rows_total{{model="{MODEL}",version="{bento.version}"}}' in text
    spec = httpx.get(f"{s.url}/openapi.json").json()
    assert spec["components"]["schemas"]["Row"]["required"] == FEATURES
    assert httpx.get(f"{s.url}/docs").status_code == 200
    meta = httpx.get(f"{s.url}/metadata").json()
    assert meta["image_digest"] == IMAGE_DIGEST and meta["upstream"] == s.server_url


def test_prediction_log_written(stack):
    import pyarrow.dataset as ds

    s, bento, _ = stack
    sample = rows(3, seed=21)
    resp = httpx.post(f"{s.url}/predict", json={"rows": sample}, headers={"X-Request-Id": "log-me"}, timeout=30)
    assert resp.status_code == 200
    deadline = time.monotonic() + 20
    logged: list[dict] = []
    while time.monotonic() < deadline:  # flushed every 0.2 s, files closed after 1 s
        files = list(s.predictions_dir.rglob("*.parquet"))
        if files:
            table = ds.dataset(files, format="parquet").to_table().to_pylist()
            logged = [r for r in table if r["request_id"] == "log-me"]
            if len(logged) == 3:
                break
        time.sleep(0.3)
    assert len(logged) == 3, f"prediction log under {s.predictions_dir}: {list(s.predictions_dir.rglob('*'))}"
    logged.sort(key=lambda r: r["row"])
    assert [r["prediction"] for r in logged] == pytest.approx(resp.json()["predictions"], abs=1e-12)
    assert logged[0]["features"] == pytest.approx(sample[0])
    assert (logged[0]["model"], logged[0]["version"], logged[0]["run_id"]) == (MODEL, bento.version, bento.run_id)
    assert logged[0]["image_digest"] == IMAGE_DIGEST
    assert all(f.relative_to(s.predictions_dir).parts[0] == f"model={MODEL}" for f in files)


def test_model_server_down_then_back(stack):
    """Runs last: stops the model server, checks the 503s, starts it again on the same port."""
    s, bento, model = stack
    sample = rows(2, seed=33)
    s.stop_server()
    resp = httpx.post(f"{s.url}/predict", json={"rows": sample}, timeout=30)
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert (
        body["error"] == "upstream_unavailable" and s.server_url in body["detail"] and body["upstream"] == s.server_url
    )
    assert resp.headers["X-Model-Version"] == bento.version and "Retry-After" in resp.headers
    ready = httpx.get(f"{s.url}/readyz")
    assert ready.status_code == 503 and ready.json()["error"] == "upstream_unavailable"
    for _ in range(3):  # the circuit opens: answers come at once, without trying the dead server
        httpx.post(f"{s.url}/predict", json={"rows": sample}, timeout=30)
    t0 = time.monotonic()
    fast = httpx.post(f"{s.url}/predict", json={"rows": sample}, timeout=30)
    assert fast.status_code == 503 and "circuit open" in fast.json()["detail"]
    assert time.monotonic() - t0 < 1.0
    assert httpx.get(f"{s.url}/healthz").status_code == 200, "the gateway itself stays alive"

    s.start_server()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        resp = httpx.post(f"{s.url}/predict", json={"rows": sample}, timeout=30)
        if resp.status_code == 200:
            break
        assert resp.status_code == 503, resp.text
        time.sleep(0.3)
    assert resp.status_code == 200, f"the gateway did not recover: {resp.text}"
    assert resp.json()["predictions"] == pytest.approx(expected(model, sample), abs=1e-9)
    assert httpx.get(f"{s.url}/readyz").status_code == 200
