"""What the CLI prints, in one place: the console and the tables more than one command shows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeops.settings import Settings

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)  # whole lines: an error stays greppable in a pipe


def print_stage_times(stage_seconds: dict[str, float], total: float) -> None:
    table = Table(title="pipeline wall time (KFP local runner)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in stage_seconds.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("[bold]whole pipeline[/]", f"[bold]{total:.1f}[/]")
    console.print(table)


@contextmanager
def run_output(settings: Settings, name: str, verbose: bool) -> Iterator[tuple[Console | None, Path | None]]:
    """(the console the live view draws on, the log everything else goes to), or (None, None) with `verbose`:
    then everything streams to the terminal as it comes."""
    if verbose:
        yield None, None
        return
    from edgeops.pipeline.live import quiet_output

    log = settings.state_dir.resolve() / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    console.print(f"[dim]full output: {log} (--verbose shows it here)[/]")
    with quiet_output(log) as terminal:
        yield Console(file=terminal, soft_wrap=True), log
