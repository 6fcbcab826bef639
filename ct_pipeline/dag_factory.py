"""One Airflow DAG per model spec. Tasks only wire steps: each is a thin call into ct_pipeline.pipeline.

Importing this module is cheap (airflow.sdk + the spec loader): the heavy libraries load inside tasks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ct_pipeline.domain.spec import ModelSpec, discover_specs, load_spec

DAG_PREFIX = "ct_"


def dag_id_for(spec: ModelSpec) -> str:
    return DAG_PREFIX + spec.name.replace("-", "_")


def _run_end(context: dict[str, Any], conf_end: str | None):
    """The window's end: conf override, else the run's data_interval_end (never 'now', so reruns repeat)."""
    from datetime import UTC, datetime

    if conf_end:
        end = datetime.fromisoformat(conf_end)
        return end if end.tzinfo else end.replace(tzinfo=UTC)
    end = context.get("data_interval_end") or context.get("logical_date") or context["dag_run"].run_after
    return datetime.fromisoformat(end.isoformat())


def build_dag(spec_path: Path):
    from airflow.sdk import Param, dag, get_current_context, task

    spec = load_spec(spec_path)
    spec_file = str(spec_path.resolve())

    def context_objects():
        from ct_pipeline.settings import Settings

        return load_spec(spec_file), Settings()

    @dag(
        dag_id=dag_id_for(spec),
        description=spec.description or f"continuous training of {spec.name}",
        schedule=spec.schedule,
        start_date=None,
        catchup=False,
        max_active_runs=1,
        tags=["ct-pipeline", spec.name],
        params={
            "window": Param(None, type=["null", "string"], description="override the spec's window, e.g. 14d"),
            "end": Param(
                None, type=["null", "string"], description="ISO end of the window (default: data_interval_end)"
            ),
            "force": Param(False, type="boolean", description="promote whatever the gate says"),
            "reason": Param(None, type=["null", "string"], description="required with force"),
            "requested_by": Param(None, type=["null", "string"]),
        },
        doc_md=f"Continuous training for **{spec.name}** (spec `{spec_path.name}`): sync -> pull -> train -> gate -> "
        'package -> promote. Trigger with conf `{"window": "14d", "force": true, "reason": "..."}`.',
    )
    def ct_dag():
        @task
        def sync() -> str:
            from ct_pipeline.pipeline import step_sync

            return step_sync(*context_objects())

        @task
        def pull(_synced: str) -> dict:
            from ct_pipeline.pipeline import step_pull

            context = get_current_context()
            params = context["params"]
            spec, settings = context_objects()
            return step_pull(spec, settings, _run_end(context, params.get("end")), params.get("window")).to_json_dict()

        @task
        def train(snapshot: dict) -> dict:
            from ct_pipeline.domain.records import WindowSnapshot
            from ct_pipeline.pipeline import step_train

            spec, settings = context_objects()
            return step_train(spec, settings, WindowSnapshot.model_validate(snapshot)).to_json_dict()

        @task
        def gate(trained: dict) -> dict:
            from ct_pipeline.domain.records import TrainResult
            from ct_pipeline.pipeline import step_gate

            params = get_current_context()["params"]
            spec, settings = context_objects()
            decision = step_gate(
                spec,
                settings,
                TrainResult.model_validate(trained),
                force=bool(params.get("force")),
                force_reason=params.get("reason"),
                forced_by=params.get("requested_by") or os.environ.get("USER"),
            )
            print(("PROMOTE: " if decision.promote else "NOT PROMOTED: ") + decision.reason)
            return decision.to_json_dict()

        @task.short_circuit
        def promote_wanted(decision: dict) -> bool:
            # "Not promoted" is a normal outcome: downstream tasks are skipped, the run still succeeds.
            return bool(decision["promote"])

        @task
        def package(decision: dict) -> dict:
            from ct_pipeline.domain.records import GateDecision
            from ct_pipeline.pipeline import step_package

            spec, settings = context_objects()
            return step_package(spec, settings, GateDecision.model_validate(decision)).to_json_dict()

        @task
        def promote(decision: dict, bento: dict) -> dict:
            from ct_pipeline.domain.records import BentoRef, GateDecision
            from ct_pipeline.pipeline import step_promote

            spec, settings = context_objects()
            record = step_promote(spec, settings, GateDecision.model_validate(decision), BentoRef.model_validate(bento))
            print(f"promotion {record.id} on branch {record.branch}: {record.title}")
            return record.to_json_dict()

        decision = gate(train(pull(sync())))
        wanted = promote_wanted(decision)
        bento = package(decision)
        wanted >> bento
        promote(decision, bento)

    return ct_dag()


def build_dags(models_dir: str | Path | None = None) -> dict[str, Any]:
    """All DAGs for the specs in models_dir (CTPIPE_MODELS_DIR, default ./models)."""
    models_dir = Path(models_dir or os.environ.get("CTPIPE_MODELS_DIR", "models"))
    dags = {}
    for path in discover_specs(models_dir):
        built = build_dag(path)
        dags[built.dag_id] = built
    return dags
