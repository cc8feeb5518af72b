"""Thin KFP wrappers: each maps KFP artifacts to directories and calls one edgeops stage.

The function bodies run inside the component image (or, with KFP's local
runner, in this virtualenv), so they import edgeops themselves. Settings come
from the task's environment, plus the pipeline parameters passed here.
"""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from edgeops.settings import Settings

IMAGE = Settings().component_image


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(dataset_name: str, session_manifest: str, model_name: str, dataset: Output[Dataset]) -> str:
    """Build the versioned dataset of the track `dataset_name` ("mat" or "pmd"). Returns the MLflow run id."""
    from pathlib import Path

    from edgeops.ingest import ingest_dataset
    from edgeops.settings import Settings

    info = ingest_dataset(dataset_name, session_manifest, Path(dataset.path), Settings(model_name=model_name))
    dataset.metadata.update({"version": info.version, "samples": info.samples, "mlflow_run_id": info.run_id})
    return info.run_id


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(dataset: Input[Dataset], architecture: str, model: Output[Model]) -> None:
    from pathlib import Path

    from edgeops.settings import Settings
    from edgeops.train import train as run

    info = run(Path(dataset.path), Path(model.path), Settings(), architecture)
    model.metadata.update({"val_accuracy": info.val_accuracy, "best_epoch": info.best_epoch})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(dataset: Input[Dataset], model: Input[Model], executorch: Output[Model]) -> None:
    from pathlib import Path

    from edgeops.export import export as run
    from edgeops.settings import Settings

    result = run(Path(dataset.path), Path(model.path), Path(executorch.path), Settings())
    for name, program in (("fp32", result.fp32), *result.candidates.items()):
        executorch.metadata[name] = {
            "sha256": program.sha256,
            "size_bytes": program.size_bytes,
            "delegated_ops": program.delegated_ops,
            "non_delegated_ops": program.non_delegated_ops,
        }


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def benchmark(
    dataset: Input[Dataset],
    model: Input[Model],
    executorch: Input[Model],
    results: Output[Artifact],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[Markdown],
) -> None:
    from pathlib import Path

    from edgeops.benchmark import REPORT_FILE
    from edgeops.benchmark import benchmark as run
    from edgeops.settings import Settings

    out = Path(results.path)
    result = run(Path(dataset.path), Path(model.path), Path(executorch.path), out, Settings())
    for name, runner in result.results.items():
        metrics.log_metric(f"{name}_accuracy", runner.accuracy)
        metrics.log_metric(f"{name}_f1", runner.f1)
        metrics.log_metric(f"{name}_latency_p95_ms", runner.latency.p95_ms)
    confusion_matrix.log_confusion_matrix(result.labels, result.results["fp32"].confusion)
    Path(report.path).write_text((out / REPORT_FILE).read_text())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def verify(
    dataset: Input[Dataset],
    executorch: Input[Model],
    results: Input[Artifact],
    min_int8_accuracy: float,
    max_int8_accuracy_drop: float,
    max_int8_p95_ms: float,
    max_int8_size_bytes: int,
    min_int8_size_ratio: float,
    max_int8_bytes_per_param: float,
    verified: Output[Model],
) -> None:
    from pathlib import Path

    from edgeops.settings import GateConfig, Settings
    from edgeops.verify import verify as run

    gates = GateConfig(
        min_int8_accuracy=min_int8_accuracy,
        max_int8_accuracy_drop=max_int8_accuracy_drop,
        max_int8_p95_ms=max_int8_p95_ms,
        max_int8_size_bytes=max_int8_size_bytes,
        min_int8_size_ratio=min_int8_size_ratio,
        max_int8_bytes_per_param=max_int8_bytes_per_param,
    )
    result = run(
        Path(dataset.path), Path(executorch.path), Path(results.path), Path(verified.path), Settings(gates=gates)
    )
    verified.metadata.update({"sha256": result.sha256, "size_bytes": result.size_bytes, "strategy": result.strategy})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(verified: Input[Model], model_name: str, channel: str, promotion: Output[Artifact]) -> int:
    """Register, alias and publish a signed release to the OTA bucket. Returns the registry version."""
    from pathlib import Path

    from edgeops.promote import promote as run
    from edgeops.settings import Settings

    result = run(Path(verified.path), Path(promotion.path), Settings(model_name=model_name), model_name, channel)
    promotion.metadata.update(
        {
            "manifest_url": result.manifest_url,
            "version": result.version,
            "release": f"{channel} v{result.release_version}",
        }
    )
    return result.version
