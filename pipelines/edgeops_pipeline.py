"""The edgeops pipeline: ingest -> train -> export -> benchmark -> verify -> promote.

One definition serves every track through its parameters: `dataset` ("mat" recordings or "pmd"
pressure maps) picks a row of the track table (`edgeops.settings`), and `model`, `model_name` and
`gates` left empty take that row's network, name and gates, so a run from the Kubeflow UI cannot
mix one track's model with another's name or gates. `gates` overrides single gates by name,
e.g. {"min_int8_accuracy": 0.97}; `edgeops.pipeline.arguments` fills every parameter explicitly.

Two flavours compile from one definition (`make compile`):
- `edgeops.yaml` for KFP's local runner: tasks take settings from the environment;
- `edgeops_cluster.yaml` for a Kubeflow cluster: kfp-kubernetes mounts the settings ConfigMap into
  every task and only the Secrets its stage needs (`edgeops.pipeline.cluster`: the raw-bucket S3
  identity for ingest, nothing else), and every task has CPU/memory requests and limits. No task holds
  signing keys: promote requests the release in MLflow (EDGEOPS_RELEASE__SIGNED_BY=signer) and the
  release signer in namespace edgeops-release signs it.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, PipelineTask

from components import stages
from edgeops.pipeline.cluster import mount_task_secrets
from edgeops.settings import Dataset, Settings

DEFAULTS = Settings()
HERE = Path(__file__).parent
# The default of the `gates` parameter: the track's gates as they are. KFP reads it; Python never calls the
# pipeline functions, so the shared dict is never mutated.
NO_GATE_OVERRIDES: dict[str, float] = {}
DESCRIPTION = "Mat recordings or PMD pressure maps to a verified INT8 ExecuTorch model in the OTA bucket."

# Settings each cluster task reads from the ConfigMap (key -> environment variable).
SETTINGS_KEYS = [
    "EDGEOPS_S3_ENDPOINT",
    "EDGEOPS_MLFLOW_TRACKING_URI",
    "EDGEOPS_RAW_BUCKET",
    "EDGEOPS_OTA_BUCKET",
    "EDGEOPS_RELEASE__SIGNED_BY",  # "signer": promote requests the release, the release signer signs it
]


def for_cluster(task: PipelineTask) -> None:
    cluster = DEFAULTS.cluster
    mount_task_secrets(task, cluster)  # its stage's S3 identity, if any; never signing keys
    kubernetes.use_config_map_as_env(
        task, config_map_name=cluster.settings_config_map, config_map_key_to_env={key: key for key in SETTINGS_KEYS}
    )
    task.set_cpu_request(cluster.task_cpu_request).set_cpu_limit(cluster.task_cpu_limit)
    task.set_memory_request(cluster.task_memory_request).set_memory_limit(cluster.task_memory_limit)


def build(
    dataset: str, model: str, session_manifest: str, model_name: str, channel: str, gates: dict, cluster: bool
) -> Artifact:
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
        gates=gates,
    )
    # The run's model name travels with the records from ingest; an empty one here keeps it.
    promoted = stages.promote(verified=verified.outputs["verified"], model_name="", channel=channel)
    for task in (ingested, trained, exported, measured, verified, promoted):
        task.set_caching_options(False)  # every stage talks to MLflow and S3: never replay a cached result
        if cluster:
            for_cluster(task)
    return promoted.outputs["promotion"]


@dsl.pipeline(name="edgeops", description=DESCRIPTION)
def edgeops_pipeline(
    dataset: str = Dataset.mat.value,
    model: str = "",
    session_manifest: str = str(DEFAULTS.mat.session_manifest),
    model_name: str = "",
    channel: str = DEFAULTS.release.channel,
    gates: dict = NO_GATE_OVERRIDES,
) -> Artifact:
    return build(dataset, model, session_manifest, model_name, channel, gates, cluster=False)


@dsl.pipeline(name="edgeops-cluster", description=f"{DESCRIPTION} On a Kubeflow cluster with the edgeops Helm release.")
def edgeops_pipeline_cluster(
    dataset: str = Dataset.mat.value,
    model: str = "",
    session_manifest: str = str(DEFAULTS.mat.session_manifest),
    model_name: str = "",
    channel: str = DEFAULTS.release.channel,
    gates: dict = NO_GATE_OVERRIDES,
) -> Artifact:
    return build(dataset, model, session_manifest, model_name, channel, gates, cluster=True)


def compile_all(directory: Path = HERE) -> list[Path]:
    packages = [directory / "edgeops.yaml", directory / "edgeops_cluster.yaml"]
    for pipeline, package in zip((edgeops_pipeline, edgeops_pipeline_cluster), packages, strict=True):
        compiler.Compiler().compile(pipeline, str(package))
    return packages


if __name__ == "__main__":
    for package in compile_all():
        print(f"wrote {package}")
