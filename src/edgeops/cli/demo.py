"""`edgeops demo`: the whole path on this machine, then the promoted model checked as a device would."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from edgeops.cli.output import console, print_stage_times, run_output
from edgeops.cli.pipeline import ModelNameOption, RunnerOption, VerboseOption, with_runner
from edgeops.cli.stages import DatasetOption
from edgeops.settings import Dataset, Runner, Settings

app = typer.Typer()


@app.command()
def demo(
    manifest: Annotated[Path | None, typer.Option(help="mat: session manifest (file -> label)")] = None,
    model_name: ModelNameOption = None,
    dataset: DatasetOption = Dataset.mat,
    runner: RunnerOption = None,
    fleet_devices: Annotated[
        int, typer.Option(min=0, help="mat: simulated devices that then report to the fleet dashboard (0: none)")
    ] = 3,
    fleet_seconds: Annotated[float, typer.Option(min=1, help="how long the simulated devices run")] = 20.0,
    verbose: VerboseOption = False,
) -> None:
    """Start the stack, run the pipeline, fetch and run the promoted model as a device would, show a small fleet."""
    from edgeops.pipeline.demo import run_demo

    settings = with_runner(Settings(), runner)
    name = model_name or settings.track(dataset).model_name
    with run_output(settings, "demo", verbose) as (view, log):
        summary = run_demo(settings, manifest or settings.mat.session_manifest, name, dataset, view, log)
        with_fleet = fleet_devices and dataset == Dataset.mat
        fleet = _fleet(settings, name, fleet_devices, fleet_seconds, view) if with_fleet else ""
    agent = summary["agent"]
    unchanged = agent["unchanged_poll"]
    if summary["created_release_keys"]:
        console.print(f"created TUF signing keys in {summary['release_keys']} (keep them out of git; back them up)")
    if verbose:
        print_stage_times(summary["stage_seconds"], summary["pipeline_seconds"])
    rows = [
        ("pipeline runner", _runner_row(summary)),
        ("dataset version", summary["dataset_version"]),
        ("MLflow run", summary["mlflow_run_url"]),
        ("test samples", f"{summary['test_samples']:.0f} ({summary['test_split']})"),
        ("INT8 candidate promoted", f"{summary['int8_strategy']}: {summary['int8_strategy_reason']}"),
        (
            "accuracy eager / FP32 / INT8",
            f"{summary['eager_accuracy']:.4f} / {summary['fp32_accuracy']:.4f} / {summary['int8_accuracy']:.4f}",
        ),
        (
            "INT8 accuracy per CPU kernel path",
            ", ".join(f"{path} {value:.4f}" for path, value in summary["int8_accuracy_paths"].items()),
        ),
        (
            "latency p50 FP32 / INT8",
            f"{summary['fp32_latency_p50_ms']:.4f} ms / {summary['int8_latency_p50_ms']:.4f} ms"
            f" (p95 INT8 {summary['int8_latency_p95_ms']:.4f} ms)",
        ),
        ("size FP32 / INT8", f"{summary['fp32_size_bytes']:,} / {summary['int8_size_bytes']:,} bytes"),
        (
            "promoted",
            f"{summary['model_name']} registry version {summary['promoted_version']} "
            f"(alias '{summary['registry_alias']}'), signed release {summary['release']}",
        ),
        (
            "edge agent",
            f"installed v{agent['installed_version']} in {agent['install_poll']['seconds']:.2f} s; an unchanged poll: "
            f"{unchanged['requests']} requests, {unchanged['metadata_bytes']} metadata bytes, "
            f"{unchanged['target_bytes']} model bytes",
        ),
        ("manifest", summary["manifest_url"]),
        ("model", summary["model_url"]),
    ]
    for source, result in summary["device_check"]["predictions"].items():
        rows.append(
            (
                f"device: {source}",
                f"{result['agreement']:.0%} of {result['samples']} samples read as '{result['label']}'",
            )
        )
    rows.append(("simple client check", "sha256 verified: integrity only; devices use the TUF-verified agent"))
    if fleet:
        rows.append(("fleet", fleet))
    # One line each, never wrapped by us: a pipe or a narrow terminal keeps them whole.
    width = max(len(what) for what, _ in rows)
    console.print("[bold]edgeops demo[/]")
    for what, value in rows:
        console.print(f"  [bold]{what:<{width}}[/]  {value}", highlight=False)
    console.print(
        f"all figures: {settings.out_dir / 'demo' / 'summary.json'} · MLflow UI {summary['mlflow_tracking_uri']} · "
        "the stack keeps running; stop it with [bold]make down[/]",
        highlight=False,
    )


def _fleet(settings: Settings, model_name: str, devices: int, seconds: float, view: Console | None) -> str:
    """A few simulated devices install the promoted release and report; the dashboard shows them."""
    from edgeops.fleet.simulate import simulate

    shown = view or console
    with shown.status(f"{devices} simulated devices install {model_name} and report for {seconds:g} s …"):
        # Four times the mat's pace, so that a few devices in a few seconds see all of the recordings.
        result = simulate(
            settings, devices, seconds, prefix="demo", model_name=model_name, report_interval_s=2.0, speed=4.0
        )
    shown.print(f"✓ fleet: {result.devices} simulated devices reported")
    return (
        f"{result.devices} simulated devices reported {result.stored:,} messages ({result.lost} lost); "
        f"dashboard {settings.fleet_url}/"
    )


def _runner_row(summary: dict[str, Any]) -> str:
    if summary["runner"] != Runner.docker:
        return "KFP local SubprocessRunner (tasks in this virtualenv)"
    return (
        f"KFP local DockerRunner: every task in {summary['component_image']}, non-root, read-only root; "
        "release signed on this machine"
    )
