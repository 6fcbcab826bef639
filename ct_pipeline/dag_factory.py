"""One Airflow DAG per model spec, generated from the step table: each step is one task, each step with a halt
adds a short-circuit task. Tasks only wire steps; records cross XCom as JSON and are validated back into their
types by the table's ``output`` classes.

Importing this module is cheap (airflow.sdk + the spec loader): the heavy libraries load inside tasks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ct_pipeline.domain.spec import ModelSpec, discover_specs, load_spec
from ct_pipeline.steps import STEPS, Step, step

DAG_PREFIX = "ct_"


def dag_id_for(spec: ModelSpec) -> str:
    return DAG_PREFIX + spec.name.replace("-", "_")


def _run_end(context: Any, conf_end: str | None):
    """The window's end: conf override, else the run's data_interval_end (never 'now', so reruns repeat)."""
    from datetime import UTC, datetime

    if conf_end:
        end = datetime.fromisoformat(conf_end)
        return end if end.tzinfo else end.replace(tzinfo=UTC)
    end = context.get("data_interval_end") or context.get("logical_date") or context["dag_run"].run_after
    return datetime.fromisoformat(end.isoformat())


def run_task(spec_file: str, step_name: str, *upstream: dict) -> dict:
    """The body of every step task: settings and context built once (this is the task's edge), the upstream
    records validated from XCom JSON, the step run, its record returned as JSON."""
    from airflow.sdk import get_current_context

    from ct_pipeline.domain.records import RunRequest
    from ct_pipeline.settings import load_settings
    from ct_pipeline.wiring import build_context

    context = get_current_context()
    params = context["params"]
    request = RunRequest(
        end=_run_end(context, params.get("end")),
        window=params.get("window"),
        force=bool(params.get("force")),
        reason=params.get("reason"),
        requested_by=params.get("requested_by") or os.environ.get("USER"),
    )
    ctx = build_context(load_spec(spec_file), load_settings(), request)
    this = step(step_name)
    inputs = [step(name).output.model_validate(data) for name, data in zip(this.inputs, upstream, strict=True)]
    record = this.run(ctx, *inputs)
    print(f"{step_name}: {this.describe(record, ctx.spec)}")
    return record.to_json_dict()


def _task_for(airflow_task: Any, spec_file: str, entry: Step):
    def run(*upstream: dict) -> dict:
        return run_task(spec_file, entry.name, *upstream)

    run.__name__ = entry.name
    run.__doc__ = (entry.run.__doc__ or "").strip() or f"the {entry.name} step"
    return airflow_task(task_id=entry.name)(run)


def _halt_for(airflow_task: Any, entry: Step):
    assert entry.halt is not None
    halt = entry.halt

    def proceed(record: dict) -> bool:
        # A halt is a normal outcome: downstream tasks are skipped, the run still succeeds.
        return halt.proceed(entry.output.model_validate(record))

    proceed.__name__ = halt.task_id
    return airflow_task.short_circuit(task_id=halt.task_id)(proceed)


def build_dag(spec_path: Path) -> Any:
    from airflow.sdk import Param, dag, task

    spec = load_spec(spec_path)
    spec_file = str(spec_path.resolve())
    loop = " -> ".join(s.name for s in STEPS)

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
        doc_md=f"Continuous training for **{spec.name}** (spec `{spec_path.name}`): {loop}. "
        'Trigger with conf `{"window": "14d", "force": true, "reason": "..."}`.',
    )
    def ct_dag() -> None:
        outputs: dict[str, Any] = {}
        previous: Any = None
        pending_halt: Any = None  # a short-circuit gates the next step; skipping then cascades downstream
        for entry in STEPS:
            produced = _task_for(task, spec_file, entry)(*(outputs[name] for name in entry.inputs))
            if not entry.inputs and previous is not None:
                previous >> produced  # a step without inputs still runs in loop order
            if pending_halt is not None:
                pending_halt >> produced
                pending_halt = None
            if entry.halt is not None:
                pending_halt = _halt_for(task, entry)(produced)
            outputs[entry.name] = previous = produced

    return ct_dag()


def build_dags(models_dir: str | Path | None = None) -> dict[str, Any]:
    """All DAGs for the specs in models_dir (default: the settings' CTPIPE_MODELS_DIR, ./models)."""
    if models_dir is None:
        from ct_pipeline.settings import PathsSettings

        models_dir = PathsSettings().models_dir
    models_dir = Path(models_dir)
    dags = {}
    for path in discover_specs(models_dir):
        built = build_dag(path)
        dags[built.dag_id] = built
    return dags
