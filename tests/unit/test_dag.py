"""The DAG file: one DAG per spec, tasks wired in loop order.

(No heavy import at parse time, in a fresh interpreter: tests/integration/test_dag.py.)"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_one_dag_per_spec_with_the_loop_wired(tmp_path):
    import shutil

    from ct_pipeline.dag_factory import build_dags

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO / "models" / "fraud-detector.yaml", models)
    text = (REPO / "models" / "fraud-detector.yaml").read_text().replace("name: fraud-detector", "name: churn")
    (models / "churn.yaml").write_text(text.replace('schedule: "@daily"', "schedule: null"))
    dags = build_dags(models)
    assert sorted(dags) == ["ct_churn", "ct_churn_monitor", "ct_fraud_detector", "ct_fraud_detector_monitor"]
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
    # schedule: null -> retrained on its assets only (the monitor's retrain request, a new data partition)
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

    assert type(dags["ct_churn"].timetable) is AssetTriggeredTimetable


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
