"""MLflow access. One pipeline run is one MLflow run: ingest opens it, later stages resume it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from edgeops.settings import Settings

if TYPE_CHECKING:
    import mlflow


def client(settings: Settings) -> mlflow.MlflowClient:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    return mlflow.MlflowClient(settings.tracking_uri)


def experiment_id(settings: Settings, experiment: str) -> str:
    """The experiment's id on this server, created on first use.

    Not `mlflow.set_experiment`: that pins the id process-wide (and in MLFLOW_EXPERIMENT_ID for child
    processes), so resuming a run of another experiment, or on another server, fails afterwards.
    """
    tracker = client(settings)
    found = tracker.get_experiment_by_name(experiment)
    return str(found.experiment_id) if found else tracker.create_experiment(experiment)


@contextmanager
def start_run(settings: Settings, experiment: str, run_name: str) -> Iterator[mlflow.ActiveRun]:
    """A new run in `experiment` (each track has its own)."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id(settings, experiment), run_name=run_name) as run:
        yield run


@contextmanager
def resume_run(settings: Settings, run_id: str) -> Iterator[mlflow.ActiveRun]:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    with mlflow.start_run(run_id=run_id) as run:
        yield run
