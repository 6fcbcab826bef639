"""The one-machine stand-in for Flux + Kubernetes: make the served state match the desired one.

``reconcile(settings, desired)`` takes what the GitOps manifests say is deployed (``DeployedModel``) and
drives a :class:`Runtime` to serve it. :class:`LocalRuntime` runs, per model, one ``bentoml serve`` model
server and one gateway (uvicorn, ``serving/gateway``) as detached processes; it records them in
``<runtime_dir>/state.json`` and logs to ``<runtime_dir>/logs``.

A version change is a rolling switch: start the new model server on a free port, wait until it is ready,
point the gateway at it (``PUT /admin/upstream``: schema + upstream swap atomically, in-flight requests
drain), then stop the old model server (SIGTERM to its process group; bentoml shuts down gracefully).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ct_pipeline.domain.records import DeployedModel, ProcessInfo, ServedState
from ct_pipeline.errors import RolloutError
from ct_pipeline.ports import Runtime
from ct_pipeline.settings import Settings

logger = logging.getLogger(__name__)

NOTHING_DEPLOYED = "nothing deployed yet"

MODEL_SERVER_READY_TIMEOUT = 180.0
GATEWAY_READY_TIMEOUT = 60.0
STOP_GRACE = 0.5  # after the gateway drained, before SIGTERM to the old model server
STOP_TIMEOUT = 30.0  # SIGTERM -> SIGKILL


# ---------------------------------------------------------------------------------------------------------
# Processes


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _matches(pid: int, expect: str | tuple[str, ...] | None) -> bool:
    if expect is None:
        return True
    cmdline = _cmdline(pid)
    return any(mark in cmdline for mark in ((expect,) if isinstance(expect, str) else expect))


def pid_alive(pid: int | None, expect: str | tuple[str, ...] | None = None) -> bool:
    """Alive, not a zombie and (if given) its command line contains ``expect`` (guards against pid reuse)."""
    if not pid:
        return False
    _reap(pid)
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    return _matches(pid, expect)


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) for every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _live_members(pgid: int, expect: str | tuple[str, ...] | None = None) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` whose command line contains ``expect``."""
    _reap(pgid)
    return [
        pid
        for pid, (_, group, state) in _proc_table().items()
        if group == pgid and state not in ("Z", "X") and _matches(pid, expect)
    ]


def _descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (bentoml's workers run in sessions of their own)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _, state) in table.items():
        if state not in ("Z", "X"):
            children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    _reap(pid)
    return _proc_state(pid) not in (None, "Z", "X")


def stop_process_group(pid: int, expect: str | tuple[str, ...] | None = None, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM the process group led by ``pid`` (started with start_new_session), SIGKILL after ``timeout``.

    Descendants that moved to sessions of their own (bentoml workers) are waited for, and killed with the
    rest if they outlive the timeout. Works when the leader already died but group members linger (a group
    id is not reused while the group has members). Returns False when nothing matching ``expect`` was left
    to stop (a stale pid).
    """
    members = _live_members(pid, expect)
    if not members:
        return False
    tree = set(members)
    for member in members:
        tree |= _descendants(member)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)

    def remaining() -> list[int]:
        return sorted(set(_live_members(pid)) | {p for p in tree if _alive(p)})

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not remaining():
            return True
        time.sleep(0.1)
    left = remaining()
    logger.warning("processes %s ignored SIGTERM for %.0fs: SIGKILL", left, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for other in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(other, signal.SIGKILL)
    for _ in range(50):
        if not remaining():
            break
        time.sleep(0.1)
    return True


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str, start: int, taken: set[int] | frozenset[int] = frozenset(), limit: int = 200) -> int:
    for port in range(start, start + limit):
        if port not in taken and _port_free(host, port):
            return port
    raise RolloutError(f"no free port on {host} in {start}..{start + limit - 1}")


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------------------------------
# Bento store (read from disk: no bentoml import, so the store is always the one the settings name)


def bento_store_home(settings: Settings) -> Path:
    """The store the package step built into (CTPIPE_BENTOML_HOME / BENTOML_HOME, default HOME/bentoml)."""
    return settings.paths.bento_home


def _bento_dir(settings: Settings, tag: str) -> Path | None:
    name, _, version = tag.partition(":")
    base = bento_store_home(settings) / "bentos" / name
    if not version or version == "latest":
        latest = base / "latest"
        if not latest.is_file():
            return None
        version = latest.read_text().strip()
    path = base / version
    return path if (path / "bento.yaml").is_file() else None


def _bento_labels(path: Path) -> dict[str, str]:
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load((path / "bento.yaml").read_text()) or {}
    return {str(k): str(v) for k, v in (data.get("labels") or {}).items()}


def resolve_bento(settings: Settings, desired: DeployedModel) -> str:
    """The bento tag to serve for ``desired``; a clear RolloutError when it is not in the local store."""
    store = bento_store_home(settings) / "bentos"
    if desired.bento_tag:
        path = _bento_dir(settings, desired.bento_tag)
        if path is None:
            raise RolloutError(
                f"bento {desired.bento_tag!r} for {desired.model} v{desired.version} is not in the local bento "
                f"store {store} (build it with the pipeline, which builds into this store)"
            )
        return f"{path.parent.name}:{path.name}"
    # No tag in the manifest: the newest local bento labelled with this model + version.
    from ct_pipeline.adapters.bento import bento_model_name, sanitize_label

    candidates = []
    base = store / bento_model_name(desired.model)
    for path in base.glob("*/bento.yaml") if base.is_dir() else []:
        labels = _bento_labels(path.parent)
        if labels.get("model") == sanitize_label(desired.model) and labels.get("version") == sanitize_label(
            desired.version
        ):
            if desired.run_id and labels.get("run_id") not in (None, sanitize_label(desired.run_id)):
                continue
            candidates.append(path.parent)
    if not candidates:
        raise RolloutError(
            f"no bento for {desired.model} v{desired.version} in the local bento store {store} "
            "(the manifest names no bento_tag and none is labelled with this model and version)"
        )
    newest = max(candidates, key=lambda p: (p / "bento.yaml").stat().st_mtime)
    return f"{newest.parent.name}:{newest.name}"


# ---------------------------------------------------------------------------------------------------------
# Local runtime


class LocalRuntime:
    """Model servers and gateways as local processes (the stand-in for Flux + Kubernetes)."""

    # `bentoml serve` renames its arbiter process "circusd"; its workers run _bentoml_impl.worker.service
    MODEL_SERVER_MARK = ("bentoml", "circusd")
    GATEWAY_MARK = "gateway.app:app"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.paths.runtime_dir
        self.logs = self.dir / "logs"
        self.state_path = self.dir / "state.json"
        self.host = settings.serving.bind_host

    # -- state ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "state.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("models", {})
        data.setdefault("tokens", {})
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.chmod(0o600)  # holds the gateways' admin tokens
        os.replace(tmp, self.state_path)

    def _states(self, data: dict[str, Any]) -> dict[str, ServedState]:
        return {name: ServedState.model_validate(entry) for name, entry in data["models"].items()}

    def _taken_ports(self, data: dict[str, Any]) -> set[int]:
        ports = set()
        for st in self._states(data).values():
            ports.add(st.model_server.port)
            if st.gateway:
                ports.add(st.gateway.port)
        return ports

    # -- processes -----------------------------------------------------------------------------------------

    def _spawn(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n=== {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
            out.flush()
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.dir,
                start_new_session=True,
                close_fds=True,
            )

    def _wait_ready(self, proc: subprocess.Popen, url: str, log: Path, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RolloutError(
                    f"{what} exited with code {proc.returncode} before it was ready; log {log}:\n{_log_tail(log)}"
                )
            if _http_ok(url):
                return
            time.sleep(0.25)
        stop_process_group(proc.pid, timeout=5)
        raise RolloutError(f"{what} not ready at {url} after {timeout:.0f}s; log {log}:\n{_log_tail(log)}")

    def _start_model_server(self, desired: DeployedModel, bento_tag: str, taken: set[int]) -> ProcessInfo:
        # never the gateway port: that one is reserved for the first gateway
        port = free_port(
            self.host, self.settings.serving.model_server_base_port, taken | {self.settings.serving.gateway_port}
        )
        log = self.logs / f"{desired.model}-model-server-{port}.log"
        env = {
            # The model service's own defaults (BentoML adaptive batching on, CT_* settings) unless the
            # environment says otherwise: the gateway's batches and other callers' requests are merged there.
            **os.environ,
            **self.settings.child_env(),
        }
        cmd = [sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", self.host, "--port", str(port)]
        proc = self._spawn(cmd, env, log)
        url = f"http://{self.host}:{port}"
        what = f"model server for {desired.model} v{desired.version} ({bento_tag})"
        self._wait_ready(proc, f"{url}/readyz", log, what, MODEL_SERVER_READY_TIMEOUT)
        meta = self._model_server_metadata(url)
        if str(meta.get("version")) != str(desired.version):
            stop_process_group(proc.pid)
            raise RolloutError(
                f"bento {bento_tag} serves {meta.get('model')} v{meta.get('version')}, "
                f"but {desired.model} v{desired.version} is desired"
            )
        logger.info("started %s on %s (pid %s)", what, url, proc.pid)
        return ProcessInfo(pid=proc.pid, port=port, url=url, log=str(log), started_at=datetime.now(UTC))

    @staticmethod
    def _model_server_metadata(url: str) -> dict[str, Any]:
        import httpx

        resp = httpx.post(f"{url}/metadata", json={}, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def _start_gateway(self, model: str, upstream: str, token: str, taken: set[int], port: int | None) -> ProcessInfo:
        """Start a gateway on ``port`` (default: the configured gateway port, unless another model's has it)."""
        port = port or self.settings.serving.gateway_port
        if port in taken or not _port_free(self.host, port):
            if port == self.settings.serving.gateway_port and port not in taken:
                # the first gateway is where users (and `ctpipe predict`) expect it: do not move it silently
                raise RolloutError(
                    f"gateway port {self.host}:{port} is in use by another process (stop it or set CTPIPE_GATEWAY_PORT)"
                )
            port = free_port(self.host, self.settings.serving.gateway_port, taken)
        log = self.logs / f"{model}-gateway-{port}.log"
        env = {
            # prediction log (Parquet by hour, model= partitions) next to the other runtime state
            "CT_GATEWAY_PREDICTION_LOG_URI": self.settings.prediction_log_uri,
            # a part becomes readable when it is closed: the monitor sees a prediction this long after it is made
            "CT_GATEWAY_PREDICTION_LOG_ROLL_SECONDS": str(self.settings.serving.prediction_log_roll_seconds),
            **os.environ,
            "CT_GATEWAY_UPSTREAM_URL": upstream,
            "CT_GATEWAY_ADMIN_TOKEN": token,
        }
        cmd = [
            sys.executable, "-m", "uvicorn", self.GATEWAY_MARK, "--app-dir", str(self.settings.paths.serving_root),
            "--host", self.host, "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "10",
        ]  # fmt: skip
        proc = self._spawn(cmd, env, log)
        url = f"http://{self.host}:{port}"
        self._wait_ready(proc, f"{url}/readyz", log, f"gateway for {model}", GATEWAY_READY_TIMEOUT)
        logger.info("started gateway for %s on %s (pid %s) -> %s", model, url, proc.pid, upstream)
        return ProcessInfo(pid=proc.pid, port=port, url=url, log=str(log), started_at=datetime.now(UTC))

    def _gateway_upstream(self, gateway: ProcessInfo) -> str | None:
        import httpx

        try:
            resp = httpx.get(f"{gateway.url}/metadata", timeout=5)
        except httpx.HTTPError:
            return None
        return resp.json().get("upstream") if resp.status_code == 200 else None

    def _switch_gateway(self, gateway: ProcessInfo, upstream: str, token: str) -> dict[str, Any]:
        import httpx

        try:
            resp = httpx.put(
                f"{gateway.url}/admin/upstream",
                json={"url": upstream},
                headers={"Authorization": f"Bearer {token}"},
                timeout=120,
            )
        except httpx.HTTPError as exc:
            raise RolloutError(f"gateway {gateway.url} unreachable while switching to {upstream}: {exc}") from exc
        if resp.status_code != 200:
            raise RolloutError(
                f"gateway {gateway.url} refused the switch to {upstream}: {resp.status_code} {resp.text[:300]}"
            )
        return resp.json()

    def _server_ok(self, st: ServedState | None, bento_tag: str) -> bool:
        return (
            st is not None
            and st.bento_tag == bento_tag
            and pid_alive(st.model_server.pid, self.MODEL_SERVER_MARK)
            and _http_ok(f"{st.model_server.url}/readyz")
        )

    def _gateway_ok(self, st: ServedState | None) -> bool:
        return (
            st is not None
            and st.gateway is not None
            and pid_alive(st.gateway.pid, self.GATEWAY_MARK)
            and _http_ok(f"{st.gateway.url}/healthz")
        )

    # -- Runtime -------------------------------------------------------------------------------------------

    def apply(self, desired: DeployedModel) -> ServedState:
        bento_tag = resolve_bento(self.settings, desired)
        with self._locked():
            data = self._load()
            current = self._states(data).get(desired.model)
            token = data["tokens"].get(desired.model) or secrets.token_urlsafe(24)
            server_ok = self._server_ok(current, bento_tag)
            gateway_ok = self._gateway_ok(current)
            # (server_ok / gateway_ok imply a current state with those processes)
            if (
                current is not None
                and current.gateway is not None
                and server_ok
                and gateway_ok
                and self._gateway_upstream(current.gateway) == current.model_server.url
            ):
                return current.model_copy(update={"action": "unchanged", "healthy": True, "message": "up to date"})

            taken = self._taken_ports(data)
            if server_ok and current is not None:
                server = current.model_server
            else:
                server = self._start_model_server(desired, bento_tag, taken)
                taken.add(server.port)
            started_new = not server_ok
            try:
                if gateway_ok and current is not None and current.gateway is not None:
                    gateway = current.gateway
                    swap = self._switch_gateway(gateway, server.url, data["tokens"].get(desired.model, token))
                    message = f"gateway switched to {server.url} (drained: {swap.get('drained')})"
                else:
                    if current is not None and current.gateway is not None:
                        stop_process_group(current.gateway.pid, self.GATEWAY_MARK, timeout=10)
                    own_port = current.gateway.port if current and current.gateway else None
                    if own_port is not None:
                        taken.discard(own_port)  # reuse this model's gateway port once its old gateway is gone
                    gateway = self._start_gateway(desired.model, server.url, token, taken, own_port)
                    data["tokens"][desired.model] = token
                    message = f"gateway started on {gateway.url}"
            except Exception:
                if started_new:  # do not leave an orphan model server behind
                    stop_process_group(server.pid, self.MODEL_SERVER_MARK, timeout=10)
                raise

            action: Literal["started", "switched", "repaired"]
            if current is None:
                action = "started"
            elif current.version != desired.version or current.bento_tag != bento_tag:
                action = "switched"
            else:
                action = "repaired"
            if current is not None and current.model_server.pid != server.pid:
                time.sleep(STOP_GRACE)
                stop_process_group(current.model_server.pid, self.MODEL_SERVER_MARK)
                message += f"; stopped model server v{current.version} (pid {current.model_server.pid})"

            state = ServedState(
                model=desired.model,
                environment=desired.environment,
                version=desired.version,
                run_id=desired.run_id,
                data_hash=desired.data_hash,
                bento_tag=bento_tag,
                model_server=server,
                gateway=gateway,
                started_at=datetime.now(UTC) if started_new or current is None else current.started_at,
                action=action,
                healthy=True,
                message=message,
            )
            data["models"][desired.model] = state.model_dump(mode="json", exclude={"healthy", "message"})
            self._save(data)
            logger.info("%s v%s: %s (%s)", desired.model, desired.version, action, message)
            return state

    def status(self) -> list[ServedState]:
        data = self._load()
        out = []
        for st in self._states(data).values():
            server_alive = pid_alive(st.model_server.pid, self.MODEL_SERVER_MARK)
            gw_alive = bool(st.gateway and pid_alive(st.gateway.pid, self.GATEWAY_MARK))
            server = st.model_server.model_copy(update={"alive": server_alive})
            gateway = st.gateway.model_copy(update={"alive": gw_alive}) if st.gateway else None
            healthy = server_alive and gw_alive and st.gateway is not None and _http_ok(f"{st.gateway.url}/readyz")
            out.append(
                st.model_copy(
                    update={"model_server": server, "gateway": gateway, "action": "status", "healthy": healthy}
                )
            )
        return out

    def stop(self, model: str | None = None) -> list[ServedState]:
        with self._locked():
            data = self._load()
            stopped = []
            for name, st in list(self._states(data).items()):
                if model is not None and name != model:
                    continue
                if st.gateway is not None:
                    stop_process_group(st.gateway.pid, self.GATEWAY_MARK, timeout=15)
                stop_process_group(st.model_server.pid, self.MODEL_SERVER_MARK)
                data["models"].pop(name, None)
                data["tokens"].pop(name, None)
                stopped.append(st.model_copy(update={"action": "stopped", "healthy": None, "message": "stopped"}))
            self._save(data)
            return stopped


def reconcile(settings: Settings, desired: list[DeployedModel], runtime: Runtime | None = None) -> list[ServedState]:
    """Serve exactly the desired version of each desired model; returns the served state of each.

    Models that are served but not desired are left alone (no pruning). Nothing desired -> ``[]`` and a
    "nothing deployed yet" log line.
    """
    runtime = runtime or LocalRuntime(settings)
    if not desired:
        logger.info(NOTHING_DEPLOYED)
        return []
    names = [d.model for d in desired]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RolloutError(f"more than one desired entry for model(s) {duplicates}")
    return [runtime.apply(d) for d in desired]


def status(settings: Settings) -> list[ServedState]:
    return LocalRuntime(settings).status()


def stop_all(settings: Settings) -> list[ServedState]:
    """Stop every process recorded in state.json (stale pids are skipped); returns what was stopped."""
    return LocalRuntime(settings).stop()


def describe(states: list[ServedState]) -> str:
    """Human summary for the CLI."""
    if not states:
        return NOTHING_DEPLOYED
    lines = []
    for st in states:
        gw = st.gateway_url or "no gateway"
        health = "" if st.healthy is None else (" healthy" if st.healthy else " UNHEALTHY")
        lines.append(
            f"{st.model} v{st.version} [{st.bento_tag}] {st.action}{health}: {gw} -> "
            f"{st.model_server.url}{' (' + st.message + ')' if st.message else ''}"
        )
    return "\n".join(lines)
