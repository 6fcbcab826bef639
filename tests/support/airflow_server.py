"""A real Airflow 3 (api-server + scheduler + dag-processor, LocalExecutor, SQLite) on 127.0.0.1, for tests.

    with AirflowServer(tmp_path / "airflow", dags={"demo.py": SOURCE}) as airflow:
        airflow.wait_for_dag("demo")
        airflow.api_get("/api/v2/dags/demo/dagRuns")

The product's :class:`~ct_pipeline.adapters.local_airflow.LocalAirflow` (what ``ctpipe airflow up`` runs), on one
temporary AIRFLOW_HOME that also holds its state: the simple auth manager has one known user (admin/admin), the
api-server binds a free port (from 18080), this process' ``AIRFLOW__*`` variables are left out (the Makefile
exports some), and the DAGs given are written into ``<home>/dags``. Its logs are kept under the home and their
tails are shown when something does not come up.
"""

from __future__ import annotations

import time
from pathlib import Path

from ct_pipeline.adapters.local_airflow import REPO, LocalAirflow, airflow_binary
from ct_pipeline.adapters.local_runtime import free_port
from ct_pipeline.settings import load_settings

COMPONENTS = ("api-server", "scheduler", "dag-processor")
# quick re-parsing: tests write DAG files and wait for them
TEST_TUNING = {
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "3",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
}


class AirflowServer(LocalAirflow):
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
        home = Path(home)
        env = {**TEST_TUNING, **(env or {})}
        ctpipe_home = Path(env.get("CTPIPE_HOME") or home / "ctpipe")
        super().__init__(
            load_settings(paths={"home": ctpipe_home}),
            dags_folder=home / "dags",
            port=free_port("127.0.0.1", 18080),
            airflow_home=home,
            state_dir=home,
            username=username,
            password=password,
            users=users,
            env=env,
            inherit_airflow_env=False,
            startup_timeout=startup_timeout,
        )
        self._dags = dags or {}

    # -- lifecycle

    def start(self) -> AirflowServer:
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        for name, source in self._dags.items():
            (self.dags_folder / name).write_text(source)
        self.up()
        return self

    def stop(self) -> None:
        self.down()

    def __enter__(self) -> AirflowServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- waiting for the scheduler's work

    def wait_for_dag(self, dag_id: str, timeout: float = 90.0) -> dict:
        """The DAG once the dag-processor has parsed it (fails with its import errors, if any)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
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
            self.check_alive()
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


__all__ = ["COMPONENTS", "REPO", "AirflowServer", "airflow_binary"]
