"""`edgeops up | down | status`: the local S3 + MLflow stack on 127.0.0.1."""

from __future__ import annotations

import typer
from rich.table import Table

from edgeops.cli.output import console
from edgeops.settings import Settings
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
