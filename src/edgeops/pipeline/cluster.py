"""The cluster pipeline's least-privilege wiring (which task gets which Secret), and submitting it to
Kubeflow Pipelines through its API. docs/cluster-security.md explains the design and its limits."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeops.errors import EdgeopsError
from edgeops.settings import ClusterConfig, Settings

if TYPE_CHECKING:
    from kfp.dsl import PipelineTask


class S3Identity(StrEnum):
    """The object store identities a task can get; none of them is the root user."""

    pipeline = "pipeline"  # objects in the raw bucket
    publisher = "publisher"  # objects in the OTA bucket


# Every stage of the pipeline and the S3 identity its task gets on a cluster. Only ingest (archives to
# the raw bucket) and promote (publishes to the OTA bucket) call S3 themselves; the others reach MLflow's
# artifacts through its proxy and get no S3 credentials at all. A stage missing here cannot be wired.
TASK_S3_IDENTITY: dict[str, S3Identity | None] = {
    "ingest": S3Identity.pipeline,
    "train": None,
    "export": None,
    "benchmark": None,
    "verify": None,
    "promote": S3Identity.publisher,
}
# The only stage that signs releases, so the only one that mounts the online TUF keys.
SIGNING_STAGES = frozenset({"promote"})
# Keys of the S3 identity Secrets in the KFP namespace -> the settings each task reads.
S3_SECRET_KEYS = {"access_key": "EDGEOPS_S3_ACCESS_KEY", "secret_key": "EDGEOPS_S3_SECRET_KEY"}


@dataclass(frozen=True)
class TaskSecrets:
    """The Secrets one task mounts: its S3 identity's (as environment) and, if it signs, the release keys."""

    s3_secret: str | None
    release_keys_secret: str | None


def task_secrets(stage: str, cluster: ClusterConfig) -> TaskSecrets:
    """What the task of `stage` may see on a cluster; a stage without an entry is an error, never a default."""
    if stage not in TASK_S3_IDENTITY:
        raise EdgeopsError(
            f"no cluster wiring for stage '{stage}': add it to edgeops.pipeline.cluster.TASK_S3_IDENTITY"
        )
    identity = TASK_S3_IDENTITY[stage]
    s3_secret = {None: None, S3Identity.pipeline: cluster.s3_secret, S3Identity.publisher: cluster.publisher_s3_secret}
    return TaskSecrets(
        s3_secret=s3_secret[identity],
        release_keys_secret=cluster.release_keys_secret if stage in SIGNING_STAGES else None,
    )


def mount_task_secrets(task: PipelineTask, cluster: ClusterConfig) -> TaskSecrets:
    """Mount into a cluster task exactly the Secrets its stage needs (see `task_secrets`), through kfp-kubernetes."""
    from kfp import kubernetes

    secrets = task_secrets(task.component_spec.name, cluster)
    if secrets.s3_secret:
        kubernetes.use_secret_as_env(task, secret_name=secrets.s3_secret, secret_key_to_env=S3_SECRET_KEYS)
    if secrets.release_keys_secret:
        kubernetes.use_secret_as_volume(
            task, secret_name=secrets.release_keys_secret, mount_path=cluster.release_keys_mount
        )
    return secrets


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
