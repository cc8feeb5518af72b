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


@contextmanager
def start_run(settings: Settings, run_name: str) -> Iterator[mlflow.ActiveRun]:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run(run_name=run_name) as run:
        yield run


@contextmanager
def resume_run(settings: Settings, run_id: str) -> Iterator[mlflow.ActiveRun]:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    with mlflow.start_run(run_id=run_id) as run:
        yield run
