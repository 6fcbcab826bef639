#!/usr/bin/env python
"""`make bench`: the serving path measured on this machine, in one run, with wrk.

Same model (LightGBM, 200 trees x 20 features, binary; logged to a temporary MLflow sqlite store and built
into a Bento with ct_pipeline.adapters.bento.build_bento), same single-row JSON payload, concurrency 1/32/64/128:

  a      the ceiling: one FastAPI (uvicorn) process with the model in-process
  b-off  the BentoML model server direct, adaptive batching off (CT_BATCHING=false)
  b-on   the BentoML model server direct, adaptive batching on (the service's defaults)
  c      the full path: gateway -> model server, both started by ct_pipeline.adapters.local_runtime.LocalRuntime
         (the exact processes `ctpipe reconcile` runs: gateway micro-batching, BentoML adaptive batching on)
  c-boff the same, with the model server's BentoML batching off (CT_BATCHING=false)

Each point is measured --rounds times, interleaved across paths (the machine may be shared and its load
drift), and the median run is reported.

Then a soak of the full path at a fraction (0.8) of its measured capacity: errors and resident-memory growth.
Every load loop is bounded in time (wrk -d) and all servers bind 127.0.0.1. Output under --out
(default results/bench): bench.json, bench.md (tables), bench.png (plot), logs/.

The machine may be shared: each measurement also records the CPU used by processes that are not part of
the bench ("other load"), so a number taken on a busy machine can be recognised as such.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVING = REPO / "serving"
HOST = "127.0.0.1"
N_FEATURES = 20
N_TREES = 200
MODEL_NAME = "bench-lgbm"
PATHS = {
    "a": "ceiling: FastAPI, model in-process",
    "b-off": "model server direct, batching off",
    "b-on": "model server direct, BentoML batching on",
    "c": "full path: gateway -> model server (as rollout runs it)",
    "c-boff": "full path, model server with BentoML batching off",
}

# ---------------------------------------------------------------------------------------------------------
# The ceiling server (a): `bench.py serve-ceiling ...` runs in its own process


def serve_ceiling(port: int, bento_model_tag: str, config_path: str, mode: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # same as the model server (CT_MODEL_THREADS=1)
    sys.path.insert(0, str(SERVING))
    import bentoml
    import numpy as np
    import uvicorn
    from fastapi import FastAPI, Request, Response
    from fastapi.responses import JSONResponse
    from gateway.schema import UpstreamMetadata, build_request_model, validation_errors
    from pydantic import ValidationError
    from pydantic_core import to_json

    config = json.loads(Path(config_path).read_text())
    meta = UpstreamMetadata.model_validate({**config, "image_digest": None})
    request_model = build_request_model(meta, 1000)
    features = list(meta.features)
    booster = bentoml.mlflow.load_model(bento_model_tag).get_raw_model().booster_
    lineage = {k: getattr(meta, k) for k in ("model", "version", "run_id", "data_hash", "image_digest")}
    prefix = to_json(lineage)[:-1] + b',"predictions":'
    app = FastAPI(title="bench ceiling")

    def score(rows: list[dict]) -> bytes:
        x = np.array([[row[f] for f in features] for row in rows], dtype=np.float64)
        return prefix + to_json(booster.predict(x, num_threads=1).tolist()) + b"}"

    if mode == "async":  # validate + predict on the event loop (a 1-row LightGBM predict is ~30 us)

        @app.post("/predict")
        async def predict(request: Request) -> Response:
            try:
                rows = request_model.model_validate_json(await request.body()).rows
            except ValidationError as exc:
                return JSONResponse({"detail": validation_errors(exc)}, 422)
            return Response(score(rows), media_type="application/json")

    else:  # idiomatic FastAPI: body model parsed by FastAPI, sync handler in the threadpool

        @app.post("/predict")
        def predict_sync(body: request_model) -> Response:  # type: ignore[valid-type]
            return Response(score(body.rows), media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    import gc

    gc.collect()
    gc.freeze()  # as the model server and the gateway do after startup: no full-collection pauses
    uvicorn.run(app, host=HOST, port=port, access_log=False, log_level="warning")


# ---------------------------------------------------------------------------------------------------------
# Setup: model, bento, servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", flush=True)


def build_model(home: Path):
    """Train LightGBM 200 x 20, log + register it in a temp MLflow store, build its bento. -> (settings, ref)."""
    os.environ.update(
        {
            "CTPIPE_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "BENTOML_HOME": str(home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    for var in ("CTPIPE_GITOPS_REMOTE", "CTPIPE_DATA_DIR", "CTPIPE_MLFLOW_TRACKING_URI", "CTPIPE_BENTOML_HOME"):
        os.environ.pop(var, None)
    import lightgbm as lgb
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    from ct_pipeline.adapters.bento import build_bento
    from ct_pipeline.domain.records import GateDecision, ModelRef, WindowSnapshot
    from ct_pipeline.domain.spec import parse_spec
    from ct_pipeline.families.base import sklearn_log_options
    from ct_pipeline.settings import load_settings

    features = [f"f{i:02d}" for i in range(N_FEATURES)]
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(5000, N_FEATURES)), columns=features)
    y = ((x.iloc[:, :5].sum(axis=1) + rng.normal(size=len(x))) > 0).astype(int)
    model = lgb.LGBMClassifier(n_estimators=N_TREES, num_leaves=31, verbose=-1, random_state=0).fit(x, y)
    spec = parse_spec(
        {
            "name": MODEL_NAME,
            "task": "binary_classification",
            "data": {
                "source": {"kind": "csv", "path": "bench.csv"},
                "time_column": "ts",
                "target": "y",
                "features": features,
            },
            "candidates": [{"name": "lgbm", "kind": "lightgbm", "params": {"n_estimators": N_TREES}}],
            "metric": {"name": "roc_auc"},
        }
    )
    mlflow.set_experiment(MODEL_NAME)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=MODEL_NAME,
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(x.head(5), model.predict_proba(x.head(5))),
            input_example=x.head(3),
            skops_trusted_types=sklearn_log_options(model, spec)["skops_trusted_types"],
            pip_requirements=["scikit-learn", "lightgbm", "pandas"],
        )
    version, run_id = str(info.registered_model_version), run.info.run_id
    snapshot = WindowSnapshot(
        model=MODEL_NAME,
        source="csv:bench.csv",
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 2, 1, tzinfo=UTC),
        rows=len(x),
        content_hash="sha256:" + "be" * 32,
        path="bench.parquet",
        time_column="ts",
        target="y",
        features=features,
    )
    decision = GateDecision(
        model=MODEL_NAME,
        promote=True,
        reason="bench",
        challenger=ModelRef(version=version, run_id=run_id, metric=0.9),
        metric="roc_auc",
        direction="maximize",
        decided_at=datetime.now(UTC),
        snapshot=snapshot,
    )
    settings = load_settings(
        paths={"home": home}, serving={"gateway_port": free_port(), "model_server_base_port": free_port()}
    )
    ref = build_bento(spec, decision, settings)
    payload_row = {f: round(float(v), 4) for f, v in x.iloc[0].items()}
    expected = float(model.predict_proba(pd.DataFrame([payload_row]))[0, 1])
    return settings, ref, payload_row, expected


def prepare_model(home: Path):
    """build_model, or reuse the one a previous run left in ``home`` (with --workdir)."""
    from ct_pipeline.domain.records import BentoRef
    from ct_pipeline.settings import load_settings

    saved = home / "bench-model.json"
    if saved.is_file():
        data = json.loads(saved.read_text())
        log(f"reusing the model and bento in {home}")
        os.environ.update(data["env"])
        settings = load_settings(
            paths={"home": home}, serving={"gateway_port": free_port(), "model_server_base_port": free_port()}
        )
        return settings, BentoRef.model_validate(data["ref"]), data["row"], data["expected"]
    log(f"building the model and its bento in {home}")
    settings, ref, row, expected = build_model(home)
    env = {k: os.environ[k] for k in ("CTPIPE_HOME", "MLFLOW_TRACKING_URI", "BENTOML_HOME", "BENTOML_DO_NOT_TRACK")}
    saved.write_text(json.dumps({"env": env, "ref": ref.model_dump(mode="json"), "row": row, "expected": expected}))
    return settings, ref, row, expected


class Servers:
    """Processes the bench started (stopped with their process groups at the end)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}
        self.urls: dict[str, str] = {}

    def spawn(self, name: str, cmd: list[str], env: dict[str, str], port: int, ready: str, timeout: float = 240):
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.procs[name] = proc
        self.pids[name] = proc.pid
        url = f"http://{HOST}:{port}"
        self.urls[name] = url
        wait_ready(f"{url}{ready}", timeout, proc, log_path)
        return url

    def stop(self) -> None:
        from ct_pipeline.adapters.local_runtime import stop_process_group

        for name, proc in self.procs.items():
            if proc.poll() is None:
                stop_process_group(proc.pid, timeout=20)
            log(f"stopped {name}")


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"{url}: process exited with {proc.returncode}\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


# ---------------------------------------------------------------------------------------------------------
# Processes, CPU and memory


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] not in ("Z", "X"):
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# ---------------------------------------------------------------------------------------------------------
# wrk

WRK_DONE = """
done = function(summary, latency, requests)
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,'
    .. '"write":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_script(path: Path, body: str, delay_ms: float | None = None) -> Path:
    lua = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(body)}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if delay_ms is not None:  # open-ish loop for the soak: each connection paces itself (jittered)
        lua.append(f"function delay() return {delay_ms:.3f} * (0.5 + math.random()) end")
    path.write_text("\n".join(lua) + "\n" + WRK_DONE)
    return path


def run_wrk(url: str, script: Path, connections: int, seconds: float, server_pids: list[int]) -> dict[str, Any]:
    """One bounded wrk run; returns throughput, latency, errors and CPU accounting."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script), url]
    tree = [p for pid in server_pids for p in process_tree(pid)]
    cpu0, busy0, t0 = cpu_seconds(tree), machine_busy_seconds(), time.monotonic()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    wall = time.monotonic() - t0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    servers_cpu = cpu_seconds(tree) - cpu0
    wrk_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    busy = machine_busy_seconds() - busy0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    secs = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "connections": connections,
        "requests": raw["requests"],
        "rps": raw["requests"] / secs if secs else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "non2xx": raw["non2xx"],
        "socket_errors": errors,
        "cpu_servers": servers_cpu / wall,
        "cpu_wrk": wrk_cpu / wall,
        "cpu_other": max(0.0, (busy - servers_cpu - wrk_cpu) / wall),
        "seconds": secs,
    }


# ---------------------------------------------------------------------------------------------------------
# Soak


def soak(
    url: str,
    body: str,
    workdir: Path,
    capacity: float,
    connections: int,
    fraction: float,
    seconds: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    """Full path at ``fraction`` of ``capacity`` req/s for ``seconds``: errors and RSS growth per process tree.

    ``connections`` is the concurrency the capacity was measured at. The soak opens 4x as many, each mostly
    thinking: the think time then dominates every connection's cycle, so the offered rate depends little on
    the response time (a closed loop with short think times drifts with latency: +18% in a trial run).
    """
    connections *= 4
    target = capacity * fraction
    # Calibrate the per-connection think time so the offered rate lands near the target. wrk's delay() is in
    # whole milliseconds, and the response time under load is unknown up front, so correct from probes.
    delay_ms = max(0.1, connections / target * 1000 * 0.5)
    all_pids = list(pids.values())

    def corrected(delay: float, rps: float) -> float:
        # cycle time per connection = think time + response time; move the think time by the cycle's error
        return max(0.1, delay + (connections / target - connections / rps) * 1000) if rps > 0 else delay

    calibration = []
    for _ in range(6):
        probe = run_wrk(url, wrk_script(workdir / "soak.lua", body, delay_ms), connections, 4, all_pids)
        calibration.append({"delay_ms": round(delay_ms, 3), "rps": round(probe["rps"], 1)})
        if probe["rps"] <= 0 or abs(probe["rps"] - target) / target < 0.03:
            break
        delay_ms = corrected(delay_ms, probe["rps"])
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not stop.is_set():
            samples.append(
                {"t": round(time.monotonic() - start, 1)}
                | {name: round(rss_mb(process_tree(pid)), 1) for name, pid in pids.items()}
            )
            stop.wait(5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # Consecutive 30 s segments, the think time corrected after each: the response time drifts over minutes
    # (a single 120 s run calibrated on 4 s probes reached 73% of capacity instead of 80%).
    segments: list[dict[str, Any]] = []
    try:
        remaining = seconds
        while remaining >= 1:
            length = min(30.0, remaining)
            segment = run_wrk(url, wrk_script(workdir / "soak.lua", body, delay_ms), connections, length, all_pids)
            segments.append(segment | {"delay_ms": round(delay_ms, 3)})
            remaining -= length
            delay_ms = corrected(delay_ms, segment["rps"])
    finally:
        stop.set()
        sampler.join(10)
    total_s = sum(seg["seconds"] for seg in segments)
    result = {
        "requests": sum(seg["requests"] for seg in segments),
        "seconds": total_s,
        "rps": sum(seg["requests"] for seg in segments) / total_s if total_s else 0.0,
        # percentiles do not merge: the median segment's p50 and the worst segment's p99 / max
        "p50_ms": sorted(seg["p50_ms"] for seg in segments)[len(segments) // 2],
        "p99_ms": max(seg["p99_ms"] for seg in segments),
        "max_ms": max(seg["max_ms"] for seg in segments),
        "non2xx": sum(seg["non2xx"] for seg in segments),
        "socket_errors": sum(seg["socket_errors"] for seg in segments),
        "cpu_servers": sum(seg["cpu_servers"] * seg["seconds"] for seg in segments) / total_s if total_s else 0.0,
        "cpu_other": sum(seg["cpu_other"] * seg["seconds"] for seg in segments) / total_s if total_s else 0.0,
        "segments": segments,
    }
    samples.append({"t": round(seconds, 1)} | {name: round(rss_mb(process_tree(pid)), 1) for name, pid in pids.items()})
    # baseline after the first 10 s (allocator warm-up under the new load), and from the very start
    base = next((s for s in samples if s["t"] >= 10), samples[0])
    growth = {
        name: {
            "start_mb": samples[0][name],
            "after_10s_mb": base[name],
            "end_mb": samples[-1][name],
            "growth_pct": round(100 * (samples[-1][name] - base[name]) / base[name], 2) if base[name] else None,
            "growth_from_start_pct": round(100 * (samples[-1][name] - samples[0][name]) / samples[0][name], 2)
            if samples[0][name]
            else None,
        }
        for name in pids
    }
    return {
        "target_rps": round(target, 1),
        "capacity_rps": round(capacity, 1),
        "fraction": fraction,
        "connections": connections,
        "delay_ms": round(delay_ms, 3),
        "calibration": calibration,
        "achieved_fraction": round(result["rps"] / capacity, 3) if capacity else None,
        "result": result,
        "errors": result["non2xx"] + result["socket_errors"],
        "rss": growth,
        "rss_samples": samples,
    }


# ---------------------------------------------------------------------------------------------------------
# Report


def fmt(v: float, digits: int = 1) -> str:
    return f"{v:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Serving bench ({report['started_at']})",
        "",
        f"Machine: {report['machine']['cpus']} CPUs, Python {report['machine']['python']}, "
        f"load average at start {report['machine']['loadavg_start']}. Model: LightGBM {N_TREES} trees x "
        f"{N_FEATURES} features (binary), one row per request; wrk -t1, {report['config']['seconds']:g} s per run "
        f"after {report['config']['warmup']:g} s warm-up, {report['config']['rounds']} interleaved rounds per point "
        f"(median run shown; non-2xx summed over rounds). Ceiling mode: {report['config']['ceiling_mode']}. "
        "CPU columns: cores used by the path's processes, by wrk, and by everything else on the machine.",
        "",
        "| path | conc. | req/s | (range) | p50 ms | p99 ms | non-2xx | socket err | CPU path | CPU wrk | CPU other "
        "| rows/call |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, runs in report["results"].items():
        for r in runs:
            lines.append(
                f"| {key} {PATHS.get(key, '')} | {r['connections']} | {fmt(r['rps'], 0)} | "
                f"{fmt(r.get('rps_min', r['rps']), 0)}-{fmt(r.get('rps_max', r['rps']), 0)} | {fmt(r['p50_ms'], 2)} | "
                f"{fmt(r['p99_ms'], 2)} | {r['non2xx']} | {r['socket_errors']} | {fmt(r['cpu_servers'], 2)} | "
                f"{fmt(r['cpu_wrk'], 2)} | {fmt(r['cpu_other'], 2)} | "
                f"{fmt(r['rows_per_call'], 1) if r.get('rows_per_call') else ''} |"
            )
    lines += [
        "",
        "Full path vs the ceiling (goal at c=64-128: req/s ratio >= 0.8, p99 <= 2x, no non-2xx):",
        "",
        "| conc. | (c)/(a) req/s | per round | p99 (c)/(a) | goal met |",
        "| ---: | ---: | --- | ---: | --- |",
    ]
    for row in report["ratios"]:
        per_round = ", ".join(f"{x:.2f}" for x in row["rps_ratio_per_round"])
        lines.append(
            f"| {row['connections']} | {row['rps_ratio']:.2f} | {per_round} | {row['p99_ratio']:.2f} | "
            f"{'yes' if row['goal_met'] else 'no'} |"
        )
    for key, summary in (report.get("gateway_batches") or {}).items():
        lines += ["", f"Gateway micro-batches, path {key}: {summary}"]
    s = report.get("soak")
    if s:
        r = s["result"]
        lines += [
            "",
            f"Soak: {s['result']['seconds']:.0f} s of the full path at {fmt(r['rps'], 0)} req/s "
            f"(target {fmt(s['target_rps'], 0)} = {s['fraction']:.0%} of {fmt(s['capacity_rps'], 0)}; "
            f"reached {s['achieved_fraction']:.0%} of capacity), "
            f"{s['connections']} connections: {s['errors']} errors "
            f"(non-2xx {r['non2xx']}, socket {r['socket_errors']}), "
            f"p50 {fmt(r['p50_ms'], 2)} ms (median segment), p99 {fmt(r['p99_ms'], 2)} ms (worst segment), "
            f"CPU other {fmt(r['cpu_other'], 2)}; segments of 30 s: "
            + ", ".join(f"{fmt(seg['rps'], 0)}" for seg in r["segments"])
            + " req/s.",
            "",
            "| process | RSS start MB | after 10 s | end | growth (from 10 s) | growth (from start) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, g in s["rss"].items():
            lines.append(
                f"| {name} | {g['start_mb']} | {g['after_10s_mb']} | {g['end_mb']} | {g['growth_pct']}% | "
                f"{g['growth_from_start_pct']}% |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, runs in report["results"].items():
        conc = [r["connections"] for r in runs]
        label = f"{key}: {PATHS.get(key, key)}"
        ax1.plot(conc, [r["rps"] for r in runs], marker="o", label=label)
        ax2.plot(conc, [r["p99_ms"] for r in runs], marker="o", label=label)
        for r in runs:
            if r["non2xx"] or r["socket_errors"]:
                ax1.annotate(f"{r['non2xx'] + r['socket_errors']} err", (r["connections"], r["rps"]), fontsize=7)
    ax1.set(xscale="log", xlabel="concurrency (connections)", ylabel="requests/s", title="Throughput")
    ax2.set(xscale="log", yscale="log", xlabel="concurrency (connections)", ylabel="p99 latency (ms)", title="p99")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(f"ct-pipeline serving bench, {report['started_at']} ({report['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its own latencies), errors summed over all runs."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    mid = dict(ordered[len(ordered) // 2])
    mid["non2xx"] = sum(r["non2xx"] for r in runs)
    mid["socket_errors"] = sum(r["socket_errors"] for r in runs)
    mid["rounds"] = len(runs)
    mid["rps_min"], mid["rps_max"] = ordered[0]["rps"], ordered[-1]["rps"]
    return mid


def start_servers(paths, args, settings, ref, servers: Servers) -> tuple[dict, dict, list]:
    """Start every server the paths need; returns (urls, pids per path, LocalRuntimes to stop)."""
    from ct_pipeline.adapters.local_runtime import LocalRuntime
    from ct_pipeline.domain.records import DeployedModel
    from ct_pipeline.settings import load_settings

    env = {**os.environ}
    bentoml_cmd = [sys.executable, "-m", "bentoml", "serve", ref.bento_tag, "--host", HOST, "--port"]
    config_path = next((Path(os.environ["BENTOML_HOME"]) / "bentos").glob("*/*/src/ct_model.json"))
    urls: dict[str, str] = {}
    pids: dict[str, list[int]] = {}
    runtimes = []
    if "a" in paths:
        port = free_port()
        cmd = [sys.executable, __file__, "serve-ceiling", "--port", str(port), "--bento-model-tag",
               ref.bento_model_tag, "--config", str(config_path), "--mode", args.ceiling_mode]  # fmt: skip
        urls["a"] = servers.spawn("a-ceiling", cmd, env, port, "/readyz")
        pids["a"] = [servers.pids["a-ceiling"]]
    for key, batching in (("b-off", "false"), ("b-on", "true")):
        if key in paths:
            port = free_port()
            name = f"{key}-model-server"
            urls[key] = servers.spawn(
                name, [*bentoml_cmd, str(port)], {**env, "CT_BATCHING": batching}, port, "/readyz"
            )
            pids[key] = [servers.pids[name]]
    desired = DeployedModel(
        model=ref.model,
        environment="bench",
        version=ref.version,
        run_id=ref.run_id,
        bento_tag=ref.bento_tag,
        data_hash=ref.data_hash,
    )
    for key, batching in (("c", None), ("c-boff", "false")):
        if key not in paths:
            continue
        # the exact processes `ctpipe reconcile` starts (c-boff: with BentoML's adaptive batching off)
        log(f"{key}: model server + gateway started by ct_pipeline.adapters.local_runtime.LocalRuntime")
        home = (
            settings.paths.home_dir
            if key == "c"
            else settings.paths.home_dir.with_name(settings.paths.home_dir.name + "-" + key)
        )
        runtime = LocalRuntime(
            load_settings(
                paths={"home": home, "bentoml_home": settings.paths.bento_home},
                serving={"gateway_port": free_port(), "model_server_base_port": free_port()},
            )
        )
        runtimes.append(runtime)
        saved = os.environ.get("CT_BATCHING")
        if batching is not None:
            os.environ["CT_BATCHING"] = batching
        try:
            state = runtime.apply(desired)
        finally:
            if saved is None:
                os.environ.pop("CT_BATCHING", None)
            else:
                os.environ["CT_BATCHING"] = saved
        urls[key] = state.gateway_url
        pids[key] = [state.gateway.pid, state.model_server.pid]
    return urls, pids, runtimes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    ceiling = sub.add_parser("serve-ceiling", help="(internal) run the in-process ceiling server")
    ceiling.add_argument("--port", type=int, required=True)
    ceiling.add_argument("--bento-model-tag", required=True)
    ceiling.add_argument("--config", required=True)
    ceiling.add_argument("--mode", choices=("async", "sync"), default="async")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point; the median is kept")
    parser.add_argument("--concurrency", default="1,32,64,128")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    parser.add_argument("--soak-seconds", type=float, default=120.0, help="0 skips the soak")
    parser.add_argument("--soak-fraction", type=float, default=0.8)
    parser.add_argument("--ceiling-mode", choices=("async", "sync"), default="async")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory (removed)")
    args = parser.parse_args(argv)
    if args.command == "serve-ceiling":
        serve_ceiling(args.port, args.bento_model_tag, args.config, args.mode)
        return 0

    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    concurrency = [int(c) for c in args.concurrency.split(",")]
    paths = [p for p in PATHS if p in args.paths.split(",")]
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}")
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ct-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        },
        "config": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "concurrency": concurrency,
            "ceiling_mode": args.ceiling_mode,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("CT_", "OMP_"))},
        },
        "results": {},
        "runs": {},
    }
    servers = Servers(out / "logs")
    runtimes: list = []
    interrupted = False

    def on_signal(signum, frame):  # make SIGTERM clean up the servers too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        settings, ref, row, expected = prepare_model(workdir / "home")
        body = json.dumps({"rows": [row]}, separators=(",", ":"))
        script = wrk_script(workdir / "post.lua", body)
        report["model"] = {"bento": ref.bento_tag, "version": ref.version, "run_id": ref.run_id}
        urls, pids, runtimes = start_servers(paths, args, settings, ref, servers)
        if "c" in urls:
            report["gateway_metadata"] = _get_json(f"{urls['c']}/metadata")

        import httpx

        for key, url in urls.items():  # same model, same answer on every path
            resp = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=30)
            if resp.status_code != 200:
                raise RuntimeError(f"path {key} answered {resp.status_code}: {resp.text[:1000]}")
            answer = resp.json()
            score = answer["predictions"][0] if isinstance(answer, dict) else answer[0]
            if abs(score - expected) > 1e-9:
                raise RuntimeError(f"path {key} answered {score}, the model says {expected}")
        log(f"all paths answer {expected:.6f} for the payload; measuring")

        # Interleaved: for each concurrency, every path in turn, `rounds` times, so a change in the machine's
        # other load hits all paths alike; the median run of each point is reported.
        runs: dict[str, dict[int, list]] = {key: {c: [] for c in concurrency} for key in paths}
        for conc in concurrency:
            for rnd in range(args.rounds):
                for key in paths:
                    run_wrk(f"{urls[key]}/predict", script, conc, args.warmup, pids[key])
                    gateway = key.startswith("c")
                    before = _metric_values(urls[key]) if gateway else {}
                    result = run_wrk(f"{urls[key]}/predict", script, conc, args.seconds, pids[key])
                    if gateway:  # how the gateway batched this run: the cost per request depends on it
                        after = _metric_values(urls[key])
                        calls = after["ct_gateway_batch_rows_count"] - before.get("ct_gateway_batch_rows_count", 0)
                        rows = after["ct_gateway_batch_rows_sum"] - before.get("ct_gateway_batch_rows_sum", 0)
                        result["rows_per_call"] = rows / calls if calls else None
                    runs[key][conc].append(result)
                    per_call = f", {result['rows_per_call']:.1f} rows/call" if result.get("rows_per_call") else ""
                    log(
                        f"{key:6} c={conc:<3} r{rnd} {result['rps']:7.0f} req/s  p50 {result['p50_ms']:7.2f} ms  "
                        f"p99 {result['p99_ms']:7.2f} ms  non-2xx {result['non2xx']}  socket errors "
                        f"{result['socket_errors']}  (CPU: servers {result['cpu_servers']:.2f}, wrk "
                        f"{result['cpu_wrk']:.2f}, other {result['cpu_other']:.2f}{per_call})"
                    )
        report["runs"] = {key: {str(c): r for c, r in per.items()} for key, per in runs.items()}
        report["results"] = {key: [median_run(per[c]) for c in concurrency] for key, per in runs.items()}
        report["gateway_batches"] = {key: _batch_summary(urls[key]) for key in ("c", "c-boff") if key in urls}
        report["ratios"] = []
        if "a" in runs and "c" in runs:
            for conc, ra, rc in zip(concurrency, report["results"]["a"], report["results"]["c"], strict=True):
                rps_ratio = rc["rps"] / ra["rps"] if ra["rps"] else 0.0
                p99_ratio = rc["p99_ms"] / ra["p99_ms"] if ra["p99_ms"] else float("inf")
                paired = sorted(c["rps"] / a["rps"] for a, c in zip(runs["a"][conc], runs["c"][conc], strict=True))
                report["ratios"].append(
                    {
                        "connections": conc,
                        "rps_ratio": round(rps_ratio, 3),
                        "rps_ratio_per_round": [round(x, 3) for x in paired],
                        "p99_ratio": round(p99_ratio, 3),
                        "goal_met": rps_ratio >= 0.8 and p99_ratio <= 2.0 and rc["non2xx"] + rc["socket_errors"] == 0,
                    }
                )
        if args.soak_seconds > 0 and "c" in runs:
            best = max(report["results"]["c"], key=lambda r: r["rps"])
            capacity = best["rps"]
            log(
                f"soak: {args.soak_seconds:g} s at {args.soak_fraction:.0%} of {capacity:.0f} req/s "
                f"(measured at c={best['connections']})"
            )
            report["soak"] = soak(
                f"{urls['c']}/predict",
                body,
                workdir,
                capacity,
                best["connections"],
                args.soak_fraction,
                args.soak_seconds,
                {"gateway": pids["c"][0], "model_server": pids["c"][1]},
            )
            s = report["soak"]
            log(f"soak: {s['result']['rps']:.0f} req/s, {s['errors']} errors, RSS {json.dumps(s['rss'])}")
        if "c" in urls:
            report["gateway_metrics"] = _metrics_excerpt(urls["c"])
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the servers")
    finally:
        for runtime in runtimes:
            runtime.stop()
        servers.stop()
        report["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
    plot(report, out / "bench.png")
    print(markdown(report))
    log(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 0


def _get_json(url: str) -> Any:
    import httpx

    return httpx.get(url, timeout=10).json()


def _metric_values(url: str) -> dict[str, float]:
    import httpx

    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _batch_summary(url: str) -> str:
    m = _metric_values(url)
    calls = m.get("ct_gateway_batch_rows_count", 0)
    if not calls:
        return "no model-server calls"
    return (
        f"{int(m.get('ct_gateway_batch_requests_sum', 0))} requests in {int(calls)} model-server calls "
        f"(mean {m.get('ct_gateway_batch_rows_sum', 0) / calls:.1f} rows per call)"
    )


def _metrics_excerpt(url: str) -> dict[str, float]:
    keep = ("ct_gateway_upstream_calls_total", "ct_gateway_upstream_retries_total", "ct_gateway_circuit_opens_total",
            "ct_gateway_shed_requests_total", "ct_gateway_prediction_log_rows_total", "ct_gateway_batch_rows_sum",
            "ct_gateway_batch_rows_count", "ct_gateway_requests_total")  # fmt: skip
    return {k: v for k, v in _metric_values(url).items() if k.startswith(keep)}


if __name__ == "__main__":
    sys.exit(main())
