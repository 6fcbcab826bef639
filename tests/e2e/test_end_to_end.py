"""The used-by flow, with the real things and the commands a user types, in a throwaway CTPIPE_HOME:

Airflow DAG run -> promotion branch -> merge -> reconcile -> predict gives v_a
-> CLI run (forced) -> merge -> reconcile -> predict gives v_b -> git revert -> reconcile -> predict gives v_a,
and MLflow's champion follows Git at every step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROW = {
    "amount": 912.5,
    "hour": 3,
    "is_weekend": 1,
    "merchant_risk": 0.71,
    "distance_from_home_km": 240.0,
    "card_age_days": 12,
    "txn_count_24h": 9,
    "is_foreign": 1,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e") / "ctpipe"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CTPIPE_", "AIRFLOW", "MLFLOW_", "BENTOML_"))}
    environ.update(
        {
            "PATH": f"{BIN}:{environ.get('PATH', '')}",
            "CTPIPE_HOME": str(home),
            "CTPIPE_GATEWAY_PORT": "18711",
            "CTPIPE_MODEL_SERVER_BASE_PORT": "18720",
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
    )
    yield environ
    subprocess.run([str(BIN / "ctpipe"), "stop"], cwd=REPO, env=environ, capture_output=True, timeout=60)


def sh(env, *args, timeout=600) -> str:
    result = subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def ctpipe(env, *args, timeout=600) -> str:
    return sh(env, str(BIN / "ctpipe"), *args, timeout=timeout)


def promotions(env) -> list[dict]:
    return json.loads(ctpipe(env, "promotions", "list", "--json"))


def champion(env) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    store = f"sqlite:///{env['CTPIPE_HOME']}/mlflow.db"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not this process's default registry
    try:
        return str(client.get_model_version_by_alias("fraud-detector", "champion").version)
    except MlflowException:
        return None


def predict(env) -> dict:
    response = httpx.post(
        f"http://127.0.0.1:{env['CTPIPE_GATEWAY_PORT']}/predict", json={"rows": [ROW, ROW]}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 2 and 0.0 <= body["predictions"][0] <= 1.0
    return body


def test_loop_end_to_end(env):
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    ctpipe(env, "init")
    ctpipe(env, "demo-data", "--days", "45", "--rows-per-day", "800", "--end", end.date().isoformat())

    # 1. Airflow: a real `airflow dags test` of the generated DAG, with conf.
    sh(env, str(BIN / "airflow"), "db", "migrate")
    conf = json.dumps({"end": (end - timedelta(days=3)).isoformat(), "window": "30d"})
    log = sh(env, str(BIN / "airflow"), "dags", "test", "ct_fraud_detector", "-c", conf, timeout=900)
    assert "PROMOTE: no champion yet" in log
    [first] = promotions(env)
    assert first["status"] == "open" and first["branch"] == f"promote/fraud-detector/v{first['version']}"
    assert "no champion yet" in first["body"]
    version_a = first["version"]
    assert champion(env) is None  # nothing merged yet: the registry follows Git

    # 2. Review + merge; reconcile serves it.
    ctpipe(env, "promotions", "merge", first["id"])
    assert champion(env) == version_a
    ctpipe(env, "reconcile")
    body = predict(env)
    assert body["model"] == "fraud-detector" and str(body["version"]) == version_a

    # 3. A second promotion from the CLI (forced, with a reason), merged and rolled out.
    out = ctpipe(env, "run", "fraud-detector", "--end", end.isoformat(), "--force", "--reason", "e2e: exercise a swap")
    assert "promotion proposed" in out
    second = next(p for p in promotions(env) if p["status"] == "open")
    version_b = second["version"]
    assert version_b != version_a and "forced by" in second["body"]
    # The PR body carries the evidence: the champion-vs-challenger table, lineage, and plots on the branch.
    assert f"| Version | v{version_a} | **v{version_b}** |" in second["body"]
    assert "| `roc_auc` (↑ higher is better) |" in second["body"] and "CI" in second["body"]
    assert "**Lineage**" in second["body"] and "content hash `sha256:" in second["body"]
    on_branch = sh(
        env, "git", "--git-dir", f"{env['CTPIPE_HOME']}/gitops.git", "ls-tree", "-r", "--name-only", second["branch"]
    ).split()
    folder = f"promotions/fraud-detector/v{version_b}"
    assert {f"{folder}/curves.png", f"{folder}/delta_by_slice.png", f"{folder}/PR.md"} <= set(on_branch)
    assert "[curves.png](curves.png)" in second["body"]
    ctpipe(env, "promotions", "merge", second["id"])
    ctpipe(env, "reconcile")
    assert str(predict(env)["version"]) == version_b
    assert champion(env) == version_b

    # 4. Rollback = revert the promotion commit on main; reconcile brings the old model back.
    ctpipe(env, "rollback", "fraud-detector")
    assert champion(env) == version_a
    ctpipe(env, "reconcile")
    assert str(predict(env)["version"]) == version_a
    status = ctpipe(env, "status", "fraud-detector")
    assert "git, registry and serving agree" in status

    # The registry mirrors Git's history, and the rolled-back model cannot sneak back with the next run.
    from mlflow import MlflowClient

    store = f"sqlite:///{env['CTPIPE_HOME']}/mlflow.db"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not this process's default registry
    assert client.get_model_version("fraud-detector", version_b).tags["ct.rolled_back"] == "true"
    periods = json.loads(client.get_registered_model("fraud-detector").tags["ct.production_history.staging"])
    assert [(p["version"], p["cause"]) for p in periods] == [
        (version_a, "promote"),
        (version_b, "promote"),
        (version_a, "revert"),
    ]
    assert "rolled back" in ctpipe(env, "history", "fraud-detector")
    rerun = json.loads(ctpipe(env, "run", "fraud-detector", "--end", end.isoformat(), "--json"))
    assert rerun["status"] == "not_promoted"
    refused = next(c for c in rerun["decision"]["checks"] if c["name"] == "rolled_back")
    assert not refused["passed"] and f"as v{version_b}, which was rolled back" in refused["detail"]

    # 5. Bad input gets a 422 naming the field.
    bad = httpx.post(
        f"http://127.0.0.1:{env['CTPIPE_GATEWAY_PORT']}/predict", json={"rows": [{"amount": "lots"}]}, timeout=30
    )
    assert bad.status_code == 422
    assert "amount" in bad.text and "hour" in bad.text
