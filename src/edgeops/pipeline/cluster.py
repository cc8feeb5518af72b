"""The cluster pipeline's least-privilege wiring (which task gets which Secret), and submitting it to
Kubeflow Pipelines through its API. No task signs: releases are signed by the release signer in
namespace edgeops-release. docs/cluster-security.md explains the design and its limits."""

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
    """The object store identities a KFP task can get; none of them is the root user. The `publisher`
    identity (the OTA bucket) is not among them: only the release signer and the heartbeat hold it, in
    namespace edgeops-release (helm/edgeops/templates/wiring, docs/cluster-security.md)."""

    pipeline = "pipeline"  # objects in the raw bucket


# Every stage of the pipeline and the S3 identity its task gets on a cluster. Only ingest (archives to
# the raw bucket) calls S3 itself; the others reach MLflow's artifacts through its proxy and get no S3
# credentials at all. Promote gets neither S3 nor the release keys: on a cluster it only requests a
# release in MLflow (EDGEOPS_RELEASE__SIGNED_BY=signer), and the release signer (`edgeops release
# sign-requests`, namespace edgeops-release) checks, signs and publishes it. Kubernetes mounts Secrets
# only from a pod's own namespace, so no task in kubeflow can mount the keys. A stage missing here
# cannot be wired.
TASK_S3_IDENTITY: dict[str, S3Identity | None] = {
    "ingest": S3Identity.pipeline,
    "train": None,
    "export": None,
    "benchmark": None,
    "verify": None,
    "promote": None,
}
# Keys of the S3 identity Secrets in the KFP namespace -> the settings each task reads.
S3_SECRET_KEYS = {"access_key": "EDGEOPS_S3_ACCESS_KEY", "secret_key": "EDGEOPS_S3_SECRET_KEY"}


@dataclass(frozen=True)
class TaskSecrets:
    """The Secrets one task mounts: its S3 identity's (as environment), if any. No task mounts signing keys."""

    s3_secret: str | None


def task_secrets(stage: str, cluster: ClusterConfig) -> TaskSecrets:
    """What the task of `stage` may see on a cluster; a stage without an entry is an error, never a default."""
    if stage not in TASK_S3_IDENTITY:
        raise EdgeopsError(
            f"no cluster wiring for stage '{stage}': add it to edgeops.pipeline.cluster.TASK_S3_IDENTITY"
        )
    return TaskSecrets(s3_secret=cluster.s3_secret if TASK_S3_IDENTITY[stage] is S3Identity.pipeline else None)


def mount_task_secrets(task: PipelineTask, cluster: ClusterConfig) -> TaskSecrets:
    """Mount into a cluster task exactly the Secrets its stage needs (see `task_secrets`), through kfp-kubernetes."""
    from kfp import kubernetes

    secrets = task_secrets(task.component_spec.name, cluster)
    if secrets.s3_secret:
        kubernetes.use_secret_as_env(task, secret_name=secrets.s3_secret, secret_key_to_env=S3_SECRET_KEYS)
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
