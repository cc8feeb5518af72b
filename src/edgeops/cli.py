"""`edgeops`: the local stack, the six stages, the pipeline and the demo from one command.

Stage commands read and write directories (default `out/stages/<stage>`), so
`edgeops ingest && edgeops train && …` runs the pipeline by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgeops import stack
from edgeops.errors import EdgeopsError
from edgeops.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
pipeline_app = typer.Typer(
    no_args_is_help=True, help="Run the compiled KFP pipeline (`make compile` writes it) with the local runner."
)
app.add_typer(pipeline_app, name="pipeline")
console = Console(soft_wrap=True)


STAGES = Settings().out_dir / "stages"
INGEST_DIR, TRAIN_DIR, EXPORT_DIR = STAGES / "ingest", STAGES / "train", STAGES / "export"
BENCHMARK_DIR, VERIFY_DIR, PROMOTE_DIR = STAGES / "benchmark", STAGES / "verify", STAGES / "promote"
Dir = Annotated[Path, typer.Option(file_okay=False)]


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


@app.command()
def ingest(
    manifest: Annotated[Path | None, typer.Option(help="session manifest (file -> label)")] = None,
    out: Dir = INGEST_DIR,
) -> None:
    """Validate recordings, archive them to S3, build a versioned, time-split dataset."""
    from edgeops.ingest import ingest as run

    settings = Settings()
    info = run(manifest or settings.session_manifest, out, settings)
    console.print(f"dataset [bold]{info.version}[/] windows {info.windows} → {out}; MLflow run {info.run_id}")


@app.command()
def train(dataset: Dir = INGEST_DIR, out: Dir = TRAIN_DIR) -> None:
    """Train the network; normalisation from the training split goes inside the model."""
    from edgeops.train import train as run

    info = run(dataset, out, Settings())
    console.print(f"best epoch {info.best_epoch}: val accuracy {info.val_accuracy:.4f} → {out}")


@app.command("export")
def export_(dataset: Dir = INGEST_DIR, model: Dir = TRAIN_DIR, out: Dir = EXPORT_DIR) -> None:
    """Export FP32 and PTQ INT8 ExecuTorch programs lowered to XNNPACK."""
    from edgeops.export import export as run

    result = run(dataset, model, out, Settings())
    for name in ("fp32", "int8"):
        program = getattr(result, name)
        console.print(
            f"{name}: {program.size_bytes:,} bytes, {program.delegated_ops} ops delegated to XNNPACK, "
            f"{program.non_delegated_ops} not → {out / program.file}"
        )


@app.command()
def benchmark(
    dataset: Dir = INGEST_DIR,
    model: Dir = TRAIN_DIR,
    executorch: Dir = EXPORT_DIR,
    out: Dir = BENCHMARK_DIR,
) -> None:
    """Accuracy and latency of eager, FP32 and INT8 on the test split."""
    from edgeops.benchmark import REPORT_FILE
    from edgeops.benchmark import benchmark as run

    run(dataset, model, executorch, out, Settings())
    console.print((out / REPORT_FILE).read_text())


@app.command()
def verify(
    dataset: Dir = INGEST_DIR,
    executorch: Dir = EXPORT_DIR,
    benchmark: Dir = BENCHMARK_DIR,
    out: Dir = VERIFY_DIR,
) -> None:
    """Re-download the INT8 program from MLflow, check hash and shapes, apply the gates."""
    from edgeops.verify import verify as run

    result = run(dataset, executorch, benchmark, out, Settings())
    for gate in result.gates:
        console.print(f"[green]✓[/] {gate.describe()}")


@app.command()
def promote(
    verified: Dir = VERIFY_DIR,
    out: Dir = PROMOTE_DIR,
    model_name: Annotated[str | None, typer.Option(help="registered model and OTA prefix")] = None,
) -> None:
    """Register the verified model, alias it, publish it and then its manifest to the OTA bucket."""
    from edgeops.promote import promote as run

    result = run(verified, out, Settings(), model_name)
    console.print(f"promoted {result.model_name} version {result.version}: {result.manifest_url}")


def main() -> None:
    try:
        app()
    except EdgeopsError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(1) from None


@pipeline_app.command("run")
def pipeline_run(
    manifest: Annotated[Path | None, typer.Option(help="session manifest (file -> label)")] = None,
    model_name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Run the compiled pipeline with KFP's local runner and print each stage's wall time."""
    from edgeops.pipeline import pipeline_arguments, run_local

    settings = Settings()
    result = run_local(settings, pipeline_arguments(settings, manifest, model_name), settings.out_dir / "kfp")
    _print_stage_times(result.stage_seconds, result.seconds)


@app.command()
def demo(
    manifest: Annotated[Path | None, typer.Option(help="session manifest (file -> label)")] = None,
    model_name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Start the stack, run the pipeline, then fetch and run the promoted model as a device would."""
    from edgeops.demo import run_demo

    settings = Settings()
    summary = run_demo(settings, manifest or settings.session_manifest, model_name or settings.model_name)
    _print_stage_times(summary["stage_seconds"], summary["pipeline_seconds"])
    table = Table(title="edgeops demo", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = [
        ("dataset version", summary["dataset_version"]),
        ("MLflow run", summary["mlflow_run_url"]),
        ("test windows", f"{summary['test_windows']:.0f} (newest time block of each recording)"),
        (
            "accuracy eager / FP32 / INT8",
            f"{summary['eager_accuracy']:.4f} / {summary['fp32_accuracy']:.4f} / {summary['int8_accuracy']:.4f}",
        ),
        (
            "latency p50 FP32 / INT8",
            f"{summary['fp32_latency_p50_ms']:.4f} ms / {summary['int8_latency_p50_ms']:.4f} ms"
            f" (p95 INT8 {summary['int8_latency_p95_ms']:.4f} ms)",
        ),
        ("size FP32 / INT8", f"{summary['fp32_size_bytes']:,} / {summary['int8_size_bytes']:,} bytes"),
        (
            "promoted",
            f"{summary['model_name']} version {summary['promoted_version']} (alias '{summary['registry_alias']}')",
        ),
        ("manifest", summary["manifest_url"]),
        ("model", summary["model_url"]),
    ]
    for file, result in summary["device_check"]["predictions"].items():
        rows.append(
            (f"device: {file}", f"{result['agreement']:.0%} of {result['windows']} windows read as '{result['label']}'")
        )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"summary: {settings.out_dir / 'demo' / 'summary.json'}")
    console.print(f"MLflow UI: {summary['mlflow_tracking_uri']}   device manifest: {summary['manifest_url']}")
    console.print("the stack keeps running; stop it with [bold]make down[/]")


def _print_stage_times(stage_seconds: dict[str, float], total: float) -> None:
    table = Table(title="pipeline wall time (KFP local runner)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in stage_seconds.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("[bold]whole pipeline[/]", f"[bold]{total:.1f}[/]")
    console.print(table)


@pipeline_app.command("submit")
def pipeline_submit(
    package: Annotated[Path, typer.Option(help="compiled cluster pipeline")] = Path(
        "pipelines/mat_occupancy_cluster.yaml"
    ),
    model_name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Upload the cluster pipeline to Kubeflow Pipelines, start a run and print its URL."""
    from edgeops.cluster import submit
    from edgeops.pipeline import pipeline_arguments

    settings = Settings()
    # Inside the component image the recordings sit at the default relative path.
    console.print(f"run started: {submit(settings, package, pipeline_arguments(settings, model_name=model_name))}")
