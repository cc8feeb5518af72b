"""`edgeops`: the stack, the six stages, the pipeline and the demo from one command."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from edgeops import stack
from edgeops.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()


@app.command()
def up() -> None:
    """Start the local S3 server and MLflow server on 127.0.0.1 (idempotent)."""
    settings = Settings()
    stack.start(settings)
    _print_status(settings)
    console.print("stop with [bold]make down[/] (or `edgeops down`)")


@app.command()
def down() -> None:
    """Stop the local stack; data under the state dir is kept."""
    stack.stop(Settings())


@app.command()
def status() -> None:
    """Show whether the local stack is running and where."""
    _print_status(Settings())


def _print_status(settings: Settings) -> None:
    table = Table(title=f"edgeops stack (state in {settings.state_dir.resolve()})")
    for column in ("service", "pid", "url", "state"):
        table.add_column(column)
    for state in stack.status(settings):
        health = "[green]healthy[/]" if state.healthy else "[red]down[/]"
        table.add_row(state.name, str(state.pid or "-"), state.url, health)
    console.print(table)
