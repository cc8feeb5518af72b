"""`edgeops pipeline run | submit`: the compiled pipeline, on this machine or on a Kubeflow cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli.device import valid_name
from edgeops.cli.output import console, print_stage_times
from edgeops.cli.stages import DatasetOption
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


@app.command("run")
def run(
    manifest: Annotated[Path | None, typer.Option(help="mat: session manifest (file -> label)")] = None,
    model_name: ModelNameOption = None,
    dataset: DatasetOption = Dataset.mat,
    runner: RunnerOption = None,
) -> None:
    """Run the compiled pipeline with KFP's local runner and print each stage's wall time."""
    from edgeops.pipeline.arguments import pipeline_arguments
    from edgeops.pipeline.local import run_local

    settings = with_runner(Settings(), runner)
    result = run_local(settings, pipeline_arguments(settings, manifest, model_name, dataset), settings.out_dir / "kfp")
    print_stage_times(result.stage_seconds, result.seconds)


@app.command("submit")
def submit(
    package: Annotated[Path, typer.Option(help="compiled cluster pipeline")] = Path("pipelines/edgeops_cluster.yaml"),
    model_name: ModelNameOption = None,
    dataset: DatasetOption = Dataset.mat,
) -> None:
    """Upload the cluster pipeline to Kubeflow Pipelines, start a run and print its URL."""
    from edgeops.pipeline.arguments import pipeline_arguments
    from edgeops.pipeline.cluster import submit as run

    settings = Settings()
    # Inside the component image the recordings sit at the default relative path.
    arguments = pipeline_arguments(settings, model_name=model_name, dataset=dataset)
    console.print(f"run started: {run(settings, package, arguments)}")
