"""A real Airflow 3 (api-server + scheduler + dag-processor, LocalExecutor, SQLite) on 127.0.0.1, for tests.

    with AirflowServer(tmp_path / "airflow", dags={"demo.py": SOURCE}) as airflow:
        airflow.wait_for_dag("demo")
        airflow.api_get("/api/v2/dags/demo/dagRuns")

Everything lives under one temporary AIRFLOW_HOME; the simple auth manager has one known user (admin/admin),
the api-server binds a free port, and the scheduler's task runner reaches the Execution API on it. The components
are started and stopped by this object (by their own process groups); their logs are kept under the home and
their tails are shown when something does not come up.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def _free_port() -> int:
    from ct_pipeline.adapters.local_runtime import free_port

    return free_port("127.0.0.1", 18080)


def airflow_binary() -> str:
    found = shutil.which("airflow", path=str(Path(sys.executable).parent)) or shutil.which("airflow")
    if not found:
        raise RuntimeError(
            "the `airflow` command is not installed in this environment (apache-airflow>=3 is a dependency: "
            "run `make install`)"
        )
    return found


class AirflowServer:
    def __init__(
        self,
        home: Path,
        dags: dict[str, str] | None = None,
        *,
        username: str = "admin",
        password: str = "admin",
        users: dict[str, tuple[str, str]] | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        self.home = Path(home)
        self.dags_folder = self.home / "dags"
        self.username, self.password = username, password
        # more simple-auth-manager users: name -> (role: viewer|user|op|admin, password)
        self.users = {username: ("admin", password), **(users or {})}
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self._dags = dags or {}
        self._extra_env = env or {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._token: str | None = None
        self.timings: dict[str, float] = {}

    # -- configuration

    @property
    def env(self) -> dict[str, str]:
        passwords = self.home / "passwords.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager."
                "SimpleAuthManager",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, (r, _) in self.users.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt"),
                "AIRFLOW__API__SECRET_KEY": self._secret("api"),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "3",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
                "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),
            }
        )
        env.update(self._extra_env)
        return env

    def _secret(self, name: str) -> str:
        path = self.home / f".{name}-secret"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text()

    def log_path(self, component: str) -> Path:
        return self.home / f"{component}.log"

    def log_tail(self, component: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(component).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- lifecycle

    def start(self) -> AirflowServer:
        started = time.monotonic()
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({u: p for u, (_, p) in self.users.items()}))
        for name, source in self._dags.items():
            (self.dags_folder / name).write_text(source)
        airflow = airflow_binary()
        migrate = subprocess.run(
            [airflow, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=180, cwd=self.home
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"`airflow db migrate` failed in {self.home}:\n{migrate.stderr[-3000:]}")
        self.timings["db_migrate_s"] = round(time.monotonic() - started, 1)
        for component in COMPONENTS:
            log = self.log_path(component).open("ab")
            self._procs[component] = subprocess.Popen(
                [airflow, component],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with everything it forked
            )
        self._wait_healthy()
        self.timings["started_s"] = round(time.monotonic() - started, 1)
        return self

    def _check_alive(self) -> None:
        for component, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"airflow {component} exited with {proc.returncode}; log tail:\n{self.log_tail(component)}"
                )

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                resp = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5)
                health = resp.json() if resp.status_code == 200 else {}
                if health.get("metadatabase", {}).get("status") == "healthy" and (
                    health.get("scheduler", {}).get("status") == "healthy"
                ):
                    return
                last = str(health or resp.status_code)
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(1)
        raise RuntimeError(
            f"Airflow at {self.url} did not become healthy in {self.startup_timeout:.0f}s (last: {last}); "
            f"api-server log:\n{self.log_tail('api-server')}\nscheduler log:\n{self.log_tail('scheduler')}"
        )

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self._procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        self._procs.clear()

    def __enter__(self) -> AirflowServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the REST API, as an admin

    def token(self) -> str:
        if self._token is None:
            resp = httpx.post(
                f"{self.url}/auth/token", json={"username": self.username, "password": self.password}, timeout=10
            )
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **(headers or {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=15, **kwargs)

    def api_get(self, path: str, **params: Any) -> Any:
        resp = self.api("GET", path, params=params)
        resp.raise_for_status()
        return resp.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 90.0) -> dict:
        """The DAG once the dag-processor has parsed it (fails with its import errors, if any)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            resp = self.api("GET", f"/api/v2/dags/{dag_id}")
            if resp.status_code == 200:
                return resp.json()
            time.sleep(1)
        errors = self.api_get("/api/v2/importErrors")
        raise AssertionError(
            f"DAG {dag_id} was not parsed within {timeout:.0f}s; import errors: {errors}; dag-processor log:\n"
            f"{self.log_tail('dag-processor')}"
        )

    def trigger_dag(self, dag_id: str, conf: dict | None = None) -> dict:
        resp = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        resp.raise_for_status()
        return resp.json()

    def wait_for_runs(self, dag_id: str, count: int = 1, timeout: float = 120.0) -> list[dict]:
        """The DAG's first ``count`` runs once they have finished (success or failed)."""
        deadline = time.monotonic() + timeout
        runs: list[dict] = []
        while time.monotonic() < deadline:
            self._check_alive()
            runs = self.api_get(f"/api/v2/dags/{dag_id}/dagRuns", order_by="run_after")["dag_runs"]
            finished = [r for r in runs if r["state"] in ("success", "failed")]
            if len(finished) >= count:
                return finished
            time.sleep(1)
        raise AssertionError(
            f"{dag_id}: {count} finished run(s) expected within {timeout:.0f}s, got {[r['state'] for r in runs]}; "
            f"scheduler log:\n{self.log_tail('scheduler')}"
        )

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        resp = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            headers={"Accept": "text/plain"},
        )
        return resp.text


__all__ = ["AirflowServer", "airflow_binary"]
