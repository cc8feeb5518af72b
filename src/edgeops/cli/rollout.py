"""`edgeops rollout start | status`: a health-gated staged rollout of a model's newest release."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgeops.cli.device import ChannelOption, valid_name
from edgeops.cli.output import console, errors
from edgeops.settings import Settings

app = typer.Typer(no_args_is_help=True)
ModelArgument = Annotated[
    str, typer.Option("--model", help="the model whose newest release rolls out", callback=valid_name)
]


def _steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of percentages, e.g. 5,25,100") from None


@app.command()
def start(
    model: ModelArgument,
    steps: Annotated[str, typer.Option(help="percentages of the channel's devices, rising to 100")] = "5,25,100",
    bake: Annotated[float, typer.Option(min=0, help="seconds each step must stay healthy")] = 600.0,
    min_devices: Annotated[int, typer.Option(min=1, help="devices that must report on a step before it advances")] = 5,
    max_failure_rate: Annotated[float, typer.Option(min=0, max=1, help="failed installs per attempt")] = 0.1,
    max_error_rate: Annotated[float, typer.Option(min=0, max=1, help="inference errors per inference")] = 0.01,
    max_latency_ratio: Annotated[float, typer.Option(min=0, help="candidate p95 over baseline p95")] = 2.0,
    max_class_share: Annotated[float, typer.Option(min=0, max=1, help="one class's share: a collapse")] = 0.98,
    step_timeout: Annotated[float, typer.Option(min=0, help="extra seconds to wait for min-devices")] = 600.0,
    channel: ChannelOption = None,
) -> None:
    """Roll the newest release out step by step; halt and roll back when its devices report trouble.

    Run it again after an interruption: it resumes the running rollout, never deciding a step twice."""
    from edgeops.fleet import rollout as controller

    settings = Settings()
    channel = channel or settings.release.channel
    found = controller.load(settings, model, channel)
    if found is None or found.status != "running":
        found = controller.plan(
            settings,
            model,
            channel,
            _steps(steps),
            bake,
            min_devices,
            controller.Bounds(
                max_failure_rate=max_failure_rate,
                max_error_rate=max_error_rate,
                max_latency_ratio=max_latency_ratio,
                max_class_share=max_class_share,
            ),
            step_timeout,
        )
        console.print(
            f"rolling out {model} {channel} ({found.candidate_sha256[:12]}) in steps of "
            + ", ".join(f"{s.percent} %" for s in found.steps)
        )
    else:
        console.print(f"resuming the rollout of {model} {channel} ({found.candidate_sha256[:12]})")
    done = controller.run(settings, found, lambda line: console.print(f"[rollout] {line}", markup=False))
    print_rollout(done)
    if done.status != "completed":
        errors.print(f"[bold red]halted:[/] {next(s.why for s in done.steps if s.decision == 'halt')}", highlight=False)
        raise SystemExit(3)


@app.command()
def status(model: ModelArgument, channel: ChannelOption = None) -> None:
    """Each step of the model's rollout, and the evidence behind each decision."""
    from edgeops.fleet import rollout as controller

    settings = Settings()
    found = controller.load(settings, model, channel or settings.release.channel)
    if found is None:
        errors.print(f"no rollout of {model} has been started here")
        raise SystemExit(1)
    print_rollout(found)


def print_rollout(found: object) -> None:
    from edgeops.fleet.rollout import Rollout

    assert isinstance(found, Rollout)
    table = Table(title=f"rollout of {found.model} {found.channel}: {found.status}")
    for column in ("step", "release", "decision", "why", "devices", "installed / refused", "p95 ms"):
        table.add_column(column)
    for step in found.steps:
        candidate = step.evidence.get("candidate") or {}
        p95 = candidate.get("latency_p95_ms")
        table.add_row(
            f"{step.percent} %",
            f"v{step.version}" if step.version else "-",
            step.decision or ("baking" if step.version else "-"),
            step.why,
            str(candidate.get("devices_reporting", "")),
            f"{candidate.get('installed', '')} / {candidate.get('refused', '')}" if candidate else "",
            f"{p95:.3f}" if p95 else "",
        )
    console.print(table)
    if found.rollback_version:
        console.print(f"rolled back with v{found.rollback_version} (back to v{found.baseline_version}'s model)")
