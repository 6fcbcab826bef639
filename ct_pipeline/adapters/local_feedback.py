"""The alert bridge (``serving/alert_bridge``) as a managed local process, next to the local alerting stack.

:class:`LocalAlertBridge` starts ``uvicorn alert_bridge.app:app`` bound to 127.0.0.1 on a free port (from 8790)
in its own process group, with the environment that points it at the same stores as the CLI and at the Airflow
API the retrain requests go to (``CTPIPE_AIRFLOW_API_URL`` / ``_USERNAME`` / ``_PASSWORD`` or ``_TOKEN``); waits
for ``/healthz``; records pid, port, URL and the Airflow URL in ``<CTPIPE_HOME>/alert-bridge/state.json`` (log in
``logs/bridge.log``). Alertmanager's retrain receiver posts to ``<url>/alertmanager``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_pipeline.adapters.local_airflow import settings_env
from ct_pipeline.adapters.local_runtime import _port_free, free_port, pid_alive, stop_process_group
from ct_pipeline.adapters.state_file import locked, read_state, write_state
from ct_pipeline.errors import MonitoringError

if TYPE_CHECKING:
    from ct_pipeline.settings import AirflowSettings, Settings

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
FIRST_PORT = 8790
MARK = "alert_bridge.app:app"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _airflow_env(airflow: AirflowSettings) -> dict[str, str]:
    env = {"CTPIPE_AIRFLOW_API_URL": str(airflow.api_url), "CTPIPE_AIRFLOW_TIMEOUT": str(airflow.timeout)}
    if airflow.token:
        env["CTPIPE_AIRFLOW_TOKEN"] = airflow.token.get_secret_value()
    if airflow.username:
        env["CTPIPE_AIRFLOW_USERNAME"] = airflow.username
    if airflow.password:
        env["CTPIPE_AIRFLOW_PASSWORD"] = airflow.password.get_secret_value()
    return env


class LocalAlertBridge:
    """``up(airflow) -> url`` (idempotent for the same Airflow), ``down()``, ``status()``, ``url()`` (no network)."""

    def __init__(
        self,
        settings: Settings,
        *,
        port: int | None = None,
        first_port: int = FIRST_PORT,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.dir = settings.paths.home_dir / "alert-bridge"
        self.state_path = self.dir / "state.json"
        self.log = self.dir / "logs" / "bridge.log"
        self.port = port
        self.first_port = first_port
        self.ready_timeout = ready_timeout

    # -- public ------------------------------------------------------------------------------------------

    def up(self, airflow: AirflowSettings) -> str:
        """Start the bridge talking to ``airflow`` (or keep the running one when it already does); its URL."""
        if not airflow.api_url:
            raise MonitoringError(
                "the alert bridge needs an Airflow API: set CTPIPE_AIRFLOW_API_URL or run `ctpipe airflow up`"
            )
        with self._locked():
            state = self._read_state()
            if state and pid_alive(state.get("pid"), MARK):
                same = state.get("airflow_url") == airflow.api_url and state.get("airflow_username") == airflow.username
                if same and self._healthy(str(state["url"])):
                    return str(state["url"])
                stop_process_group(int(state["pid"]), MARK, timeout=STOP_TIMEOUT)
            port = self.port or (state or {}).get("port")
            if port is None or not _port_free(HOST, int(port)):
                if self.port is not None:
                    raise MonitoringError(f"port {HOST}:{self.port} for the alert bridge is in use by another process")
                port = free_port(HOST, self.first_port)
            return self._start(int(port), airflow)

    def down(self) -> bool:
        """Stop the bridge; False when it was not running."""
        with self._locked():
            state = self._read_state()
            if not state:
                return False
            stopped = bool(state.get("pid")) and stop_process_group(int(state["pid"]), MARK, timeout=STOP_TIMEOUT)
            state["pid"] = None
            state["stopped_at"] = datetime.now(UTC).isoformat()
            self._write_state(state)
            return stopped

    def url(self) -> str | None:
        """The running bridge's URL, None when it is not running (no network)."""
        state = self._read_state()
        return str(state["url"]) if state and pid_alive(state.get("pid"), MARK) else None

    def status(self) -> dict[str, Any]:
        state = self._read_state() or {}
        alive = pid_alive(state.get("pid"), MARK)
        return {
            "pid": state.get("pid"),
            "url": state.get("url"),
            "alive": alive,
            "ready": bool(alive and state.get("url") and self._healthy(str(state["url"]))),
            "airflow_url": state.get("airflow_url"),
            "log": str(self.log),
        }

    # -- internals ---------------------------------------------------------------------------------------

    def _start(self, port: int, airflow: AirflowSettings) -> str:
        url = f"http://{HOST}:{port}"
        # this process' environment without its Airflow login, the settings' stores, then this Airflow's
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTPIPE_AIRFLOW_")}
        env.update(settings_env(self.settings))
        env.update(_airflow_env(airflow))
        cmd = [
            sys.executable, "-m", "uvicorn", MARK, "--app-dir", str(self.settings.paths.serving_root),
            "--host", HOST, "--port", str(port), "--no-access-log",
        ]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"\n=== {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        state = {
            "pid": proc.pid,
            "port": port,
            "url": url,
            "airflow_url": airflow.api_url,
            "airflow_username": airflow.username,
            "log": str(self.log),
            "started_at": datetime.now(UTC).isoformat(),
        }
        self._write_state(state)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._write_state({**state, "pid": None})
                raise MonitoringError(
                    f"the alert bridge exited with code {proc.returncode} before it answered at {url}; "
                    f"log {self.log}:\n"
                    f"{_log_tail(self.log)}"
                )
            if self._healthy(url):
                logger.info("alert bridge up at %s (pid %s) -> Airflow %s", url, proc.pid, airflow.api_url)
                return url
            time.sleep(0.2)
        stop_process_group(proc.pid, MARK, timeout=STOP_TIMEOUT)
        self._write_state({**state, "pid": None})
        raise MonitoringError(
            f"the alert bridge did not answer {url}/healthz within {self.ready_timeout:.0f}s; log {self.log}:\n"
            f"{_log_tail(self.log)}"
        )

    @staticmethod
    def _healthy(url: str) -> bool:
        import httpx

        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.dir)

    def _read_state(self) -> dict[str, Any] | None:
        return read_state(self.state_path)

    def _write_state(self, state: Mapping[str, Any]) -> None:
        write_state(self.state_path, state)


__all__ = ["LocalAlertBridge"]
