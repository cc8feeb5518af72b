"""The edgeops pipeline: ingest -> train -> export -> benchmark -> verify -> promote.

One definition serves both tracks through its parameters: `dataset` ("mat" recordings or
"pmd" pressure maps) and `model` ("mat-mlp" or "mobilenet_v2"); the gates are parameters too,
and `edgeops.pipeline.pipeline_arguments` fills each track's defaults.

Two flavours compile from one definition (`make compile`):
- `mat_occupancy.yaml` for KFP's local runner: tasks take settings from the environment;
- `mat_occupancy_cluster.yaml` for a Kubeflow cluster: kfp-kubernetes mounts the S3 Secret
  and the settings ConfigMap into every task, and every task has CPU/memory requests and limits.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, PipelineTask

from components import stages
from edgeops.settings import GateConfig, Settings

DEFAULTS = Settings()
GATES = GateConfig()
HERE = Path(__file__).parent

# Settings each cluster task reads from the ConfigMap (key -> environment variable).
SETTINGS_KEYS = [
    "EDGEOPS_S3_ENDPOINT",
    "EDGEOPS_MLFLOW_TRACKING_URI",
    "EDGEOPS_RAW_BUCKET",
    "EDGEOPS_OTA_BUCKET",
    "EDGEOPS_RELEASE__KEYS_DIR",
]


def for_cluster(task: PipelineTask) -> None:
    cluster = DEFAULTS.cluster
    kubernetes.use_secret_as_env(
        task,
        secret_name=cluster.s3_secret,
        secret_key_to_env={"access_key": "EDGEOPS_S3_ACCESS_KEY", "secret_key": "EDGEOPS_S3_SECRET_KEY"},
    )
    kubernetes.use_config_map_as_env(
        task, config_map_name=cluster.settings_config_map, config_map_key_to_env={key: key for key in SETTINGS_KEYS}
    )
    task.set_cpu_request(cluster.task_cpu_request).set_cpu_limit(cluster.task_cpu_limit)
    task.set_memory_request(cluster.task_memory_request).set_memory_limit(cluster.task_memory_limit)


def build(
    dataset: str,
    model: str,
    session_manifest: str,
    model_name: str,
    channel: str,
    min_int8_accuracy: float,
    max_int8_accuracy_drop: float,
    max_int8_p95_ms: float,
    max_int8_size_bytes: int,
    min_int8_size_ratio: float,
    max_int8_bytes_per_param: float,
    cluster: bool,
):
    ingested = stages.ingest(dataset_name=dataset, session_manifest=session_manifest, model_name=model_name)
    trained = stages.train(dataset=ingested.outputs["dataset"], architecture=model)
    exported = stages.export(dataset=ingested.outputs["dataset"], model=trained.outputs["model"])
    measured = stages.benchmark(
        dataset=ingested.outputs["dataset"],
        model=trained.outputs["model"],
        executorch=exported.outputs["executorch"],
    )
    verified = stages.verify(
        dataset=ingested.outputs["dataset"],
        executorch=exported.outputs["executorch"],
        results=measured.outputs["results"],
        min_int8_accuracy=min_int8_accuracy,
        max_int8_accuracy_drop=max_int8_accuracy_drop,
        max_int8_p95_ms=max_int8_p95_ms,
        max_int8_size_bytes=max_int8_size_bytes,
        min_int8_size_ratio=min_int8_size_ratio,
        max_int8_bytes_per_param=max_int8_bytes_per_param,
    )
    promoted = stages.promote(verified=verified.outputs["verified"], model_name=model_name, channel=channel)
    for task in (ingested, trained, exported, measured, verified, promoted):
        task.set_caching_options(False)  # every stage talks to MLflow and S3: never replay a cached result
        if cluster:
            for_cluster(task)
    if cluster:  # only promote signs, so only promote sees the release keys
        kubernetes.use_secret_as_volume(
            promoted, secret_name=DEFAULTS.cluster.release_keys_secret, mount_path=DEFAULTS.cluster.release_keys_mount
        )
    return promoted.outputs["promotion"]


@dsl.pipeline(
    name="mat-occupancy",
    description="Mat recordings or PMD pressure maps to a verified INT8 ExecuTorch model in the OTA bucket.",
)
def mat_occupancy(
    dataset: str = "mat",
    model: str = DEFAULTS.architecture_for("mat"),
    session_manifest: str = str(DEFAULTS.session_manifest),
    model_name: str = DEFAULTS.model_name,
    channel: str = DEFAULTS.release.channel,
    min_int8_accuracy: float = GATES.min_int8_accuracy,
    max_int8_accuracy_drop: float = GATES.max_int8_accuracy_drop,
    max_int8_p95_ms: float = GATES.max_int8_p95_ms,
    max_int8_size_bytes: int = GATES.max_int8_size_bytes,
    min_int8_size_ratio: float = GATES.min_int8_size_ratio,
    max_int8_bytes_per_param: float = GATES.max_int8_bytes_per_param,
) -> Artifact:
    return build(
        dataset,
        model,
        session_manifest,
        model_name,
        channel,
        min_int8_accuracy,
        max_int8_accuracy_drop,
        max_int8_p95_ms,
        max_int8_size_bytes,
        min_int8_size_ratio,
        max_int8_bytes_per_param,
        cluster=False,
    )


@dsl.pipeline(
    name="mat-occupancy-cluster",
    description="The same pipeline on a Kubeflow cluster, wired to the edgeops Helm release.",
)
def mat_occupancy_cluster(
    dataset: str = "mat",
    model: str = DEFAULTS.architecture_for("mat"),
    session_manifest: str = str(DEFAULTS.session_manifest),
    model_name: str = DEFAULTS.model_name,
    channel: str = DEFAULTS.release.channel,
    min_int8_accuracy: float = GATES.min_int8_accuracy,
    max_int8_accuracy_drop: float = GATES.max_int8_accuracy_drop,
    max_int8_p95_ms: float = GATES.max_int8_p95_ms,
    max_int8_size_bytes: int = GATES.max_int8_size_bytes,
    min_int8_size_ratio: float = GATES.min_int8_size_ratio,
    max_int8_bytes_per_param: float = GATES.max_int8_bytes_per_param,
) -> Artifact:
    return build(
        dataset,
        model,
        session_manifest,
        model_name,
        channel,
        min_int8_accuracy,
        max_int8_accuracy_drop,
        max_int8_p95_ms,
        max_int8_size_bytes,
        min_int8_size_ratio,
        max_int8_bytes_per_param,
        cluster=True,
    )


def compile_all(directory: Path = HERE) -> list[Path]:
    packages = [directory / "mat_occupancy.yaml", directory / "mat_occupancy_cluster.yaml"]
    for pipeline, package in zip((mat_occupancy, mat_occupancy_cluster), packages, strict=True):
        compiler.Compiler().compile(pipeline, str(package))
    return packages


if __name__ == "__main__":
    for package in compile_all():
        print(f"wrote {package}")
