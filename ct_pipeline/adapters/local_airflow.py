"""A real Airflow 3 on this machine: api-server + scheduler + dag-processor, LocalExecutor, SQLite, on 127.0.0.1.

:class:`LocalAirflow` is what ``ctpipe airflow up`` runs (and what the tests run, through
``tests/support/airflow_server.py``): ``airflow db migrate`` first, then the three components as detached process
groups on a free port (from 8080), the simple auth manager with one admin whose generated password is kept in a
0600 file under the home. The DAG tasks get the CLI's stores (``Settings.child_env`` plus every ``CTPIPE_*``
variable, resolved to absolute paths), so a run started by Airflow trains into the same MLflow, publishes to the
same GitOps remote and monitors the same prediction log as ``ctpipe run``.

Files: ``AIRFLOW_HOME`` (default ``<CTPIPE_HOME>/airflow``, or the environment's ``AIRFLOW_HOME``) holds the
SQLite DB and the component logs; ``<CTPIPE_HOME>/airflow/ctpipe-state.json`` records pids, URL, port, user and
the password file, so another process (``ctpipe airflow down``, :func:`airflow_settings`) finds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_pipeline.adapters.local_runtime import _cmdline, _port_free, free_port, pid_alive, stop_process_group
from ct_pipeline.adapters.state_file import locked, read_state, write_state
from ct_pipeline.errors import MonitoringError

if TYPE_CHECKING:
    import httpx

    from ct_pipeline.settings import AirflowSettings, Settings

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
FIRST_PORT = 8080
COMPONENTS = ("api-server", "scheduler", "dag-processor")
MARK = "airflow"  # every component's command line contains it (guards against pid reuse)
STATE_FILE = "ctpipe-state.json"
PASSWORDS_FILE = "passwords.json"
ADMIN = "admin"
STARTUP_TIMEOUT = 180.0
MIGRATE_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0
HEALTH_PATH = "/api/v2/monitor/health"
AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"

# Defaults the environment may override (AIRFLOW__... wins over these).
DEFAULTS = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__API__WORKERS": "1",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
}


@dataclass(frozen=True)
class AirflowEndpoints:
    """Where the local Airflow answers and the admin login (the UI and the REST API v2)."""

    url: str
    username: str
    password: str = field(repr=False)

    def airflow_settings(self, timeout: float = 10.0) -> AirflowSettings:
        from pydantic import SecretStr

        from ct_pipeline.settings import AirflowSettings

        return AirflowSettings(
            api_url=self.url, username=self.username, password=SecretStr(self.password), timeout=timeout
        )


def airflow_binary() -> str:
    """The ``airflow`` command of this environment (next to the running Python first)."""
    found = shutil.which("airflow", path=str(Path(sys.executable).parent)) or shutil.which("airflow")
    if not found:
        raise MonitoringError(
            "the `airflow` command is not installed in this environment (apache-airflow>=3 is a dependency: "
            "run `make venv`)"
        )
    return found


def airflow_settings(settings: Settings) -> AirflowSettings | None:
    """The Airflow API the feedback loop talks to: the configured one (``CTPIPE_AIRFLOW_API_URL``), else the
    running local Airflow's (``ctpipe airflow up``), else None. Cheap: a state file and pids, no network."""
    if settings.airflow.api_url:
        return settings.airflow
    endpoints = LocalAirflow(settings).endpoints()
    return endpoints.airflow_settings(settings.airflow.timeout) if endpoints else None


def component_alive(pid: int | None) -> bool:
    """A live (non-zombie) Airflow process. Its command line is read empty while it execs or retitles itself
    (setproctitle), so empty counts as alive; anything else must name airflow (guards against pid reuse)."""
    if not pid or not pid_alive(pid):
        return False
    cmdline = _cmdline(pid)
    return not cmdline.strip() or MARK in cmdline


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (0600 from the start, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def _local_path(value: str) -> str:
    """A relative local path resolved against this process' working directory (children run elsewhere)."""
    if "://" in value or value.startswith(("git@", "/")) or ":" in value.split("/")[0]:
        return value
    return str(Path(value).expanduser().resolve())


def settings_env(settings: Settings) -> dict[str, str]:
    """What a child process (an Airflow task, the alert bridge) needs to use the same stores as this process:
    ``Settings.child_env`` and the resolved paths/URLs as ``CTPIPE_*`` (absolute: children run elsewhere)."""
    env = dict(settings.child_env())
    paths = settings.paths
    env.update(
        {
            "CTPIPE_MODELS_DIR": str(paths.models_dir.expanduser().resolve()),
            "CTPIPE_DATA_DIR": str(paths.data_root),
            "CTPIPE_BENTOML_HOME": str(paths.bento_home),
            "CTPIPE_SERVING_DIR": str(paths.serving_root),
            "CTPIPE_GITOPS_REMOTE": _local_path(settings.gitops_remote_url),
            "CTPIPE_PREDICTION_LOG_URI": _local_path(settings.prediction_log_uri),
            "CTPIPE_REPORTS_DIR": str(settings.reports_dir),
        }
    )
    monitoring = settings.monitoring
    for name, value in (
        ("CTPIPE_PUSHGATEWAY_URL", monitoring.pushgateway_url),
        ("CTPIPE_PROMETHEUS_URL", monitoring.prometheus_url),
        ("CTPIPE_ALERTMANAGER_URL", monitoring.alertmanager_url),
    ):
        if value:
            env[name] = value
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
    return env


class LocalAirflow:
    """The local Airflow: ``up()`` -> :class:`AirflowEndpoints` (idempotent), ``down()``, ``status()``,
    ``endpoints()`` (no network).

    ``dags_folder`` defaults to the repository's ``dags/``; ``port`` to the first free one from ``first_port``;
    ``airflow_home`` to the environment's ``AIRFLOW_HOME``, else ``<CTPIPE_HOME>/airflow``; ``state_dir`` (where
    ``ctpipe-state.json``, the password file and the secrets live) to ``<CTPIPE_HOME>/airflow``. ``password``:
    the admin's (default: generated once and kept); ``users``: more simple-auth-manager users,
    ``name -> (role, password)`` with role viewer|user|op|admin. ``env``: more variables for the components;
    ``inherit_airflow_env=False`` drops this process' ``AIRFLOW__*`` variables (the tests' isolation).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        dags_folder: Path | str | None = None,
        port: int | None = None,
        airflow_home: Path | str | None = None,
        state_dir: Path | str | None = None,
        username: str = ADMIN,
        password: str | None = None,
        users: Mapping[str, tuple[str, str]] | None = None,
        env: Mapping[str, str] | None = None,
        inherit_airflow_env: bool = True,
        first_port: int = FIRST_PORT,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir or settings.paths.home_dir / "airflow").expanduser().resolve()
        self.state_path = self.state_dir / STATE_FILE
        self.passwords_path = self.state_dir / PASSWORDS_FILE
        home = airflow_home or os.environ.get("AIRFLOW_HOME") or settings.paths.home_dir / "airflow"
        self.home = Path(home).expanduser().resolve()
        self.dags_folder = Path(dags_folder or REPO / "dags").expanduser().resolve()
        self.port = port
        self.first_port = first_port
        self.username = username
        self._password = password
        self._users = dict(users or {})
        self._extra_env = dict(env or {})
        self.inherit_airflow_env = inherit_airflow_env
        self.startup_timeout = startup_timeout
        self.timings: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._token: str | None = None

    # -- configuration -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            state = self._read_state() or {}
            if not state.get("port"):
                raise MonitoringError(f"the local Airflow is not running ({self.state_path})")
            self.port = int(state["port"])
        return f"http://{HOST}:{self.port}"

    @property
    def password(self) -> str:
        return self._passwords().get(self.username) or self._password or ""

    def log_path(self, component: str) -> Path:
        return self.home / "logs" / f"{component}.log"

    def log_tail(self, component: str, lines: int = 30) -> str:
        return _log_tail(self.log_path(component), lines)

    def env(self, port: int) -> dict[str, str]:
        """The components' environment: this process' (minus ``AIRFLOW__*`` when not inherited), the settings'
        stores, the defaults above unless overridden, ``env``, then what must match this instance."""
        url = f"http://{HOST}:{port}"
        env = {k: v for k, v in os.environ.items() if self.inherit_airflow_env or not k.startswith("AIRFLOW__")}
        env.update(settings_env(self.settings))
        for key, value in DEFAULTS.items():
            env.setdefault(key, value)
        env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{self.home / 'airflow.db'}")
        env.update(self._extra_env)
        roles = {self.username: ADMIN, **{name: role for name, (role, _) in self._users.items()}}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
                "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in roles.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_path),
                "AIRFLOW__API__HOST": HOST,
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__BASE_URL": url,
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt"),
                "AIRFLOW__API__SECRET_KEY": self._secret("api"),
            }
        )
        return env

    def _secret(self, name: str) -> str:
        path = self.state_dir / f".{name}-secret"
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(32))
        return path.read_text()

    def _passwords(self) -> dict[str, str]:
        try:
            data = json.loads(self.passwords_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write_passwords(self) -> None:
        """The simple auth manager's passwords file (0600): the admin's (given, kept, or generated) and others'."""
        current = self._passwords()
        admin = self._password or current.get(self.username) or secrets.token_urlsafe(12)
        wanted = {self.username: admin, **{name: pw for name, (_, pw) in self._users.items()}}
        if wanted != current:
            _write_private(self.passwords_path, json.dumps(wanted, indent=2) + "\n")
        self.passwords_path.chmod(0o600)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def up(self) -> AirflowEndpoints:
        """Start the components (``airflow db migrate`` first) and wait until healthy; when they are already
        running, the same endpoints. Raises MonitoringError with the logs' tails when something does not come up."""
        with self._locked():
            state = self._read_state()
            if state and self._all_alive(state):
                self.port = int(state["port"])
                self._wait_healthy(state)
                return self._endpoints(state)
            if state and state.get("pids"):  # some component died: restart all (they share the port)
                logger.warning("the local Airflow is partly down (%s): restarting it", self._dead(state))
                self._stop_all(state)
            return self._start()

    def down(self) -> bool:
        """Stop every component (their process groups, with the task processes); False when none was running."""
        with self._locked():
            state = self._read_state()
            if not state:
                return False
            stopped = self._stop_all(state)
            state["pids"] = {}
            state["stopped_at"] = datetime.now(UTC).isoformat()
            self._write_state(state)
            self._procs.clear()
            return stopped

    def endpoints(self) -> AirflowEndpoints | None:
        """The running Airflow's URL and login; None when it is not running. No network."""
        state = self._read_state()
        if not state or not self._all_alive(state):
            return None
        return self._endpoints(state)

    def status(self) -> dict[str, Any]:
        """URL, login, files and per component pid/alive; ``healthy`` from the health endpoint (when alive)."""
        state = self._read_state() or {}
        pids = state.get("pids") or {}
        components = {name: {"pid": pids.get(name), "alive": component_alive(pids.get(name))} for name in COMPONENTS}
        running = bool(pids) and all(c["alive"] for c in components.values())
        health = self._health(state["url"]) if running and state.get("url") else {}
        return {
            "running": running,
            "healthy": _is_healthy(health),
            "health": health,
            "url": state.get("url"),
            "username": state.get("username"),
            "password_file": state.get("password_file"),
            "airflow_home": state.get("airflow_home"),
            "dags_folder": state.get("dags_folder"),
            "components": components,
        }

    def check_alive(self) -> None:
        """Raise MonitoringError naming the first component that is not running, with its log's tail."""
        state = self._read_state() or {}
        for name in COMPONENTS:
            pid = (state.get("pids") or {}).get(name)
            proc = self._procs.get(name)
            alive = proc.poll() is None if proc is not None and proc.pid == pid else component_alive(pid)
            if not alive:
                code = f" with code {proc.returncode}" if proc is not None and proc.returncode is not None else ""
                raise MonitoringError(
                    f"airflow {name} (pid {pid}) exited{code}; log {self.log_path(name)}:\n{self.log_tail(name)}"
                )

    # -- the REST API, as the admin ------------------------------------------------------------------------

    def token(self) -> str:
        import httpx

        if self._token is None:
            resp = httpx.post(
                f"{self.url}/auth/token", json={"username": self.username, "password": self.password}, timeout=10
            )
            resp.raise_for_status()
            self._token = str(resp.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        import httpx

        headers = {"Authorization": f"Bearer {self.token()}", **(headers or {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=15, **kwargs)

    def api_get(self, path: str, **params: Any) -> Any:
        resp = self.api("GET", path, params=params)
        resp.raise_for_status()
        return resp.json()

    # -- internals ---------------------------------------------------------------------------------------

    def _start(self) -> AirflowEndpoints:
        started = time.monotonic()
        airflow = airflow_binary()
        if not self.dags_folder.is_dir():
            raise MonitoringError(f"the DAGs folder {self.dags_folder} does not exist")
        port = self.port
        if port is None:
            port = free_port(HOST, self.first_port)
        elif not _port_free(HOST, port):
            raise MonitoringError(f"port {HOST}:{port} for the Airflow api-server is in use by another process")
        self.port = port
        url = f"http://{HOST}:{port}"
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self._write_passwords()
        env = self.env(port)
        migrate_log = self.log_path("db-migrate")
        try:
            migrate = subprocess.run(
                [airflow, "db", "migrate"],
                env=env,
                cwd=self.home,
                capture_output=True,
                text=True,
                timeout=MIGRATE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise MonitoringError(
                f"`airflow db migrate` did not finish in {MIGRATE_TIMEOUT:.0f}s ({self.home})"
            ) from None
        migrate_log.write_text(migrate.stdout + migrate.stderr)
        if migrate.returncode != 0:
            tail = "\n".join((migrate.stdout + migrate.stderr).splitlines()[-30:])
            raise MonitoringError(f"`airflow db migrate` failed in {self.home} (log {migrate_log}):\n{tail}")
        self.timings["db_migrate_s"] = round(time.monotonic() - started, 1)
        state: dict[str, Any] = {
            "url": url,
            "port": port,
            "username": self.username,
            "password_file": str(self.passwords_path),
            "airflow_home": str(self.home),
            "dags_folder": str(self.dags_folder),
            "logs": {name: str(self.log_path(name)) for name in COMPONENTS},
            "pids": {},
            "started_at": datetime.now(UTC).isoformat(),
        }
        try:
            for name in COMPONENTS:
                log = self.log_path(name)
                with open(log, "ab") as out:
                    out.write(f"\n=== {datetime.now(UTC).isoformat()} airflow {name} on {url}\n".encode())
                    out.flush()
                    proc = subprocess.Popen(
                        [airflow, name],
                        env=env,
                        cwd=self.home,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: stopped with everything it forks
                        close_fds=True,
                    )
                self._procs[name] = proc
                state["pids"][name] = proc.pid
            self._write_state(state)
            self._wait_healthy(state)
        except BaseException:
            self._stop_all(state)
            state["pids"] = {}
            self._write_state(state)
            raise
        self.timings["started_s"] = round(time.monotonic() - started, 1)
        logger.info("Airflow up at %s in %.0fs (home %s)", url, time.monotonic() - started, self.home)
        return self._endpoints(state)

    def _wait_healthy(self, state: Mapping[str, Any]) -> None:
        url = str(state["url"])
        deadline = time.monotonic() + self.startup_timeout
        last: Any = ""
        while time.monotonic() < deadline:
            self.check_alive()
            health = self._health(url)
            if _is_healthy(health) and self._ours(state):
                return
            last = health or "no answer"
            time.sleep(1)
        tails = "\n".join(f"{name} log:\n{self.log_tail(name, 15)}" for name in COMPONENTS)
        raise MonitoringError(
            f"Airflow at {url} did not become healthy in {self.startup_timeout:.0f}s (last: {last}); {tails}"
        )

    @staticmethod
    def _ours(state: Mapping[str, Any]) -> bool:
        """The port is served by this api-server (or its workers), not by another process that took it between
        choosing the port and binding it: a health answer from someone else's Airflow is not ours."""
        import psutil

        pid = (state.get("pids") or {}).get("api-server")
        if not pid:
            return False
        try:
            tree = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
            listeners = {
                c.pid
                for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == int(state["port"])
            }
        except (psutil.Error, OSError):
            return False
        return bool(tree & listeners)

    @staticmethod
    def _health(url: str) -> dict[str, Any]:
        import httpx

        try:
            resp = httpx.get(f"{url}{HEALTH_PATH}", timeout=5)
            return resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}

    def _endpoints(self, state: Mapping[str, Any]) -> AirflowEndpoints:
        username = str(state.get("username") or self.username)
        try:
            passwords = json.loads(Path(state.get("password_file") or self.passwords_path).read_text())
        except (OSError, ValueError):
            passwords = {}
        return AirflowEndpoints(url=str(state["url"]), username=username, password=str(passwords.get(username, "")))

    def _all_alive(self, state: Mapping[str, Any]) -> bool:
        pids = state.get("pids") or {}
        return all(component_alive(pids.get(name)) for name in COMPONENTS)

    def _dead(self, state: Mapping[str, Any]) -> list[str]:
        pids = state.get("pids") or {}
        return [name for name in COMPONENTS if not component_alive(pids.get(name))]

    def _stop_all(self, state: Mapping[str, Any]) -> bool:
        stopped = False
        # the scheduler and the dag-processor first: they talk to the api-server's Execution API
        for name in ("scheduler", "dag-processor", "api-server"):
            pid = (state.get("pids") or {}).get(name)
            if pid and stop_process_group(pid, MARK, timeout=STOP_TIMEOUT):
                stopped = True
            proc = self._procs.pop(name, None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        return stopped

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.state_dir)

    def _read_state(self) -> dict[str, Any] | None:
        return read_state(self.state_path)

    def _write_state(self, state: Mapping[str, Any]) -> None:
        write_state(self.state_path, state)


def _is_healthy(health: Mapping[str, Any]) -> bool:
    return all((health.get(part) or {}).get("status") == "healthy" for part in ("metadatabase", "scheduler"))


__all__ = ["AirflowEndpoints", "LocalAirflow", "airflow_binary", "airflow_settings", "settings_env"]
