"""`edgeops pipeline run | submit`: the compiled pipeline, on this machine or on a Kubeflow cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli.device import valid_name
from edgeops.cli.output import console, print_stage_times, run_output
from edgeops.cli.stages import DatasetOption
from edgeops.errors import InputError
from edgeops.settings import Dataset, Runner, Settings

app = typer.Typer(
    no_args_is_help=True, help="Run the compiled KFP pipeline (`make compile` writes it) locally or on a cluster."
)
ModelNameOption = Annotated[
    str | None, typer.Option(help="registered model and OTA prefix (default: the track's)", callback=valid_name)
]
RunnerOption = Annotated[
    Runner | None,
    typer.Option(help="subprocess: tasks in this virtualenv; docker: in the component image (default: settings)"),
]


def with_runner(settings: Settings, runner: Runner | None) -> Settings:
    if runner is not None:
        settings.local_runner = settings.local_runner.model_copy(update={"runner": runner})
    return settings


VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="stream every task's output (KFP's executor input, library messages)"),
]


@app.command("run")
def run(
    manifest: Annotated[Path | None, typer.Option(help="mat: session manifest (file -> label)")] = None,
    model_name: ModelNameOption = None,
    dataset: DatasetOption = Dataset.mat,
    runner: RunnerOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Run the compiled pipeline with KFP's local runner, showing each stage as it runs and its wall time."""
    from edgeops.pipeline.arguments import pipeline_arguments
    from edgeops.pipeline.local import run_local

    settings = with_runner(Settings(), runner)
    arguments = pipeline_arguments(settings, manifest, model_name, dataset)
    with run_output(settings, "pipeline", verbose) as (view, log):
        result = run_local(settings, arguments, settings.out_dir / "kfp", view, log)
    if verbose:
        print_stage_times(result.stage_seconds, result.seconds)
    else:
        console.print(f"pipeline done in {result.seconds:.1f} s")


@app.command("submit")
def submit(
    package: Annotated[
        Path | None, typer.Option(help="compiled cluster pipeline (default: settings cluster.pipeline_package)")
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(help="mat: s3://bucket/…/session.json of an uploaded session (default: the image's recordings)"),
    ] = None,
    model_name: ModelNameOption = None,
    dataset: DatasetOption = Dataset.mat,
) -> None:
    """Upload the cluster pipeline to Kubeflow Pipelines, start a run and print its URL."""
    from edgeops.pipeline.arguments import pipeline_arguments
    from edgeops.pipeline.cluster import submit as run
    from edgeops.stack.sessions import is_session_uri

    if manifest is not None and not is_session_uri(manifest):
        raise InputError([f"--manifest {manifest}: a cluster task reads sessions from a bucket, give its s3:// URI"])
    settings = Settings()
    # Without a manifest, the recordings at the default relative path inside the component image.
    arguments = pipeline_arguments(settings, manifest, model_name=model_name, dataset=dataset)
    console.print(f"run started: {run(settings, package or settings.cluster.pipeline_package, arguments)}")
