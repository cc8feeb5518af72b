"""What a person watching a local run sees: one line per stage, the running stage's own progress beneath it.

KFP's local runner prints each task's executor input and everything the task prints; `quiet_output` sends all of
that (and native libraries' chatter) to a log file, and `LiveView` draws the stages on the terminal instead, from
what the tasks leave in the pipeline root: the progress file `edgeops.progress` appends to, and the outcome
`edgeops.pipeline.task` records. On a terminal the view redraws in place; elsewhere (CI, a pipe) it prints one
line when a stage starts and one when it ends.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from edgeops import progress
from edgeops.pipeline.task import SUCCESS, new_run_dirs, stage_outcomes

WAITING, STARTING, RUNNING, DONE, FAILED = "waiting", "starting", "running", "done", "failed"


def stage_order(package: Path) -> list[str]:
    """The compiled pipeline's tasks, each after the tasks it depends on."""
    tasks = yaml.safe_load(package.read_text())["root"]["dag"]["tasks"]
    ordered: list[str] = []
    while len(ordered) < len(tasks):
        ready = sorted(
            name
            for name, task in tasks.items()
            if name not in ordered and all(dependency in ordered for dependency in task.get("dependentTasks", []))
        )
        if not ready:
            raise ValueError(f"{package}: its tasks depend on each other in a cycle")
        ordered.extend(ready)
    return ordered


def load_estimates(path: Path) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def save_estimates(path: Path, stage_seconds: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stage_seconds, indent=2))


@dataclass
class StageLine:
    name: str
    status: str = WAITING
    seen_at: float | None = None  # when this view first saw it running
    seconds: float | None = None
    error: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    announced: bool = False  # its start was printed (without a terminal)


class LiveView:
    """Draws the stages of the run that appears in `pipeline_root` (a directory not in `earlier`)."""

    def __init__(
        self,
        console: Console,
        pipeline_root: Path,
        earlier: set[Path],
        stages: list[str],
        estimates: dict[str, float],
        log: Path | None,
    ) -> None:
        self.console, self.root, self.earlier = console, pipeline_root, earlier
        self.estimates, self.log = estimates, log
        self.lines = [StageLine(name) for name in stages]
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="live-view", daemon=True)
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self._live = Live(
                self.render(), console=self.console, refresh_per_second=4, redirect_stdout=False, redirect_stderr=False
            )
            self._live.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.update()
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(None, None, None)

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            self.update()

    def update(self) -> None:
        run_dirs = new_run_dirs(self.root, self.earlier)
        try:
            outcomes = {outcome.name: outcome for run_dir in run_dirs for outcome in stage_outcomes(run_dir)}
        except ValueError:
            return  # a record half written: read it on the next tick
        task_dirs = {d.name: d for run_dir in run_dirs for d in run_dir.iterdir() if d.is_dir()}
        for index, line in enumerate(self.lines):
            before = line.status
            if line.status in (DONE, FAILED):
                continue
            if (outcome := outcomes.get(line.name)) is not None:
                line.status = DONE if outcome.status == SUCCESS else FAILED
                line.seconds, line.error = outcome.seconds, outcome.error
            elif line.name in task_dirs:
                line.status = RUNNING
                line.progress = progress.latest(task_dirs[line.name] / progress.PROGRESS_FILE) or line.progress
            elif all(earlier.status == DONE for earlier in self.lines[:index]):
                line.status = STARTING  # its process is starting up: the task directory comes with the executor
            if line.status in (STARTING, RUNNING) and line.seen_at is None:
                line.seen_at = time.monotonic()
            if line.status != before and self._live is None:
                self._announce(line)
        if self._live is not None:
            self._live.update(self.render())

    def _announce(self, line: StageLine) -> None:
        """Without a terminal to redraw: one line as a stage starts and one as it ends."""
        if line.status in (STARTING, RUNNING) and not line.announced:
            line.announced = True
            estimate = self.estimates.get(line.name)
            self.console.print(f"▶ {line.name}" + (f" (about {estimate:.0f} s last time)" if estimate else ""))
        elif line.status == DONE:
            self.console.print(f"✓ {line.name} {line.seconds:.1f} s")
        elif line.status == FAILED:
            self.console.print(f"✗ {line.name} failed: {line.error}")

    def render(self) -> Group:
        table = Table.grid(padding=(0, 1))
        table.add_column(width=1)
        table.add_column(min_width=10)
        table.add_column()
        now = time.monotonic()
        for line in self.lines:
            estimate = self.estimates.get(line.name)
            if line.status == DONE:
                table.add_row("[green]✓[/]", line.name, f"[green]{line.seconds:.1f} s[/]")
            elif line.status == FAILED:
                table.add_row("[red]✗[/]", f"[red]{line.name}[/]", Text(f"failed: {line.error}", style="red"))
            elif line.status in (STARTING, RUNNING):
                elapsed = now - (line.seen_at or now)
                of = f" of about {estimate:.0f} s" if estimate else ""
                table.add_row("[yellow]▶[/]", f"[bold]{line.name}[/]", f"{line.status} {elapsed:.0f} s{of}")
                shown = line.progress
                if shown.get("message"):
                    bar = (
                        ProgressBar(total=shown["total"], completed=shown["done"] or 0, width=20)
                        if shown.get("total")
                        else ""
                    )
                    table.add_row("", bar, Text(str(shown["message"]), style="dim", overflow="ellipsis", no_wrap=True))
            else:
                table.add_row("[dim]·[/]", f"[dim]{line.name}[/]", "[dim]waiting[/]")
        footer = f"[dim]{now - self.started:.0f} s · full output: {self.log}[/]" if self.log else ""
        return Group(table, footer)


@contextmanager
def quiet_output(log: Path) -> Iterator[IO[str]]:
    """Send this process's stdout and stderr, and its children's, to `log`; yield a stream to the terminal."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for descriptor in (target, saved_out, saved_err):
            os.close(descriptor)
        terminal.close()
