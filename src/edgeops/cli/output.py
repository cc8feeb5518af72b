"""What the CLI prints, in one place: the console and the tables more than one command shows."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)
errors = Console(stderr=True)


def print_stage_times(stage_seconds: dict[str, float], total: float) -> None:
    table = Table(title="pipeline wall time (KFP local runner)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in stage_seconds.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("[bold]whole pipeline[/]", f"[bold]{total:.1f}[/]")
    console.print(table)
