"""LocalRuntime end to end, for real: MLflow sqlite store -> build_bento -> bentoml serve + gateway processes,
HTTP predictions, a version switch under continuous load with zero failed requests, stop_all.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import httpx
import pytest

from ct_pipeline.adapters.local_runtime import (
    NOTHING_DEPLOYED,
    LocalRuntime,
    _descendants,
    _live_members,
    describe,
    pid_alive,
    reconcile,
    resolve_bento,
    status,
    stop_all,
    stop_process_group,
)
from ct_pipeline.domain.records import DeployedModel, ServedState
from ct_pipeline.errors import RolloutError
from ct_pipeline.settings import load_settings
from tests.support.factories import (
    FEATURES,
    frame,
    free_tcp_port,
    make_decision,
    make_spec,
    register_model,
    register_regressor,
    shared_bento_home,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One CTPIPE_HOME for the module (conftest's `settings` style), the session's shared bento store,
    two registered versions of fraud-detector and their bentos."""
    home = tmp_path_factory.mktemp("rollout") / "ctpipe"
    bento_home = shared_bento_home(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTPIPE_HOME", str(home))
        for var in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "CTPIPE_GITOPS_REMOTE", "CTPIPE_DATA_DIR"):
            mp.delenv(var, raising=False)
        settings = load_settings(
            paths={"bentoml_home": bento_home},
            serving={"gateway_port": free_tcp_port(), "model_server_base_port": free_tcp_port()},
        )
        settings.paths.home_dir.mkdir(parents=True, exist_ok=True)
        mp.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
        mp.setenv("BENTOML_HOME", str(settings.paths.bento_home))
        mp.setenv("BENTOML_DO_NOT_TRACK", "true")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

        from ct_pipeline.adapters.bento import build_bento

        spec = make_spec()
        versions = {}
        for seed, c in ((0, 1.0), (1, 0.05)):
            version, run_id, model = register_model(spec.name, seed=seed, C=c)
            bento = build_bento(spec, make_decision(spec.name, version, run_id), settings)
            versions[version] = (bento, model)
        regression = make_spec(name="house-price", task="regression", metric={"name": "rmse"})
        version, run_id, model = register_regressor(regression.name)
        versions["house-price"] = (
            build_bento(regression, make_decision(regression.name, version, run_id), settings),
            model,
        )
        try:
            yield settings, versions
        finally:
            stop_all(settings)


def desired(bento, environment: str = "staging") -> DeployedModel:
    return DeployedModel(
        model=bento.model,
        environment=environment,
        version=bento.version,
        run_id=bento.run_id,
        bento_tag=bento.bento_tag,
        data_hash=bento.data_hash,
    )


def rows(n: int = 5, seed: int = 7) -> list[dict]:
    x, _ = frame(n, seed=seed)
    return x.to_dict(orient="records")


def test_nothing_desired(env):
    settings, _ = env
    assert reconcile(settings, []) == []
    assert describe([]) == NOTHING_DEPLOYED


def test_missing_bento_is_a_clear_error(env):
    settings, versions = env
    bento, _ = versions["1"]
    wanted = desired(bento).model_copy(update={"bento_tag": "fraud-detector:doesnotexist"})
    with pytest.raises(RolloutError, match=r"bento 'fraud-detector:doesnotexist' for fraud-detector v1 is not in"):
        reconcile(settings, [wanted])
    with pytest.raises(RolloutError, match=r"no bento for fraud-detector v7"):
        reconcile(settings, [wanted.model_copy(update={"bento_tag": None, "version": "7"})])
    # a manifest without a bento tag: the bento labelled with the model + version
    assert resolve_bento(settings, desired(bento).model_copy(update={"bento_tag": None})) == bento.bento_tag


def test_serve_v1_through_gateway(env):
    settings, versions = env
    bento, model = versions["1"]
    t0 = time.monotonic()
    [state] = reconcile(settings, [desired(bento)])
    startup = time.monotonic() - t0
    assert isinstance(state, ServedState) and state.action == "started", state
    assert state.version == "1" and state.bento_tag == bento.bento_tag
    assert state.gateway.port == settings.serving.gateway_port and state.gateway.url.startswith("http://127.0.0.1:")
    assert startup < 90

    sample = rows(5)
    resp = httpx.post(f"{state.gateway_url}/predict", json={"rows": sample}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model"], body["version"], body["run_id"]) == ("fraud-detector", "1", bento.run_id)
    assert body["data_hash"] == "sha256:" + "ab" * 32
    assert resp.headers["X-Model-Version"] == "1"
    import pandas as pd

    expected = model.predict_proba(pd.DataFrame(sample)[FEATURES])[:, 1]
    assert body["predictions"] == pytest.approx(list(expected), abs=1e-9)

    # client mistakes through the real stack are 422 naming the field
    bad = dict(sample[0])
    del bad["n_tx"]
    resp = httpx.post(f"{state.gateway_url}/predict", json={"rows": [bad]}, timeout=30)
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "rows", 0, "n_tx"]

    # model server answers directly too (BentoML API), and validates on its own
    direct = httpx.post(f"{state.model_server.url}/predict", json={"rows": sample[:2]}, timeout=30)
    assert direct.json() == pytest.approx(list(expected[:2]), abs=1e-9)
    assert httpx.post(f"{state.model_server.url}/predict", json={"rows": [bad]}, timeout=30).status_code == 400
    assert httpx.get(f"{state.gateway_url}/readyz").status_code == 200
    assert 'ct_gateway_model_info{model="fraud-detector"' in httpx.get(f"{state.gateway_url}/metrics").text

    # already served -> no-op
    [again] = reconcile(settings, [desired(bento)])
    assert again.action == "unchanged" and again.model_server.pid == state.model_server.pid
    [st] = status(settings)
    assert st.healthy and st.model_server.alive and st.gateway.alive
    assert "fraud-detector v1" in describe([st])


def test_switch_to_v2_under_load_drops_nothing(env):
    settings, versions = env
    [before] = status(settings)
    assert before.version == "1", "runs after test_serve_v1_through_gateway"
    bento2, _ = versions["2"]
    old_processes = {before.model_server.pid} | _descendants(before.model_server.pid)
    assert len(old_processes) >= 2, "bentoml arbiter + worker"

    results: list[tuple[int, str | None]] = []
    errors: list[str] = []
    stop = threading.Event()
    sample = rows(3, seed=11)
    import pandas as pd

    expected = {v: list(versions[v][1].predict_proba(pd.DataFrame(sample)[FEATURES])[:, 1]) for v in ("1", "2")}
    wrong: list[dict] = []

    def hammer():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    resp = client.post(f"{before.gateway_url}/predict", json={"rows": sample})
                    results.append((resp.status_code, resp.headers.get("X-Model-Version")))
                    body = resp.json()
                    # adaptive batching must hand every request its own rows' scores, from its version
                    if resp.status_code == 200 and body["predictions"] != pytest.approx(
                        expected[body["version"]], abs=1e-9
                    ):
                        wrong.append(body)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        [after] = reconcile(settings, [desired(bento2)])
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    assert after.action == "switched" and after.version == "2"
    assert after.gateway.pid == before.gateway.pid, "the gateway stays; only the upstream changes"
    assert after.model_server.pid != before.model_server.pid
    statuses = Counter(code for code, _ in results)
    versions_seen = Counter(v for _, v in results)
    assert not errors, errors[:5]
    assert not wrong, wrong[:3]
    assert set(statuses) == {200}, statuses
    assert len(results) > 50, "the switch happened under real load"
    assert versions_seen["1"] > 0 and versions_seen["2"] > 0, versions_seen
    assert results[-1][1] == "2"
    # old model server is gone, with all its workers
    assert not [pid for pid in old_processes if pid_alive(pid)]
    assert not _live_members(before.model_server.pid)

    resp = httpx.post(f"{after.gateway_url}/predict", json={"rows": sample}, timeout=30).json()
    assert resp["version"] == "2" and resp["run_id"] == bento2.run_id
    assert resp["predictions"] == pytest.approx(expected["2"], abs=1e-9)


def test_repair_after_gateway_crash(env):
    settings, versions = env
    import signal

    [before] = status(settings)
    os.killpg(before.gateway.pid, signal.SIGKILL)
    for _ in range(50):
        if not pid_alive(before.gateway.pid):
            break
        time.sleep(0.1)
    [st] = status(settings)
    assert st.healthy is False and st.gateway.alive is False
    [after] = reconcile(settings, [desired(versions["2"][0])])
    assert after.action == "repaired" and after.model_server.pid == before.model_server.pid
    assert after.gateway.pid != before.gateway.pid
    assert httpx.post(f"{after.gateway_url}/predict", json={"rows": rows(1)}, timeout=30).json()["version"] == "2"


def test_two_models_side_by_side_including_regression(env):
    """State is keyed by model: each model gets its own model server and gateway (the first on gateway_port)."""
    settings, versions = env
    fraud, _ = versions["2"]
    house, regressor = versions["house-price"]
    states = {s.model: s for s in reconcile(settings, [desired(fraud), desired(house)])}
    assert states["fraud-detector"].action == "unchanged" and states["house-price"].action == "started"
    assert states["fraud-detector"].gateway.port == settings.serving.gateway_port
    assert states["house-price"].gateway.port != settings.serving.gateway_port

    sample = rows(4, seed=3)
    body = httpx.post(f"{states['house-price'].gateway_url}/predict", json={"rows": sample}, timeout=30).json()
    assert (body["model"], body["version"]) == ("house-price", house.version)
    import pandas as pd

    assert body["predictions"] == pytest.approx(list(regressor.predict(pd.DataFrame(sample)[FEATURES])), abs=1e-6)
    fraud_body = httpx.post(f"{states['fraud-detector'].gateway_url}/predict", json={"rows": sample}, timeout=30)
    assert fraud_body.json()["model"] == "fraud-detector"
    assert {s.model for s in status(settings) if s.healthy} == {"fraud-detector", "house-price"}


def test_stop_all_leaves_no_processes(env):
    settings, _ = env
    served = status(settings)
    assert {s.model for s in served} == {"fraud-detector", "house-price"}
    processes = set()
    for st in served:
        processes |= {st.model_server.pid, st.gateway.pid} | _descendants(st.model_server.pid)
    stopped = stop_all(settings)
    assert {s.model for s in stopped} == {"fraud-detector", "house-price"}
    assert not [pid for pid in processes if pid_alive(pid)]
    for st in served:
        assert not _live_members(st.model_server.pid) and not _live_members(st.gateway.pid)
    assert status(settings) == [] and stop_all(settings) == []
    assert LocalRuntime(settings).state_path.is_file()


def test_stale_pids_are_skipped(env):
    settings, versions = env
    runtime = LocalRuntime(settings)
    import json

    from ct_pipeline.domain.records import ProcessInfo

    # a state.json left behind by a crashed machine: pids that are gone or belong to someone else
    ghost = ProcessInfo(pid=2**22 - 3, port=1, url="http://127.0.0.1:1", log="x", started_at="2026-01-01T00:00:00Z")
    mine = ProcessInfo(pid=os.getpid(), port=2, url="http://127.0.0.1:2", log="x", started_at="2026-01-01T00:00:00Z")
    entry = ServedState(
        model="fraud-detector", version="1", bento_tag=versions["1"][0].bento_tag, model_server=ghost,
        gateway=mine, started_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    runtime.state_path.write_text(json.dumps({"models": {"fraud-detector": entry.model_dump(mode="json")}}))
    [st] = status(settings)
    assert st.model_server.alive is False and st.gateway.alive is False  # pytest's pid is not a gateway
    assert [s.model for s in stop_all(settings)] == ["fraud-detector"]
    assert pid_alive(os.getpid())


def test_busy_gateway_port_is_a_clear_error(settings):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        runtime = LocalRuntime(settings.replace(serving={"gateway_port": port}))
        with pytest.raises(RolloutError, match=rf"gateway port 127.0.0.1:{port} is in use by another process"):
            runtime._start_gateway("m", "http://127.0.0.1:1", "t", taken=set(), port=None)


def test_stop_process_group_reaches_workers_in_their_own_sessions():
    import subprocess
    import sys

    # a leader whose worker moves to a session of its own, like bentoml's circusd + workers
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(60)']); "
        "time.sleep(60)"
    )
    leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    for _ in range(100):
        workers = _descendants(leader.pid)
        if workers:
            break
        time.sleep(0.05)
    assert workers
    # SIGTERM to the group ends the leader; the worker (own session, found via the process tree) outlives it
    # and is SIGKILLed after the timeout
    assert stop_process_group(leader.pid, expect="time.sleep(60)", timeout=1)
    for _ in range(50):
        if not [p for p in workers if pid_alive(p)]:
            break
        time.sleep(0.1)
    assert not pid_alive(leader.pid) and not [p for p in workers if pid_alive(p)]
    assert stop_process_group(leader.pid) is False  # stale: nothing left to stop
