"""The DAG file: one DAG per spec, tasks wired in loop order, and no heavy import at parse time."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["mlflow", "bentoml", "lightgbm", "sklearn", "pandas", "pyarrow", "numpy", "git", "docker"]


def test_dag_file_imports_nothing_heavy():
    code = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]); "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "dags" / "ct_models.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "CTPIPE_MODELS_DIR": str(REPO / "models")},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_one_dag_per_spec_with_the_loop_wired(tmp_path):
    import shutil

    from ct_pipeline.dag_factory import build_dags

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "models" / "fraud-detector.yaml", models)
    text = (REPO / "models" / "fraud-detector.yaml").read_text().replace("name: fraud-detector", "name: churn")
    (models / "churn.yaml").write_text(text.replace('schedule: "@daily"', "schedule: null"))
    dags = build_dags(models)
    assert sorted(dags) == ["ct_churn", "ct_fraud_detector"]
    dag = dags["ct_fraud_detector"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "sync": ["pull"],
        "pull": ["train"],
        "train": ["gate"],
        "gate": ["package", "promote", "promote_wanted"],
        "promote_wanted": ["package"],
        "package": ["promote"],
        "promote": [],
    }
    assert set(dag.params.keys()) == {"window", "end", "force", "reason", "requested_by"}
    assert dags["ct_churn"].schedule is None or str(dags["ct_churn"].timetable.summary) in (
        "None",
        "Never, external triggers only",
    )


def test_bad_spec_fails_the_dag_file_naming_the_field(tmp_path):
    import pytest

    from ct_pipeline.dag_factory import build_dags
    from ct_pipeline.domain.spec import SpecError

    (tmp_path / "bad.yaml").write_text(
        (REPO / "models" / "fraud-detector.yaml")
        .read_text()
        .replace("name: fraud-detector", "name: bad")
        .replace("window: 30d", "window: soon")
    )
    with pytest.raises(SpecError, match=r"data\.window"):
        build_dags(tmp_path)
