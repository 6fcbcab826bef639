"""Gateway unit tests: schema generation from upstream metadata, 422s, 503s, swaps, metrics, micro-batching,
retries and the circuit breaker, the prediction log.

The model server is faked with httpx.MockTransport (unit tests only; test_gateway_integration.py and
test_rollout.py run the real bentoml server behind the real gateway).
"""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from gateway.routes import create_app
from gateway.schema import UpstreamMetadata, build_request_model
from gateway.settings import GatewaySettings

FEATURES = ["amount", "n_tx", "age-days", "model_config"]
DTYPES = {"amount": "double", "n_tx": "long", "age-days": "float", "model_config": "double"}


def fake_model_server(version: str = "3", *, down: set[str] | None = None, calls: list | None = None):
    """Handler for httpx.MockTransport: one fake model server per host (host 'down' refuses connections)."""
    down = down if down is not None else set()

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in down:
            raise httpx.ConnectError("connection refused", request=request)
        ver = version if host == "model-a" else f"{version}-{host}"
        if calls is not None:
            calls.append((host, request.url.path))
        if request.url.path == "/metadata":
            return httpx.Response(
                200,
                json={
                    "model": "fraud-detector",
                    "version": ver,
                    "run_id": "r" * 32,
                    "data_hash": "sha256:abc",
                    "image_digest": "sha256:" + "1" * 64,
                    "task": "binary_classification",
                    "features": FEATURES,
                    "feature_dtypes": DTYPES,
                },
            )
        if request.url.path == "/readyz":
            return httpx.Response(200, text="ok")
        if request.url.path == "/predict":
            rows = json.loads(request.content)["rows"]
            assert all(set(r) == set(FEATURES) for r in rows)
            return httpx.Response(200, json=[0.25 + 0.5 * (r["amount"] > 0) for r in rows])
        return httpx.Response(404)

    return handler


@pytest.fixture
def down() -> set[str]:
    return set()


@pytest.fixture
def client(down):
    settings = GatewaySettings(upstream_url="http://model-a:3700", admin_token="s3cret", max_rows=5)
    app = create_app(settings, transport=httpx.MockTransport(fake_model_server(down=down)))
    with TestClient(app) as c:
        yield c


def row(**overrides):
    base = {"amount": 1.5, "n_tx": 3, "age-days": 0.2, "model_config": 0.0}
    base.update(overrides)
    return base


def test_schema_from_metadata():
    meta = UpstreamMetadata(model="m", version=2, features=FEATURES, feature_dtypes=DTYPES)
    model = build_request_model(meta, max_rows=10)
    ok = model.model_validate({"rows": [row(n_tx=4.0)]})
    assert ok.rows[0] == row(n_tx=4) and type(ok.rows[0]["n_tx"]) is int  # plain dicts, ready to forward
    assert model.model_validate_json(json.dumps({"rows": [row()]})).rows == [row()]
    schema = model.model_json_schema()
    row_schema = schema["$defs"]["Row"]
    assert row_schema["required"] == FEATURES and row_schema["additionalProperties"] is False
    assert schema["properties"]["rows"]["maxItems"] == 10 and schema["properties"]["rows"]["minItems"] == 1
    assert meta.version == "2"


def test_gateway_and_model_service_share_one_request_contract():
    """Both sides validate with ct_contract's types and agree on the body's key and the batch size."""
    import ast
    from pathlib import Path

    import ct_contract
    from gateway import schema

    assert schema.FIELD_TYPES is ct_contract.FIELD_TYPES
    assert set(ct_contract.NUMPY_DTYPES) == set(ct_contract.FIELD_TYPES)
    meta = UpstreamMetadata(model="m", version="1", features=FEATURES, feature_dtypes=DTYPES)
    assert list(build_request_model(meta, max_rows=1).model_fields) == [ct_contract.ROWS_FIELD]
    assert GatewaySettings().batch_max_rows == ct_contract.MAX_BATCH_ROWS
    # the model service (BentoML maps the body's keys to the API's parameters; not imported here: it loads a model)
    service = Path(ct_contract.__file__).parent / "model_service" / "service.py"
    tree = ast.parse(service.read_text())
    predict = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "predict")
    assert [a.arg for a in predict.args.args] == ["self", ct_contract.ROWS_FIELD]
    imported = {
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "ct_contract" for a in n.names
    }
    assert {"FIELD_TYPES", "NUMPY_DTYPES", "MAX_BATCH_ROWS"} <= imported


def test_unknown_dtype_rejected():
    with pytest.raises(ValueError, match="unsupported feature dtypes"):
        build_request_model(
            UpstreamMetadata(model="m", version="1", features=["a"], feature_dtypes={"a": "binary"}),
            max_rows=1,
        )


def test_predict_ok(client):
    resp = client.post("/predict", json={"rows": [row(), row(amount=-2)]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body == {
        "model": "fraud-detector",
        "version": "3",
        "run_id": "r" * 32,
        "data_hash": "sha256:abc",
        "image_digest": "sha256:" + "1" * 64,
        "predictions": [0.75, 0.25],
    }
    assert resp.headers["X-Model-Name"] == "fraud-detector" and resp.headers["X-Model-Version"] == "3"
    assert resp.headers["X-Model-Run-Id"] == "r" * 32
    assert resp.headers["X-Model-Image-Digest"] == "sha256:" + "1" * 64
    assert resp.headers["X-Model-Data-Hash"] == "sha256:abc"
    assert resp.headers["X-Request-Id"]
    given = client.post("/predict", json={"rows": [row()]}, headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"


def _locs(resp) -> list[list]:
    assert resp.status_code == 422, resp.text
    return [e["loc"] for e in resp.json()["detail"]]


def test_missing_feature_is_422_naming_it(client):
    bad = row()
    del bad["age-days"]
    resp = client.post("/predict", json={"rows": [row(), bad]})
    assert _locs(resp) == [["body", "rows", 1, "age-days"]]
    assert resp.json()["detail"][0]["type"] == "missing"


@pytest.mark.parametrize("value", ["1.5", True, None, [1.0], {"x": 1}])
def test_wrong_type_is_422(client, value):
    resp = client.post("/predict", json={"rows": [row(amount=value)]})
    assert _locs(resp) == [["body", "rows", 0, "amount"]]


def test_fractional_integer_is_422(client):
    resp = client.post("/predict", json={"rows": [row(n_tx=2.5)]})
    assert _locs(resp) == [["body", "rows", 0, "n_tx"]]
    assert "whole number" in resp.json()["detail"][0]["msg"]


def test_extra_field_is_422(client):
    resp = client.post("/predict", json={"rows": [row(surprise=1.0)]})
    assert _locs(resp) == [["body", "rows", 0, "surprise"]]
    assert resp.json()["detail"][0]["type"] == "extra_forbidden"
    resp = client.post("/predict", json={"rows": [row()], "debug": True})
    assert _locs(resp) == [["body", "debug"]]


def test_row_count_limits_are_422(client):
    assert _locs(client.post("/predict", json={"rows": [row()] * 6})) == [["body", "rows"]]
    assert _locs(client.post("/predict", json={"rows": []})) == [["body", "rows"]]
    assert _locs(client.post("/predict", json={})) == [["body", "rows"]]


def test_malformed_bodies_are_422(client):
    resp = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert _locs(resp) == [["body"]]
    assert _locs(client.post("/predict", json=[row()])) == [["body"]]
    assert _locs(client.post("/predict", json={"rows": "all"})) == [["body", "rows"]]


def test_upstream_down_is_503(client, down):
    down.add("model-a")
    resp = client.post("/predict", json={"rows": [row()]})
    assert resp.status_code == 503
    assert resp.json()["error"] == "upstream_unavailable" and "model-a" in resp.json()["detail"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_not_ready_until_metadata_loads(down):
    down.add("model-a")
    settings = GatewaySettings(upstream_url="http://model-a:3700", metadata_retry_interval=0.05)
    app = create_app(settings, transport=httpx.MockTransport(fake_model_server(down=down)))
    with TestClient(app) as c:
        resp = c.get("/readyz")
        assert resp.status_code == 503 and "cannot load model metadata" in resp.json()["detail"]
        assert c.post("/predict", json={"rows": [row()]}).status_code == 503
        # Client mistakes are still never 5xx-ed as something else: body is checked after readiness.
        down.clear()
        for _ in range(100):
            if c.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        assert c.get("/readyz").json()["version"] == "3"
        assert c.post("/predict", json={"rows": [row()]}).status_code == 200


def test_admin_swap(client, down):
    assert client.put("/admin/upstream", json={"url": "http://model-b:3701"}).status_code == 401
    bad_auth = {"Authorization": "Bearer nope"}
    assert client.put("/admin/upstream", json={"url": "http://model-b:3701"}, headers=bad_auth).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert client.put("/admin/upstream", json={"url": "ftp://x"}, headers=auth).status_code == 422

    down.add("model-c")  # an unusable new upstream leaves the current one in place
    resp = client.put("/admin/upstream", json={"url": "http://model-c:3702"}, headers=auth)
    assert resp.status_code == 502 and resp.json()["error"] == "upstream_unusable"
    assert client.post("/predict", json={"rows": [row()]}).json()["version"] == "3"

    resp = client.put("/admin/upstream", json={"url": "http://model-b:3701"}, headers=auth)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "upstream": "http://model-b:3701",
        "model": "fraud-detector",
        "version": "3-model-b",
        "previous": {"upstream": "http://model-a:3700", "version": "3"},
        "drained": True,
    }
    resp = client.post("/predict", json={"rows": [row()]})
    assert resp.json()["version"] == "3-model-b" and resp.headers["X-Model-Version"] == "3-model-b"
    assert client.get("/metadata").json()["upstream"] == "http://model-b:3701"


def test_metrics_and_openapi(client):
    client.post("/predict", json={"rows": [row()]})
    client.post("/predict", json={"rows": []})
    text = client.get("/metrics").text
    assert 'ct_gateway_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert 'ct_gateway_requests_total{endpoint="/predict",method="POST",status="422"} 1.0' in text
    assert "ct_gateway_request_duration_seconds_bucket" in text
    assert 'ct_gateway_model_info{model="fraud-detector",run_id="' + "r" * 32 in text
    assert 'ct_gateway_model_image_info{image_digest="sha256:' + "1" * 64 + '",model="fraud-detector"' in text
    assert 'ct_gateway_batch_rows_bucket{le="1.0"}' in text and "ct_gateway_circuit_state 0.0" in text
    assert 'ct_gateway_upstream_calls_total{outcome="ok"} 1.0' in text
    assert 'ct_gateway_predicted_rows_total{model="fraud-detector",version="3"} 1.0' in text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["rows"]["maxItems"] == 5
    assert spec["components"]["schemas"]["Row"]["required"] == FEATURES


@pytest.mark.parametrize(
    ("value", "ok"), [(True, True), (0, True), (1.0, True), (2, False), ("true", False), (None, False)]
)
def test_boolean_features(value, ok):
    meta = UpstreamMetadata(model="m", version="1", features=["flag"], feature_dtypes={"flag": "boolean"})
    model = build_request_model(meta, max_rows=1)
    if ok:
        assert model.model_validate({"rows": [{"flag": value}]}).rows[0] == {"flag": bool(value)}
    else:
        with pytest.raises(ValueError, match="boolean"):
            model.model_validate({"rows": [{"flag": value}]})


def test_swap_waits_for_requests_in_flight_on_the_old_upstream():
    """The swap answers only after the old upstream drained; new requests already go to the new one."""
    import asyncio

    async def main():
        gate = asyncio.Event()
        fake = fake_model_server()

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/predict" and request.url.host == "model-a":
                await gate.wait()  # a slow request in flight on the old model server
            return fake(request)

        settings = GatewaySettings(upstream_url="http://model-a:3700", admin_token="s3cret")
        app = create_app(settings, transport=httpx.MockTransport(handler))
        await app.state.gateway.connect_initial(attempts=1)
        auth = {"Authorization": "Bearer s3cret"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            slow = asyncio.create_task(c.post("/predict", json={"rows": [row()]}))
            await asyncio.sleep(0.05)
            swap = asyncio.create_task(c.put("/admin/upstream", json={"url": "http://model-b:3701"}, headers=auth))
            await asyncio.sleep(0.1)
            assert not swap.done(), "the swap must wait for the in-flight request"
            fresh = await c.post("/predict", json={"rows": [row()]})
            assert fresh.json()["version"] == "3-model-b"
            gate.set()
            assert (await slow).json()["version"] == "3"
            done = await swap
            assert done.status_code == 200 and done.json()["drained"] is True
        await app.state.gateway.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# Micro-batching, retries, circuit breaker, limits, prediction log


def _app(handler, **overrides):
    settings = GatewaySettings(upstream_url="http://model-a:3700", **overrides)
    return create_app(settings, transport=httpx.MockTransport(handler))


def test_concurrent_requests_are_micro_batched():
    import asyncio

    calls: list[int] = []
    fake = fake_model_server()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/predict":
            calls.append(len(json.loads(request.content)["rows"]))
            await asyncio.sleep(0.02)  # a model-server call takes a while: requests pile up meanwhile
        return fake(request)

    async def main():
        app = _app(handler, batch_max_inflight=1, batch_max_rows=16)
        await app.state.gateway.connect_initial(attempts=1)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            amounts = [(-1) ** i * (i + 1) for i in range(40)]
            answers = await asyncio.gather(*(c.post("/predict", json={"rows": [row(amount=a)]}) for a in amounts))
            metrics = (await c.get("/metrics")).text
        await app.state.gateway.close()
        return amounts, answers, metrics

    amounts, answers, metrics = asyncio.run(main())
    assert all(a.status_code == 200 for a in answers)
    # every request gets its own row's score back, whatever call it travelled in
    assert [a.json()["predictions"] for a in answers] == [[0.75 if x > 0 else 0.25] for x in amounts]
    assert sum(calls) == 40 and len(calls) < 10 and max(calls) <= 16, calls
    assert f"ct_gateway_batch_rows_count {float(len(calls))}" in metrics
    assert "ct_gateway_batch_requests_sum 40.0" in metrics


def test_retries_on_503_then_succeeds():
    fake = fake_model_server()
    answers = iter([503, 503])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/predict":
            status = next(answers, 200)
            if status != 200:
                return httpx.Response(status, json={"error": "process is overloaded"})
        return fake(request)

    with TestClient(_app(handler, retry_backoff=0.01)) as c:
        resp = c.post("/predict", json={"rows": [row()]})
        assert resp.status_code == 200, resp.text
        assert 'ct_gateway_upstream_retries_total{reason="status_503"} 2.0' in c.get("/metrics").text


def test_overloaded_after_retries_is_503_with_retry_after():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/predict":
            return httpx.Response(503, json={"error": "process is overloaded"})
        return fake_model_server()(request)

    with TestClient(_app(handler, retry_backoff=0.01, retries=1)) as c:
        resp = c.post("/predict", json={"rows": [row()]})
        assert resp.status_code == 503 and resp.json()["error"] == "upstream_overloaded"
        assert "process is overloaded" in resp.json()["detail"] and resp.headers["Retry-After"] == "1"
        assert resp.headers["X-Model-Version"] == "3"  # lineage on errors too


def test_circuit_opens_fails_fast_and_recovers(down):
    import time

    calls: list[str] = []
    app = _app(
        fake_model_server(down=down, calls=calls), retries=0, breaker_failures=3, breaker_reset=0.3, batching=False
    )
    with TestClient(app) as c:
        down.add("model-a")
        for _ in range(3):
            resp = c.post("/predict", json={"rows": [row()]})
            assert resp.status_code == 503 and resp.json()["error"] == "upstream_unavailable"
        before = len(calls)
        resp = c.post("/predict", json={"rows": [row()]})
        assert resp.status_code == 503 and "circuit open after 3 consecutive failed calls" in resp.json()["detail"]
        assert "ConnectError" in resp.json()["detail"] and int(resp.headers["Retry-After"]) >= 1
        assert len(calls) == before, "an open circuit does not call the model server"
        assert "ct_gateway_circuit_state 1.0" in c.get("/metrics").text
        down.clear()
        time.sleep(0.35)
        resp = c.post("/predict", json={"rows": [row()]})  # the half-open probe succeeds: closed again
        assert resp.status_code == 200, resp.text
        assert "ct_gateway_circuit_state 0.0" in c.get("/metrics").text
        assert "ct_gateway_circuit_opens_total 1.0" in c.get("/metrics").text


def test_body_size_limit_is_413(client):
    huge = {"rows": [row()], "pad": "x" * 2_000_000}
    resp = client.post("/predict", json=huge)
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"
    chunks = (b" " * 65536 for _ in range(20))  # no content-length: counted while streaming
    resp = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
    assert resp.status_code == 413


@pytest.mark.parametrize(
    ("status", "body", "expect_status", "expect_error"),
    [
        (400, {"error": "1 validation error", "detail": [{"loc": ["rows", 0, "amount"], "msg": "bad"}]}, 422,
         "rejected_by_model_server"),
        (500, {"error": "An unexpected error has occurred"}, 502, "upstream_error"),
        (200, [0.1, 0.2], 502, "upstream_error"),  # two scores for one row
        (200, "not a list", 502, "upstream_error"),
    ],
)  # fmt: skip
def test_model_server_errors_are_mapped(status, body, expect_status, expect_error):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/predict":
            return httpx.Response(status, json=body)
        return fake_model_server()(request)

    with TestClient(_app(handler)) as c:
        resp = c.post("/predict", json={"rows": [row()]})
        assert resp.status_code == expect_status and resp.json()["error"] == expect_error, resp.text
        if expect_status == 422:
            assert resp.json()["detail"][0]["loc"] == ["body", "rows", 0, "amount"]


def test_prediction_log_written_by_the_gateway(tmp_path):
    import pyarrow.dataset as ds

    app = _app(fake_model_server(), prediction_log_dir=str(tmp_path), prediction_log_flush_interval=0.05)
    with TestClient(app) as c:
        for amount in (1.0, -1.0, 2.0):
            resp = c.post("/predict", json={"rows": [row(amount=amount)]}, headers={"X-Request-Id": f"r{amount}"})
            assert resp.status_code == 200
        assert c.post("/predict", json={"rows": [row(), row(amount=-3.0)]}).status_code == 200
    # shutdown flushed and closed the files
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table().to_pylist()
    assert len(table) == 5
    first = sorted(table, key=lambda r: (r["ts"], r["row"]))[0]
    assert first["request_id"] == "r1.0" and first["prediction"] == 0.75 and first["model"] == "fraud-detector"
    assert first["version"] == "3" and first["image_digest"] == "sha256:" + "1" * 64
    assert first["features"] == row(amount=1.0)
    assert list(tmp_path.glob("model=fraud-detector/date=*/hour=*/v3-*.parquet"))


def test_fastapi_route_answers_like_the_fast_path():
    """The documented FastAPI route (reached without the middleware) gives the same answers as the fast path."""
    import asyncio

    async def main():
        answers = []
        for fast_path in (True, False):
            app = _app(fake_model_server())
            if not fast_path:
                app.user_middleware.clear()  # before the first request builds the stack: only the FastAPI route
            await app.state.gateway.connect_initial(attempts=1)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
                ok = await c.post("/predict", json={"rows": [row()]}, headers={"X-Request-Id": "same"})
                bad = await c.post("/predict", json={"rows": [row(amount="x")]}, headers={"X-Request-Id": "same"})
                answers.append([(r.status_code, r.json(), r.headers["X-Model-Version"]) for r in (ok, bad)])
                metrics = (await c.get("/metrics")).text
            assert (
                'ct_gateway_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in metrics
            ) is fast_path
            await app.state.gateway.close()
        return answers

    fast, route = asyncio.run(main())
    assert fast == route and fast[0][0] == 200 and fast[1][0] == 422
