"""Two Airflow DAGs per model spec.

``ct_<model>``, the training loop, generated from the step table: each step is one task, each step with a halt
adds a short-circuit task. Tasks only wire steps; records cross XCom as JSON and are validated back into their
types by the table's ``output`` classes. It runs on the spec's cron OR on an event of the model's retrain or data
asset (``AssetOrTimeSchedule``); ``schedule: null`` in the spec = assets only. A run started by an asset event
carries the event's reason into ``RunRequest.trigger`` (and so into the promotion body).

``ct_<model>_monitor``, on ``monitoring.schedule``: ``monitor`` (the monitor step, a MonitorReport) ->
``retrain_wanted`` (short-circuit: a retrain breach, not suppressed by cooldown / an open promotion) ->
``request_retrain``, whose outlet is the retrain asset: the event it emits starts the training DAG, no REST.

Both DAGs alert Alertmanager on failure (:mod:`ct_pipeline.notify`). Importing this module is cheap (airflow.sdk
+ the spec loader): the heavy libraries load inside tasks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ct_pipeline.domain.assets import (
    ASSET_GROUP,
    AssetKind,
    TriggerEvent,
    asset_name,
    asset_uri,
    describe_trigger,
)
from ct_pipeline.domain.spec import ModelSpec, discover_specs, load_spec
from ct_pipeline.errors import SpecError
from ct_pipeline.steps import STEPS, Step, step

DAG_PREFIX = "ct_"
MONITOR_SUFFIX = "_monitor"
# The monitor step, resolved when the monitor task runs ("module:function"; tests point it at a fake).


def dag_id_for(spec: ModelSpec) -> str:
    return DAG_PREFIX + spec.name.replace("-", "_")


def monitor_dag_id_for(spec: ModelSpec) -> str:
    return dag_id_for(spec) + MONITOR_SUFFIX


def model_asset(model: str, kind: AssetKind) -> Any:
    """The ``airflow.sdk.Asset`` of one of the model's assets (same name/URI/group everywhere)."""
    from airflow.sdk import Asset

    return Asset(name=asset_name(model, kind), uri=asset_uri(model, kind), group=ASSET_GROUP)


def cron_timetable(spec: ModelSpec, schedule: str) -> Any:
    """A cron trigger in UTC that never fires for a tick missed before the DAG existed (or was unpaused): a
    deployment is not a reason to retrain. (Airflow's default runs the last tick when it is < 10% of a period
    old.)"""
    from datetime import timedelta

    from airflow.sdk import CronTriggerTimetable

    try:
        return CronTriggerTimetable(schedule, timezone="UTC", run_immediately=timedelta(0))
    except Exception as exc:  # croniter / Airflow's own validation, worded for the spec
        raise SpecError(f"model spec {spec.name}: schedule {schedule!r} is not a cron expression: {exc}") from None


def training_schedule(spec: ModelSpec) -> Any:
    """The spec's cron OR an event of the retrain or data asset; assets only when the spec has no schedule."""
    from airflow.sdk import AssetOrTimeSchedule

    assets = model_asset(spec.name, "retrain") | model_asset(spec.name, "data")
    if spec.schedule is None:
        return assets
    return AssetOrTimeSchedule(timetable=cron_timetable(spec, spec.schedule), assets=assets)


def _trigger_events(context: Any) -> list[TriggerEvent]:
    """The asset events that started this run (Airflow 3's ``triggering_asset_events``), as plain records."""
    accessor = context.get("triggering_asset_events")
    if not accessor:
        return []
    events = []
    for asset, asset_events in accessor.items():
        for event in asset_events:
            uri = str(getattr(getattr(event, "asset", None), "uri", None) or getattr(asset, "uri", ""))
            events.append(TriggerEvent(uri=uri, extra=dict(event.extra or {}), timestamp=event.timestamp))
    return events


def _run_end(context: Any, conf_end: str | None):
    """The window's end: conf override, else the run's data_interval_end (never 'now', so reruns repeat).

    An asset-triggered run has no logical date and no data interval in Airflow 3 (both None): its end is the
    run's ``run_after``, the time of the events that triggered it."""
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
    spec = load_spec(spec_file)
    trigger, triggered_by = describe_trigger(spec.name, _trigger_events(context))
    request = RunRequest(
        end=_run_end(context, params.get("end")),
        window=params.get("window"),
        force=bool(params.get("force")),
        reason=params.get("reason"),
        requested_by=params.get("requested_by") or triggered_by or os.environ.get("USER"),
        trigger=trigger,
    )
    if trigger and step_name == STEPS[0].name:
        print(f"run triggered by: {trigger}")
    ctx = build_context(spec, load_settings(), request)
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


def build_dag(spec_path: Path, spec: ModelSpec | None = None) -> Any:
    from airflow.sdk import Param, dag, task

    from ct_pipeline.notify import FailureCallback

    spec = spec or load_spec(spec_path)
    spec_file = str(spec_path.resolve())
    loop = " -> ".join(s.name for s in STEPS)
    on_failure = FailureCallback(spec.name)

    @dag(
        dag_id=dag_id_for(spec),
        description=spec.description or f"continuous training of {spec.name}",
        schedule=training_schedule(spec),
        start_date=None,
        catchup=False,
        max_active_runs=1,
        tags=["ct-pipeline", spec.name],
        default_args={"on_failure_callback": on_failure},
        on_failure_callback=on_failure,
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
        'Trigger with conf `{"window": "14d", "force": true, "reason": "..."}`, or with an event of the asset '
        f"`{asset_uri(spec.name, 'retrain')}` (extra `reason`) or `{asset_uri(spec.name, 'data')}`.",
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


# -- the monitor DAG


def monitor_task(spec_file: str) -> dict:
    """The ``monitor`` task: the monitor step on the window ending at this run's end; its report as JSON."""
    from airflow.sdk import get_current_context

    from ct_pipeline.domain.records import RunRequest
    from ct_pipeline.settings import load_settings
    from ct_pipeline.wiring import build_context

    context = get_current_context()
    params = context["params"]
    request = RunRequest(
        end=_run_end(context, params.get("end")), requested_by=monitor_dag_id_for(load_spec(spec_file))
    )
    ctx = build_context(load_spec(spec_file), load_settings(), request)
    report = step("monitor").run(ctx)  # the feedback table's first step (ct_pipeline.steps.MONITOR_STEPS)
    print(f"monitor: {step('monitor').describe(report, ctx.spec)}")
    return report.to_json_dict()


def retrain_wanted_task(spec_file: str, report_json: dict, last_event: Any = None) -> dict | bool:
    """Short-circuit: the RetrainRequest to send (JSON) when a retrain breach fired and the policy lets it
    through, else False (request_retrain is skipped; the run still succeeds)."""
    from datetime import UTC, datetime

    from ct_pipeline.adapters.publishers import publisher_for
    from ct_pipeline.domain.monitor_report import MonitorReport
    from ct_pipeline.retrain import decide_retrain
    from ct_pipeline.settings import load_settings

    report = MonitorReport.model_validate(report_json)
    if not report.retrain_wanted:
        print(f"retrain_wanted: no ({report.summary()})")
        return False
    spec = load_spec(spec_file)
    if last_event is None:
        last_event = _last_retrain_event(spec)
    open_promotions = [p for p in publisher_for(load_settings(), spec).list_promotions(spec.name) if p.status == "open"]
    reason = report.retrain_reason or "; ".join(f.detail for f in report.breaches if f.action == "retrain")
    decision = decide_retrain(spec, reason, datetime.now(UTC), last_event, open_promotions, source="monitor")
    if decision.suppressed is not None:
        print(f"retrain_wanted: suppressed: {decision.suppressed} (reason was: {decision.reason})")
        return False
    print(f"retrain_wanted: yes: {decision.reason}")
    return decision.to_json_dict()


def _last_retrain_event(spec: ModelSpec) -> Any:
    """When the retrain asset's newest event happened (the task's ``inlet_events``), None if never."""
    from airflow.sdk import get_current_context

    events = get_current_context()["inlet_events"][model_asset(spec.name, "retrain")]
    newest = list(events.ascending(False).limit(1))
    return newest[0].timestamp if newest else None


def request_retrain_task(spec_file: str, decision_json: dict) -> dict:
    """Emit the retrain asset's event (this task's outlet) carrying the reason; the training DAG runs on it."""
    from airflow.sdk import get_current_context

    from ct_pipeline.domain.monitor_report import RetrainRequest
    from ct_pipeline.retrain import event_extra

    spec = load_spec(spec_file)
    decision = RetrainRequest.model_validate(decision_json)
    context = get_current_context()
    dag_run = context.get("dag_run")
    extra = event_extra(decision, requested_by=monitor_dag_id_for(spec), monitor_run=getattr(dag_run, "run_id", None))
    context["outlet_events"][model_asset(spec.name, "retrain")].extra = extra
    print(f"request_retrain: asset event {decision.asset}: {decision.reason}")
    return decision.model_copy(update={"sent": True}).to_json_dict()


def build_monitor_dag(spec_path: Path, spec: ModelSpec | None = None) -> Any:
    from airflow.sdk import Param, dag, task

    from ct_pipeline.notify import FailureCallback

    spec = spec or load_spec(spec_path)
    spec_file = str(spec_path.resolve())
    retrain = model_asset(spec.name, "retrain")
    on_failure = FailureCallback(spec.name)

    def monitor() -> dict:
        return monitor_task(spec_file)

    def retrain_wanted(report: Any) -> dict | bool:
        return retrain_wanted_task(spec_file, report)

    def request_retrain(decision: Any) -> dict:
        return request_retrain_task(spec_file, decision)

    monitor.__doc__ = "the monitor step: the served model's recent window judged by the spec's monitors"
    retrain_wanted.__doc__ = retrain_wanted_task.__doc__
    request_retrain.__doc__ = request_retrain_task.__doc__

    @dag(
        dag_id=monitor_dag_id_for(spec),
        description=f"monitoring of {spec.name}: drift, volume, performance; requests retraining on a breach",
        schedule=cron_timetable(spec, spec.monitoring.schedule) if spec.monitoring.schedule else None,
        start_date=None,
        catchup=False,
        max_active_runs=1,
        tags=["ct-pipeline", "monitoring", spec.name],
        default_args={"on_failure_callback": on_failure},
        on_failure_callback=on_failure,
        params={
            "end": Param(None, type=["null", "string"], description="ISO end of the judged window (default: run's)"),
        },
        doc_md=f"Monitoring of **{spec.name}** (spec `{spec_path.name}`): judges the last {spec.monitoring.window} "
        f"of logged predictions; a breach set to retrain emits `{retrain.uri}` (cooldown {spec.monitoring.cooldown}, "
        "none while a promotion is open), which starts the training DAG.",
    )
    def ct_monitor_dag() -> None:
        report = task(task_id="monitor")(monitor)()
        decision = task.short_circuit(task_id="retrain_wanted", inlets=[retrain])(retrain_wanted)(report)
        task(task_id="request_retrain", outlets=[retrain])(request_retrain)(decision)

    return ct_monitor_dag()


def build_dags(models_dir: str | Path | None = None) -> dict[str, Any]:
    """All DAGs for the specs in models_dir (default: the settings' CTPIPE_MODELS_DIR, ./models): per model
    the training DAG and the monitor DAG."""
    if models_dir is None:
        from ct_pipeline.settings import PathsSettings

        models_dir = PathsSettings().models_dir
    models_dir = Path(models_dir)
    dags = {}
    for path in discover_specs(models_dir):
        spec = load_spec(path)
        for built in (build_dag(path, spec), build_monitor_dag(path, spec)):
            dags[built.dag_id] = built
    return dags
