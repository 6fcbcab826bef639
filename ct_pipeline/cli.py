"""ctpipe: run the loop, review and merge promotions, reconcile the local serving stack, roll back."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ct_pipeline.domain.spec import SpecError, discover_specs, find_spec, load_spec
from ct_pipeline.settings import Settings, configure_environment

app = typer.Typer(
    help="Continuous training: Airflow -> MLflow -> gate -> BentoML -> GitOps -> serving.", no_args_is_help=True
)
promotions_app = typer.Typer(help="Promotion pull requests (branches on the GitOps remote).", no_args_is_help=True)
app.add_typer(promotions_app, name="promotions")
# Piped output (CI logs, `make demo`) would wrap tables at 80 columns; a terminal keeps its own width.
console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def _settings() -> Settings:
    settings = Settings()
    configure_environment(settings)
    return settings


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _spec(settings: Settings, model: str):
    try:
        return find_spec(settings.paths.models_dir, model)
    except SpecError as exc:
        _fail(str(exc))


def _all_specs(settings: Settings, model: str | None = None):
    if model:
        return [_spec(settings, model)]
    try:
        return [load_spec(p) for p in discover_specs(settings.paths.models_dir)]
    except SpecError as exc:
        _fail(str(exc))


def _parse_end(end: str | None) -> datetime:
    from ct_pipeline.data_window import default_end

    if not end:
        return default_end()
    try:
        parsed = datetime.fromisoformat(end)
    except ValueError:
        _fail(f"--end {end!r} is not an ISO date/datetime (e.g. 2026-11-22 or 2026-11-22T06:00)")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def validate() -> None:
    """Validate every model spec in the models directory."""
    settings = Settings()
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
        except SpecError as exc:
            bad += 1
            err.print(f"[red]{exc}[/]", highlight=False)
    if bad:
        raise typer.Exit(1)


@app.command()
def init() -> None:
    """Create the embedded defaults: the local GitOps remote (bare repo) with a values file per model."""
    from ct_pipeline.gitops import init_local_remote

    settings = _settings()
    specs = _all_specs(settings)
    remote = init_local_remote(settings, specs)
    console.print(f"GitOps remote: {remote}")
    console.print(f"MLflow tracking: {settings.tracking_uri}")


@app.command("demo-data")
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

    settings = Settings()
    target = out or settings.paths.data_root / "transactions"
    end_day = date.fromisoformat(end) if end else None
    rows = generate_demo_dataset(
        target, days=days, end=end_day, rows_per_day=rows_per_day, drift_days=drift_days or None, seed=seed
    )
    console.print(f"wrote {rows} transactions over {days} days to {target}")


@app.command()
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

    from ct_pipeline.pipeline import STEPS, run_pipeline

    settings = _settings()
    spec = _spec(settings, model)
    if force and not reason:
        _fail("--force needs --reason (it is recorded with the promotion)")
    end_at = _parse_end(end)
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[step]:<8}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task_ids = {s: progress.add_task("waiting", step=s, start=False, total=1) for s in STEPS}
        progress.start_task(task_ids["sync"])

        def on_step(step: str, message: str) -> None:
            progress.update(task_ids[step], description=message, completed=1)
            following = STEPS.index(step) + 1
            if following < len(STEPS):
                progress.start_task(task_ids[STEPS[following]])
                progress.update(task_ids[STEPS[following]], description="running")

        try:
            outcome = run_pipeline(
                spec,
                settings,
                end_at,
                window=window,
                force=force,
                force_reason=reason,
                forced_by=os.environ.get("USER", "cli"),
                on_step=on_step,
            )
        except Exception as exc:  # a failed step: say which and why, no traceback for users
            _fail(f"{spec.name}: {exc}")
        for step in STEPS[STEPS.index(_last_step(outcome)) + 1 :]:
            progress.update(task_ids[step], description="[dim]skipped[/]", completed=1)
    if as_json:
        print(outcome.model_dump_json(indent=2))
        return
    if outcome.status == "promoted":
        console.print(
            f"[bold green]promotion proposed[/]: {outcome.promotion.id} on branch "
            f"[bold]{outcome.promotion.branch}[/] — review, then `ctpipe promotions merge {outcome.promotion.id}`"
        )
    else:
        console.print(f"[bold yellow]not promoted[/]: {outcome.reason}")


def _last_step(outcome) -> str:
    return "promote" if outcome.status == "promoted" else "gate"


@app.command()
def sync(model: Annotated[str | None, typer.Argument(help="default: all models")] = None) -> None:
    """Make MLflow's champion alias follow what the GitOps base branch deploys."""
    from ct_pipeline.pipeline import step_sync

    settings = _settings()
    for spec in _all_specs(settings, model):
        console.print(step_sync(spec, settings))


@promotions_app.command("list")
def promotions_list(
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List promotions (open, merged, closed) on the GitOps remote."""
    from ct_pipeline.pipeline import publisher_for

    settings = _settings()
    records = []
    seen = set()
    for spec in _all_specs(settings, model):
        publisher = publisher_for(spec, settings)
        for record in publisher.list_promotions(spec.name):
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
def promotions_show(promotion_id: str) -> None:
    """Print a promotion's body (the pull request text)."""
    from ct_pipeline.pipeline import publisher_for

    settings = _settings()
    spec = _spec(settings, promotion_id.split("/")[0])
    record = publisher_for(spec, settings).get_promotion(promotion_id)
    if record is None:
        _fail(f"no promotion {promotion_id!r}")
    console.print(f"[bold]{record.title}[/]  ({record.status}, branch {record.branch})\n")
    console.print(record.body, markup=False, highlight=False)


@promotions_app.command("merge")
def promotions_merge(promotion_id: Annotated[str, typer.Argument(help="<model>/v<version>")]) -> None:
    """Merge a promotion into the base branch (what a reviewer's merge does), then sync the registry."""
    from ct_pipeline.pipeline import publisher_for, step_sync

    settings = _settings()
    spec = _spec(settings, promotion_id.split("/")[0])
    try:
        commit = publisher_for(spec, settings).merge_promotion(promotion_id)
    except Exception as exc:
        _fail(str(exc))
    console.print(f"merged {promotion_id} into {spec.gitops.base_branch} at {commit[:10]}")
    console.print(step_sync(spec, settings))


@app.command()
def rollback(model: str) -> None:
    """Revert the newest promotion of MODEL on the base branch (git revert), then sync the registry."""
    from ct_pipeline.pipeline import publisher_for, step_sync

    settings = _settings()
    spec = _spec(settings, model)
    try:
        commit = publisher_for(spec, settings).revert_last_promotion(spec.name, spec.gitops.environment)
    except Exception as exc:
        _fail(str(exc))
    console.print(f"reverted the last promotion of {spec.name}: {commit[:10]}")
    console.print(step_sync(spec, settings))


def _desired(settings: Settings, specs):
    from ct_pipeline.gitops import deployed_model
    from ct_pipeline.pipeline import publisher_for

    return [d for spec in specs if (d := deployed_model(publisher_for(spec, settings), spec)) is not None]


@app.command()
def reconcile(
    watch: Annotated[bool, typer.Option(help="keep reconciling every --interval seconds")] = False,
    interval: float = 5.0,
) -> None:
    """Make the local serving stack match the GitOps base branch (the one-machine stand-in for Flux)."""
    from ct_pipeline.pipeline import step_sync
    from ct_pipeline.rollout import reconcile as reconcile_runtime

    settings = _settings()
    specs = _all_specs(settings)
    while True:
        try:
            for spec in specs:
                step_sync(spec, settings)
            served = reconcile_runtime(settings, _desired(settings, specs))
        except Exception as exc:
            if not watch:
                _fail(str(exc))
            err.print(f"[red]reconcile failed:[/] {exc}")
            served = []
        for state in served:
            console.print(_served_line(state))
        if not served:
            console.print("nothing deployed yet: merge a promotion first")
        if not watch:
            return
        time.sleep(interval)


def _served_line(state) -> str:
    return f"serving {state.model} v{state.version} at {state.gateway_url}/predict"


@app.command()
def status(model: str) -> None:
    """What the base branch deploys, what the registry says, and what is served — and any disagreement."""
    from ct_pipeline.gitops import deployed_model
    from ct_pipeline.pipeline import publisher_for, registry_for
    from ct_pipeline.registry import CHALLENGER, CHAMPION
    from ct_pipeline.rollout import status as served_status

    settings = _settings()
    spec = _spec(settings, model)
    deployed = deployed_model(publisher_for(spec, settings), spec)
    registry = registry_for(settings)
    champion = registry.get_alias(spec.registered_model_name, CHAMPION)
    challenger = registry.get_alias(spec.registered_model_name, CHALLENGER)
    served = next((s for s in served_status(settings) if s.model == spec.name), None)
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
def history(model: str) -> None:
    """Which version production (the spec's environment) ran when, from Git; rolled-back versions marked."""
    from ct_pipeline.pipeline import production_history, publisher_for

    settings = _settings()
    spec = _spec(settings, model)
    periods, rolled_back = production_history(publisher_for(spec, settings), spec)
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
def predict(
    rows: Annotated[str, typer.Argument(help="JSON list of feature rows, or @file.json")],
    url: Annotated[str | None, typer.Option(help="gateway base URL")] = None,
) -> None:
    """Call the gateway's POST /predict."""
    import httpx

    settings = Settings()
    payload = Path(rows[1:]).read_text() if rows.startswith("@") else rows
    try:
        body = {"rows": json.loads(payload)}
    except json.JSONDecodeError as exc:
        _fail(f"rows are not valid JSON: {exc}")
    base = url or f"http://{settings.serving.bind_host}:{settings.serving.gateway_port}"
    response = httpx.post(f"{base}/predict", json=body, timeout=30)
    print(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        raise typer.Exit(1)


@app.command()
def stop() -> None:
    """Stop the local serving stack (model servers and gateway)."""
    from ct_pipeline.rollout import stop_all

    stop_all(Settings())
    console.print("local serving stack stopped")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
