"""ctpipe: run the loop, review and merge promotions, reconcile the local serving stack, roll back."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from rich.console import Console
from rich.table import Table

from ct_pipeline.domain.spec import discover_specs, find_spec, load_spec
from ct_pipeline.errors import CtPipelineError
from ct_pipeline.settings import Settings, load_settings

app = typer.Typer(
    help="Continuous training: Airflow -> MLflow -> gate -> BentoML -> GitOps -> serving.", no_args_is_help=True
)
promotions_app = typer.Typer(help="Promotion pull requests (branches on the GitOps remote).", no_args_is_help=True)
app.add_typer(promotions_app, name="promotions")
# Piped output (CI logs, `make demo`) would wrap tables at 80 columns; a terminal keeps its own width.
console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


@dataclass
class CliState:
    """Read once per invocation (the CLI is the edge): the settings, and the ports shared by its commands."""

    settings: Settings
    debug: bool = False
    _tracker: Any = None

    def tracker(self):
        from ct_pipeline.wiring import make_tracker

        if self._tracker is None:
            self._tracker = make_tracker(self.settings)
        return self._tracker

    def context(self, spec, request=None):
        from ct_pipeline.wiring import build_context

        return build_context(spec, self.settings, request, tracker=self.tracker())


_STATE: CliState | None = None  # this invocation's state, set by the callback


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of every error")] = False,
) -> None:
    global _STATE
    try:
        _STATE = CliState(settings=load_settings(), debug=debug)
    except CtPipelineError as exc:  # a bad CTPIPE_* value: name it, no traceback
        _fail(str(exc))


def _state() -> CliState:
    global _STATE
    if _STATE is None:  # a command called without the group callback
        _STATE = CliState(settings=load_settings())
    return _STATE


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def handled(fn):
    """A ct-pipeline error (bad input, a refused operation, an unreachable service) is one line and exit 1;
    anything else is a bug and keeps its traceback. ``--debug`` shows the traceback of both."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CtPipelineError as exc:
            if _state().debug:
                err.print_exception()
            _fail(str(exc))

    return wrapper


def _spec(settings: Settings, model: str):
    return find_spec(settings.paths.models_dir, model)


def _all_specs(settings: Settings, model: str | None = None):
    if model:
        return [_spec(settings, model)]
    return [load_spec(p) for p in discover_specs(settings.paths.models_dir)]


def _parse_end(end: str | None) -> datetime:
    from ct_pipeline.domain.window import default_end

    if not end:
        return default_end()
    try:
        parsed = datetime.fromisoformat(end)
    except ValueError:
        _fail(f"--end {end!r} is not an ISO date/datetime (e.g. 2026-11-22 or 2026-11-22T06:00)")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
@handled
def validate() -> None:
    """Validate every model spec in the models directory."""
    settings = _state().settings
    paths = discover_specs(settings.paths.models_dir)
    if not paths:
        _fail(f"no model specs (*.yaml) in {settings.paths.models_dir}")
    bad = 0
    for path in paths:
        try:
            spec = load_spec(path)
            console.print(
                f"[green]ok[/] {path}: {spec.name} ({len(spec.candidates)} candidates, window {spec.data.window})"
            )
        except CtPipelineError as exc:
            bad += 1
            err.print(f"[red]{exc}[/]", highlight=False)
    if bad:
        raise typer.Exit(1)


@app.command()
@handled
def init() -> None:
    """Create the embedded defaults: the local GitOps remote (bare repo) with a values file per model."""
    from ct_pipeline.adapters.git_local import init_local_remote

    settings = _state().settings
    specs = _all_specs(settings)
    remote = init_local_remote(settings, specs)
    console.print(f"GitOps remote: {remote}")
    console.print(f"MLflow tracking: {settings.tracking_uri}")


@app.command("demo-data")
@handled
def demo_data(
    days: Annotated[int, typer.Option(help="days of history")] = 60,
    end: Annotated[str | None, typer.Option(help="last day (exclusive), default today UTC")] = None,
    rows_per_day: int = 1500,
    drift_days: Annotated[int, typer.Option(help="switch on drift for the last N days (0 = none)")] = 0,
    seed: int = 7,
    out: Annotated[Path | None, typer.Option(help="default DATA_DIR/transactions")] = None,
) -> None:
    """Generate the demo's card-transaction stream as date-partitioned Parquet."""
    from ct_pipeline.demo_data import generate_demo_dataset

    settings = _state().settings
    target = out or settings.paths.data_root / "transactions"
    end_day = date.fromisoformat(end) if end else None
    rows = generate_demo_dataset(
        target, days=days, end=end_day, rows_per_day=rows_per_day, drift_days=drift_days or None, seed=seed
    )
    console.print(f"wrote {rows} transactions over {days} days to {target}")


@app.command()
@handled
def run(
    model: str,
    end: Annotated[str | None, typer.Option(help="end of the window (ISO); default: today 00:00 UTC")] = None,
    window: Annotated[str | None, typer.Option(help="override the spec's window, e.g. 14d")] = None,
    force: Annotated[bool, typer.Option(help="promote regardless of the gate (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option(help="why, with --force")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
) -> None:
    """Run the whole loop for MODEL: sync -> pull -> train -> gate -> package -> promote."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ct_pipeline.domain.records import RunRequest
    from ct_pipeline.pipeline import run_pipeline
    from ct_pipeline.steps import STEP_NAMES

    state = _state()
    spec = _spec(state.settings, model)
    if force and not reason:
        _fail("--force needs --reason (it is recorded with the promotion)")
    request = RunRequest(
        end=_parse_end(end), window=window, force=force, reason=reason, requested_by=os.environ.get("USER", "cli")
    )
    run_ctx = state.context(spec, request)
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[step]:<8}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task_ids = {s: progress.add_task("waiting", step=s, start=False, total=1) for s in STEP_NAMES}
        progress.start_task(task_ids[STEP_NAMES[0]])
        done: list[str] = []

        def on_step(step: str, message: str) -> None:
            done.append(step)
            progress.update(task_ids[step], description=message, completed=1)
            following = STEP_NAMES.index(step) + 1
            if following < len(STEP_NAMES):
                progress.start_task(task_ids[STEP_NAMES[following]])
                progress.update(task_ids[STEP_NAMES[following]], description="running")

        try:
            outcome = run_pipeline(run_ctx, on_step=on_step)
        except CtPipelineError as exc:  # a failed step: say which and why, no traceback for users
            failed = STEP_NAMES[len(done)] if len(done) < len(STEP_NAMES) else "?"
            if state.debug:
                err.print_exception()
            _fail(f"{spec.name}: {failed}: {exc}")
        for step in STEP_NAMES[len(done) :]:
            progress.update(task_ids[step], description="[dim]skipped[/]", completed=1)
    if as_json:
        print(outcome.model_dump_json(indent=2))
        return
    if outcome.status == "promoted" and outcome.promotion is not None:
        console.print(
            f"[bold green]promotion proposed[/]: {outcome.promotion.id} on branch "
            f"[bold]{outcome.promotion.branch}[/] — review, then `ctpipe promotions merge {outcome.promotion.id}`"
        )
    else:
        console.print(f"[bold yellow]not promoted[/]: {outcome.reason}")


@app.command()
@handled
def sync(model: Annotated[str | None, typer.Argument(help="default: all models")] = None) -> None:
    """Make MLflow's champion alias follow what the GitOps base branch deploys."""
    from ct_pipeline.steps.sync import sync as sync_step

    state = _state()
    for spec in _all_specs(state.settings, model):
        console.print(sync_step(state.context(spec)).summary())


@promotions_app.command("list")
@handled
def promotions_list(
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List promotions (open, merged, closed) on the GitOps remote."""
    from ct_pipeline.wiring import make_publisher

    settings = _state().settings
    records = []
    seen = set()
    for spec in _all_specs(settings, model):
        for record in make_publisher(settings, spec).list_promotions(spec.name):
            if record.id not in seen:
                seen.add(record.id)
                records.append(record)
    if as_json:
        print(json.dumps([r.to_json_dict() for r in records], indent=2))
        return
    table = Table("id", "status", "branch", "title", "created")
    for r in records:
        colour = {"open": "yellow", "merged": "green", "closed": "dim"}[r.status]
        table.add_row(r.id, f"[{colour}]{r.status}[/]", r.branch, r.title, r.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table if records else "no promotions yet")


@promotions_app.command("show")
@handled
def promotions_show(promotion_id: str) -> None:
    """Print a promotion's body (the pull request text)."""
    from ct_pipeline.wiring import make_publisher

    settings = _state().settings
    spec = _spec(settings, promotion_id.split("/")[0])
    record = make_publisher(settings, spec).get_promotion(promotion_id)
    if record is None:
        _fail(f"no promotion {promotion_id!r}")
    console.print(f"[bold]{record.title}[/]  ({record.status}, branch {record.branch})\n")
    console.print(record.body, markup=False, highlight=False)


@promotions_app.command("merge")
@handled
def promotions_merge(promotion_id: Annotated[str, typer.Argument(help="<model>/v<version>")]) -> None:
    """Merge a promotion into the base branch (what a reviewer's merge does), then sync the registry."""
    from ct_pipeline.steps.sync import sync as sync_step

    state = _state()
    ctx = state.context(_spec(state.settings, promotion_id.split("/")[0]))
    commit = ctx.publisher.merge_promotion(promotion_id)
    console.print(f"merged {promotion_id} into {ctx.spec.gitops.base_branch} at {commit[:10]}")
    console.print(sync_step(ctx).summary())


@app.command()
@handled
def rollback(model: str) -> None:
    """Revert the newest promotion of MODEL on the base branch (git revert), then sync the registry."""
    from ct_pipeline.steps.sync import sync as sync_step

    state = _state()
    ctx = state.context(_spec(state.settings, model))
    commit = ctx.publisher.revert_last_promotion(ctx.spec.name, ctx.spec.gitops.environment)
    console.print(f"reverted the last promotion of {ctx.spec.name}: {commit[:10]}")
    console.print(sync_step(ctx).summary())


@app.command()
@handled
def reconcile(
    watch: Annotated[bool, typer.Option(help="keep reconciling every --interval seconds")] = False,
    interval: float = 5.0,
) -> None:
    """Make the local serving stack match the GitOps base branch (the one-machine stand-in for Flux)."""
    from ct_pipeline.adapters.local_runtime import reconcile as reconcile_runtime
    from ct_pipeline.adapters.publishers import deployed_model
    from ct_pipeline.steps.sync import sync as sync_step

    state = _state()
    contexts = [state.context(spec) for spec in _all_specs(state.settings)]
    while True:
        try:
            for ctx in contexts:
                sync_step(ctx)
            desired = [d for ctx in contexts if (d := deployed_model(ctx.publisher, ctx.spec)) is not None]
            served = reconcile_runtime(state.settings, desired)
        except CtPipelineError as exc:
            if not watch:
                raise
            err.print(f"[red]reconcile failed:[/] {exc}")
            served = []
        for served_state in served:
            console.print(_served_line(served_state))
        if not served:
            console.print("nothing deployed yet: merge a promotion first")
        if not watch:
            return
        time.sleep(interval)


def _served_line(state) -> str:
    return f"serving {state.model} v{state.version} at {state.gateway_url}/predict"


@app.command()
@handled
def status(model: str) -> None:
    """What the base branch deploys, what the registry says, and what is served — and any disagreement."""
    from ct_pipeline.adapters.publishers import deployed_model
    from ct_pipeline.domain.tags import CHALLENGER, CHAMPION

    state = _state()
    ctx = state.context(_spec(state.settings, model))
    spec = ctx.spec
    deployed = deployed_model(ctx.publisher, spec)
    champion = ctx.tracker.get_alias(spec.registered_model_name, CHAMPION)
    challenger = ctx.tracker.get_alias(spec.registered_model_name, CHALLENGER)
    served = next((s for s in ctx.runtime.status() if s.model == spec.name), None)
    table = Table("source", "version", "detail")
    table.add_row(
        f"git {spec.gitops.base_branch} ({spec.gitops.environment})",
        deployed.version if deployed else "-",
        (deployed.bento_tag or "") if deployed else "nothing deployed",
    )
    table.add_row("mlflow @champion", champion.version if champion else "-", champion.run_id if champion else "")
    table.add_row("mlflow @challenger", challenger.version if challenger else "-", "")
    table.add_row(
        "served locally", served.version if served else "-", _served_line(served) if served else "not running"
    )
    console.print(table)
    problems = []
    if (deployed.version if deployed else None) != (champion.version if champion else None):
        problems.append("registry champion disagrees with git: run `ctpipe sync`")
    if served and (deployed is None or served.version != deployed.version):
        problems.append("served version disagrees with git: run `ctpipe reconcile`")
    for p in problems:
        console.print(f"[yellow]disagreement:[/] {p}")
    if not problems:
        console.print("[green]git, registry and serving agree[/]")


@app.command()
@handled
def history(model: str) -> None:
    """Which version production (the spec's environment) ran when, from Git; rolled-back versions marked."""
    from ct_pipeline.steps.sync import production_history
    from ct_pipeline.wiring import make_publisher

    settings = _state().settings
    spec = _spec(settings, model)
    periods, rolled_back = production_history(make_publisher(settings, spec), spec)
    if not periods:
        console.print(f"{spec.name}: never promoted in {spec.gitops.environment}")
        return
    table = Table("version", "since", "until", "cause", "commit", title=f"{spec.name} in {spec.gitops.environment}")
    for p in reversed(periods):
        version = f"v{p.version}" if p.version else "(nothing)"
        if p.version in rolled_back:
            version += f" [red](rolled back {rolled_back[p.version][:10]})[/]"
        until = p.until.strftime("%Y-%m-%d %H:%M:%S") if p.until else "now"
        table.add_row(version, p.since.strftime("%Y-%m-%d %H:%M:%S"), until, p.cause, p.commit[:10])
    console.print(table)


@app.command()
@handled
def predict(
    rows: Annotated[str, typer.Argument(help="JSON list of feature rows, or @file.json")],
    url: Annotated[str | None, typer.Option(help="gateway base URL")] = None,
) -> None:
    """Call the gateway's POST /predict."""
    import httpx

    settings = _state().settings
    payload = Path(rows[1:]).read_text() if rows.startswith("@") else rows
    try:
        body = {"rows": json.loads(payload)}
    except json.JSONDecodeError as exc:
        _fail(f"rows are not valid JSON: {exc}")
    base = url or f"http://{settings.serving.bind_host}:{settings.serving.gateway_port}"
    try:
        response = httpx.post(f"{base}/predict", json=body, timeout=30)
    except httpx.HTTPError as exc:
        _fail(f"gateway {base} is not reachable: {exc} (is the stack running? `ctpipe reconcile`)")
    print(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        raise typer.Exit(1)


@app.command()
@handled
def traffic(
    model: str,
    days: Annotated[float, typer.Option(help="replay rows of the last DAYS days of the model's data")] = 1.0,
    end: Annotated[str | None, typer.Option(help="end of the replayed data (ISO); default: today 00:00 UTC")] = None,
    rows: Annotated[int, typer.Option(min=1, help="rows to send")] = 2_000,
    batch: Annotated[int, typer.Option(min=1, max=1000, help="rows per request")] = 20,
    labels: Annotated[bool, typer.Option(help="also deliver the rows' labels to the monitor's labels source")] = True,
    url: Annotated[str | None, typer.Option(help="gateway base URL")] = None,
) -> None:
    """Demo: replay MODEL's recent data through the gateway (into the prediction log) and deliver the labels."""
    from datetime import timedelta

    from ct_pipeline.adapters.data_sources import SourceReader, _resolve
    from ct_pipeline.demo_traffic import send_traffic
    from ct_pipeline.domain.monitoring import PerformanceMonitor

    settings = _state().settings
    spec = _spec(settings, model)
    stop_at = _parse_end(end)
    labels_dir = None
    perf = next((m for m in spec.monitoring.monitors if isinstance(m, PerformanceMonitor)), None)
    if labels and perf is not None and perf.labels.kind == "parquet" and perf.labels.path:
        labels_dir = _resolve(perf.labels.path, settings.paths.data_root)
    result = send_traffic(
        spec,
        SourceReader(settings.paths.data_root),
        url or settings.serving.gateway_url,
        stop_at - timedelta(days=days),
        stop_at,
        rows=rows,
        batch=batch,
        labels_dir=labels_dir,
    )
    console.print(
        f"sent {result.rows:,} rows in {result.requests:,} requests ({result.errors} failed) to "
        f"{url or settings.serving.gateway_url}" + (f"; labels in {result.labels_path}" if result.labels_path else "")
    )
    if result.errors:
        raise typer.Exit(1)


@app.command("monitor")
@handled
def monitor_cmd(
    model: str,
    end: Annotated[str | None, typer.Option(help="end of the window (ISO); default: now")] = None,
    window: Annotated[str | None, typer.Option(help="override the monitoring window, e.g. 6h")] = None,
    trigger: Annotated[
        bool, typer.Option(help="on a breach configured to retrain, post the retrain asset event to Airflow")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Judge the served MODEL on its recent predictions: drift, nulls, volume, realized performance; write the
    report (JSON, HTML, PNG; MLflow), push its metrics, and request retraining on a breach that says so."""
    from ct_pipeline.domain.monitor_report import MonitorReport, RetrainRequest  # noqa: F401 (the casts)
    from ct_pipeline.domain.records import RunRequest
    from ct_pipeline.steps import MONITOR_STEPS

    state = _state()
    spec = _spec(state.settings, model)
    when = _parse_end(end) if end else datetime.now(UTC)
    ctx = state.context(spec, RunRequest(end=when, window=window, requested_by=os.environ.get("USER", "cli")))
    monitor_step, retrain_step = MONITOR_STEPS
    report = cast("MonitorReport", monitor_step.run(ctx))
    wanted = trigger and report.retrain_wanted and ctx.retrain is not None
    request = cast("RetrainRequest", retrain_step.run(ctx, report)) if wanted else None
    if as_json:
        print(json.dumps({"report": report.to_json_dict(), "retrain": request and request.to_json_dict()}, indent=2))
        return
    table = Table(title=f"{spec.name} v{report.version}: {report.predictions:,} predictions", show_lines=False)
    for column in ("monitor", "subject", "status", "detail"):
        table.add_column(column, overflow="fold")
    for finding in report.findings:
        status = "[bold red]BREACH[/]" if finding.breached else ("ok" if finding.judged else "[dim]not judged[/]")
        table.add_row(finding.monitor, finding.subject, status, finding.detail)
    console.print(table)
    path = report.alert_path
    if path is not None:
        line = f"pushed to {path.target}" if path.pushed else f"[bold yellow]alert path down[/]: {path.detail}"
        console.print(f"metrics: {line}")
    console.print(f"report: {report.artifacts[0]}/report.html (MLflow {report.artifacts[1]})")
    if report.retrain_reason:
        if request is None:
            why = "--no-trigger" if not trigger else "no Airflow API configured (CTPIPE_AIRFLOW_API_URL)"
            console.print(f"[bold yellow]retraining wanted[/] ({why}): {report.retrain_reason}")
        elif request.sent:
            console.print(f"[bold green]retrain requested[/] (asset event {request.event_id}): {request.reason}")
        else:
            console.print(f"[yellow]retrain not requested[/]: {request.suppressed}")


@app.command()
@handled
def stop() -> None:
    """Stop everything running locally: the alert bridge, the alerting stack, the local Airflow, the serving stack."""
    from ct_pipeline.adapters.local_airflow import LocalAirflow
    from ct_pipeline.adapters.local_feedback import LocalAlertBridge
    from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack
    from ct_pipeline.adapters.local_runtime import stop_all

    settings = _state().settings
    for what, down in (
        ("alert bridge", LocalAlertBridge(settings).down),
        ("alerting stack (Prometheus, Alertmanager, Pushgateway)", LocalMonitoringStack(settings).down),
        ("local Airflow", LocalAirflow(settings).down),
    ):
        if down():
            console.print(f"{what} stopped")
    stop_all(settings)
    console.print("local serving stack stopped")


# ---------------------------------------------------------------------------------------------------------
# The feedback stack: a local Airflow, the alerting stack + the alert bridge, retrain requests

airflow_app = typer.Typer(
    help="The local Airflow (api-server, scheduler, dag-processor; LocalExecutor, SQLite) running the DAGs.",
    no_args_is_help=True,
)
app.add_typer(airflow_app, name="airflow")
monitoring_app = typer.Typer(
    help="The local alerting stack (Prometheus, Alertmanager, Pushgateway) and the alert bridge to Airflow.",
    no_args_is_help=True,
)
app.add_typer(monitoring_app, name="monitoring")


def _login_line(endpoints) -> str:
    return f"login [bold]{endpoints.username}[/] / [bold]{endpoints.password}[/]"


@airflow_app.command("up")
@handled
def airflow_up() -> None:
    """Start the local Airflow (idempotent) and print the UI URL and the login."""
    from ct_pipeline.adapters.local_airflow import LocalAirflow

    airflow = LocalAirflow(_state().settings)
    err.print(f"starting Airflow (home {airflow.home}, DAGs {airflow.dags_folder}) ...", highlight=False)
    endpoints = airflow.up()
    console.print(f"[bold green]Airflow is up[/]: {endpoints.url}  ({_login_line(endpoints)})", highlight=False)
    console.print(f"password file: {airflow.passwords_path}; logs: {airflow.home / 'logs'}", highlight=False)


@airflow_app.command("down")
@handled
def airflow_down() -> None:
    """Stop the local Airflow."""
    from ct_pipeline.adapters.local_airflow import LocalAirflow

    stopped = LocalAirflow(_state().settings).down()
    console.print("local Airflow stopped" if stopped else "local Airflow was not running")


@airflow_app.command("status")
@handled
def airflow_status() -> None:
    """Whether the local Airflow runs and is healthy; its URL and login."""
    from ct_pipeline.adapters.local_airflow import LocalAirflow

    airflow = LocalAirflow(_state().settings)
    info = airflow.status()
    table = Table("component", "pid", "alive")
    for name, component in info["components"].items():
        table.add_row(name, str(component["pid"] or "-"), "[green]yes[/]" if component["alive"] else "[red]no[/]")
    console.print(table)
    if not info["running"]:
        console.print("local Airflow is [bold]not running[/] (start it with `ctpipe airflow up`)")
        return
    health = "[bold green]healthy[/]" if info["healthy"] else f"[bold red]UNHEALTHY[/] {info['health']}"
    endpoints = airflow.endpoints()
    login = f"; {_login_line(endpoints)}" if endpoints else ""
    console.print(f"Airflow at {info['url']}: {health}{login}", highlight=False)


_DURATION = r"^[0-9]+(ms|s|m|h)$"


def _feedback_airflow(settings: Settings):
    from ct_pipeline.adapters.local_airflow import airflow_settings

    return airflow_settings(settings)


def _gateway_targets(settings: Settings, specs) -> tuple[dict[str, list[str]], list[str]]:
    """Per model, the gateway Prometheus scrapes: the local serving stack's, else the configured gateway port
    (one model only); and the models left without one."""
    from ct_pipeline.adapters.local_runtime import LocalRuntime

    served = {s.model: s.gateway_url for s in LocalRuntime(settings).status() if s.gateway_url}
    targets: dict[str, list[str]] = {}
    missing: list[str] = []
    for spec in specs:
        if spec.name in served:
            targets[spec.name] = [str(served[spec.name])]
        elif len(specs) == 1:
            targets[spec.name] = [settings.serving.gateway_url]
        else:
            missing.append(spec.name)
    return targets, missing


@monitoring_app.command("up")
@handled
def monitoring_up(
    interval: Annotated[str, typer.Option(help="Prometheus' scrape and rule-evaluation interval, e.g. 15s")] = "15s",
) -> None:
    """Start (or reload) Prometheus + Alertmanager + Pushgateway with the specs' alert rules, and the alert bridge
    that turns retrain alerts into Airflow asset events (when an Airflow is configured or running locally)."""
    import re

    from ct_pipeline.adapters.local_feedback import LocalAlertBridge
    from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack

    if not re.match(_DURATION, interval):
        _fail(f"--interval {interval!r} is not a Prometheus duration (e.g. 2s, 15s, 1m)")
    settings = _state().settings
    specs = _all_specs(settings)
    if not specs:
        _fail(f"no model specs (*.yaml) in {settings.paths.models_dir}")
    airflow = _feedback_airflow(settings)
    bridge_url = None
    if airflow is None:
        err.print(
            "[yellow]no Airflow[/]: the alert bridge is not started, so retraining by alert needs Airflow "
            "(`ctpipe airflow up`, or set CTPIPE_AIRFLOW_API_URL)",
            highlight=False,
        )
    else:
        bridge_url = LocalAlertBridge(settings).up(airflow)
    targets, missing = _gateway_targets(settings, specs)
    for model in missing:
        err.print(f"[yellow]{model}[/]: not served locally, no gateway to scrape (run `ctpipe reconcile`)")
    stack = LocalMonitoringStack(settings, scrape_interval=interval, evaluation_interval=interval)
    endpoints = stack.up(specs, targets, webhook_url=f"{bridge_url}/alertmanager" if bridge_url else None)
    table = Table("component", "url")
    table.add_row("Prometheus", endpoints.prometheus_url)
    table.add_row("Alertmanager", endpoints.alertmanager_url)
    table.add_row("Pushgateway", endpoints.pushgateway_url)
    table.add_row("alert bridge", f"{bridge_url}/alertmanager -> Airflow {airflow.api_url}" if airflow else "-")
    for model, model_targets in targets.items():
        table.add_row(f"scraped gateway ({model})", ", ".join(model_targets))
    console.print(table)
    console.print(f"[bold green]alerting stack up[/] ({len(specs)} model(s), interval {interval})")


@monitoring_app.command("down")
@handled
def monitoring_down() -> None:
    """Stop the alert bridge and the alerting stack."""
    from ct_pipeline.adapters.local_feedback import LocalAlertBridge
    from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack

    settings = _state().settings
    bridge = LocalAlertBridge(settings).down()
    stack = LocalMonitoringStack(settings).down()
    console.print(
        f"alert bridge {'stopped' if bridge else 'was not running'}; "
        f"alerting stack {'stopped' if stack else 'was not running'}"
    )


@monitoring_app.command("status")
@handled
def monitoring_status() -> None:
    """Each component of the alerting stack and the alert bridge: pid, URL, alive, ready."""
    from ct_pipeline.adapters.local_feedback import LocalAlertBridge
    from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack

    settings = _state().settings
    rows = dict(LocalMonitoringStack(settings).status())
    bridge = LocalAlertBridge(settings).status()
    rows["alert bridge"] = bridge
    table = Table("component", "pid", "url", "state")
    for name, info in rows.items():
        state = (
            "[green]ready[/]" if info["ready"] else ("[yellow]alive, not ready[/]" if info["alive"] else "[red]down[/]")
        )
        table.add_row(name, str(info["pid"] or "-"), str(info["url"] or "-"), state)
    console.print(table)
    if bridge["airflow_url"] and bridge["alive"]:
        console.print(f"retrain alerts -> Airflow {bridge['airflow_url']}", highlight=False)


@app.command()
@handled
def retrain(
    model: str,
    reason: Annotated[str | None, typer.Option(help="why (the training run and the promotion say it)")] = None,
    data: Annotated[bool, typer.Option("--data", help="announce newly arrived data (the data asset) instead")] = False,
) -> None:
    """Ask Airflow to retrain MODEL: post its retrain asset event (cooldown and open promotions may suppress it),
    or with --data its data-arrived event."""
    from ct_pipeline.adapters.airflow_api import AirflowAPI
    from ct_pipeline.domain.assets import data_asset_uri
    from ct_pipeline.errors import TriggerError
    from ct_pipeline.retrain import request_retrain
    from ct_pipeline.wiring import SystemClock, make_publisher

    settings = _state().settings
    spec = _spec(settings, model)
    if not data and not (reason or "").strip():
        _fail("--reason is required: say why MODEL should be retrained (it is recorded with the run)")
    airflow = _feedback_airflow(settings)
    if airflow is None:
        raise TriggerError(
            "no Airflow to ask: set CTPIPE_AIRFLOW_API_URL (and _USERNAME/_PASSWORD or _TOKEN) "
            "or run `ctpipe airflow up`"
        )
    user = os.environ.get("USER", "cli")
    with AirflowAPI(airflow) as api:
        if data:
            now = SystemClock().now()
            extra = {"source": "cli", "requested_by": user, "requested_at": now.isoformat()}
            if reason:
                extra["reason"] = reason
            event_id = api.post_event(data_asset_uri(spec.name), extra)
            console.print(f"[bold green]sent[/]: data-arrived event {event_id} for {spec.name} to {api.api_url}")
            return
        request = request_retrain(
            spec,
            reason,
            trigger=api,
            publisher=make_publisher(settings, spec),
            clock=SystemClock(),
            source="cli",
            requested_by=user,
        )
    if request.sent:
        console.print(
            f"[bold green]sent[/]: retrain of {spec.name} requested (asset event {request.event_id} at "
            f"{airflow.api_url}): {request.reason}",
            highlight=False,
        )
    else:
        console.print(f"[yellow]suppressed[/]: retrain of {spec.name} not requested: {request.suppressed}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
