"""`edgeops up | down | status | doctor`: the local stack on 127.0.0.1, and what this machine needs for it."""

from __future__ import annotations

import typer
from rich.table import Table

from edgeops.cli.output import console
from edgeops.cli.pipeline import RunnerOption
from edgeops.cli.stages import DatasetOption
from edgeops.settings import Dataset, Settings
from edgeops.stack import supervisor

app = typer.Typer()


@app.command()
def up() -> None:
    """Start the local S3 server and MLflow server on 127.0.0.1 (idempotent)."""
    settings = Settings()
    supervisor.start(settings)
    print_status(settings)
    console.print("stop with [bold]make down[/] (or `edgeops down`)")


@app.command()
def down() -> None:
    """Stop the local stack; data under the state dir is kept."""
    supervisor.stop(Settings())


@app.command()
def status() -> None:
    """Show whether the local stack is running and where."""
    print_status(Settings())


def print_status(settings: Settings) -> None:
    table = Table(title=f"edgeops stack (state in {settings.state_dir.resolve()})")
    for column in ("service", "pid", "url", "state"):
        table.add_column(column)
    for state in supervisor.status(settings):
        health = "[green]healthy[/]" if state.healthy else "[red]down[/]"
        table.add_row(state.name, str(state.pid or "-"), state.url, health)
    console.print(table)


@app.command()
def doctor(
    dataset: DatasetOption = Dataset.mat,
    runner: RunnerOption = None,
    brief: bool = typer.Option(False, help="print only what is wrong, and one line when nothing is"),
) -> None:
    """Check what `make demo` and `make test` need from this machine; each miss comes with the command that fixes it.

    Exits 1 when something the demo of `--dataset` with `--runner` needs is missing.
    """
    from edgeops.stack.doctor import run_checks

    settings = Settings()
    runner = runner or settings.local_runner.runner
    checks = run_checks(settings, dataset, runner)
    failed = [check for check in checks if not check.ok and check.required]
    warned = [check for check in checks if not check.ok and not check.required]
    ports_ok = [check for check in checks if check.name.startswith("port ") and check.ok]
    if brief:
        shown = failed
    else:
        shown = [check for check in checks if check not in ports_ok]
        console.print(f"[green]✓[/] ports     {', '.join(c.name.removeprefix('port ') for c in ports_ok)} free or ours")
    for check in shown:
        mark = "[green]✓[/]" if check.ok else ("[red]✗[/]" if check.required else "[yellow]![/]")
        console.print(f"{mark} {check.name:<9} {check.detail}", highlight=False)
        if not check.ok and check.fix:
            console.print(f"  [bold]fix:[/] {check.fix}", highlight=False)
    if failed:
        console.print(f"[red]{len(failed)} problem(s) to fix first[/] ({dataset.value} demo, {runner.value} runner)")
        raise typer.Exit(1)
    if brief:
        note = f"; not needed here: {', '.join(c.name for c in warned)} (`edgeops doctor`)" if warned else ""
        console.print(f"[green]✓[/] doctor: {len(checks) - len(warned)} checks passed{note}", highlight=False)
