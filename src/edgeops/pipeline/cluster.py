"""Submitting the compiled cluster pipeline to Kubeflow Pipelines through its API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeops.errors import EdgeopsError
from edgeops.settings import Settings


def submit(settings: Settings, package: Path, arguments: dict[str, Any]) -> str:
    """Upload a new pipeline version, start a run in the track's experiment, return the run's URL in the UI."""
    import kfp

    if not package.is_file():
        raise EdgeopsError(f"compiled pipeline {package} not found; run `make compile`")
    host = settings.cluster.kfp_host
    try:
        client = kfp.Client(host=host)  # probes the API's health on construction
    except Exception as error:
        raise EdgeopsError(
            f"Kubeflow Pipelines API not reachable at {host} ({type(error).__name__}); "
            f"port-forward it: kubectl port-forward -n {settings.cluster.kfp_namespace} svc/ml-pipeline-ui 8080:80"
        ) from None
    run = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments,
        experiment_name=settings.track(arguments["dataset"]).experiment,
        enable_caching=False,
    )
    return f"{host}/#/runs/details/{run.run_id}"
