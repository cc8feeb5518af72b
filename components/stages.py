"""Thin KFP wrappers: each maps KFP artifacts to directories and calls one edgeops stage.

The function bodies run inside the component image (or, with KFP's local runner, in this
virtualenv), so they import edgeops themselves. Settings come from the task's environment;
empty parameters (model, model_name, gates) mean "the track's", from the track table.
`stage_task` records each stage's wall time in its output's metadata, or its error.
"""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from edgeops.settings import Settings

IMAGE = Settings().component_image


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(dataset_name: str, session_manifest: str, model_name: str, dataset: Output[Dataset]) -> str:
    """Build the versioned dataset of the track `dataset_name` ("mat" or "pmd"). Returns the MLflow run id."""
    from pathlib import Path

    from edgeops.pipeline.task import stage_task
    from edgeops.settings import Settings
    from edgeops.stages.ingest import ingest as run

    with stage_task(dataset):
        info = run(dataset_name, Path(dataset.path), Settings(), session_manifest, model_name or None)
    dataset.metadata.update({"version": info.version, "samples": info.samples, "mlflow_run_id": info.run_id})
    return info.run_id


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(dataset: Input[Dataset], architecture: str, model: Output[Model]) -> None:
    from pathlib import Path

    from edgeops.pipeline.task import stage_task
    from edgeops.settings import Settings
    from edgeops.stages.train import train as run

    with stage_task(model):
        info = run(Path(dataset.path), Path(model.path), Settings(), architecture or None)
    model.metadata.update({"val_accuracy": info.val_accuracy, "best_epoch": info.best_epoch})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(dataset: Input[Dataset], model: Input[Model], executorch: Output[Model]) -> None:
    from pathlib import Path

    from edgeops.pipeline.task import stage_task
    from edgeops.settings import Settings
    from edgeops.stages.export import export as run

    with stage_task(executorch):
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

    from edgeops.pipeline.task import stage_task
    from edgeops.settings import Settings
    from edgeops.stages.benchmark import REPORT_FILE
    from edgeops.stages.benchmark import benchmark as run

    out = Path(results.path)
    with stage_task(results):
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
    gates: dict,
    verified: Output[Model],
) -> None:
    """Judge the candidates against the track's gates, with `gates` overriding any of them by name."""
    from pathlib import Path

    from edgeops.pipeline.task import stage_task
    from edgeops.settings import Settings
    from edgeops.stages.export import ExportedModels
    from edgeops.stages.verify import verify as run

    settings = Settings()
    with stage_task(verified):
        track = settings.track(ExportedModels.load(Path(executorch.path)).spec.dataset)
        chosen = track.gates.overridden(gates)
        result = run(
            Path(dataset.path), Path(executorch.path), Path(results.path), Path(verified.path), settings, chosen
        )
    verified.metadata.update({"sha256": result.sha256, "size_bytes": result.size_bytes, "strategy": result.strategy})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(verified: Input[Model], model_name: str, channel: str, promotion: Output[Artifact]) -> int:
    """Register and publish a signed release (or, on a cluster, ask the release signer for one). Returns the
    registry version."""
    from pathlib import Path

    from edgeops.pipeline.task import stage_task
    from edgeops.settings import Settings
    from edgeops.stages.promote import promote as run

    with stage_task(promotion):
        result = run(Path(verified.path), Path(promotion.path), Settings(), model_name or None, channel or None)
    promotion.metadata.update(
        {
            "manifest_url": result.manifest_url,
            "version": result.version,
            "release": result.describe(),
        }
    )
    return result.version
