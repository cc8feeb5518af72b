"""`make bench`: the production model's exact programs and weights under every engine, side by side.

Measures and prints; gates nothing. Figures go to `out/bench/` and to the model's MLflow run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from edgeops.bench.peer import ET_FP32, ET_INT8, PeerConfig, PeerResult, compare
from edgeops.bench.peer_report import write_report
from edgeops.datasets.base import DATA_FILE, DatasetRecord, dataset_key, load_splits
from edgeops.errors import EdgeopsError
from edgeops.quantize.pt2e import evenly_spaced
from edgeops.settings import Dataset, Settings
from edgeops.stack import tracking
from edgeops.stack.s3 import s3_client
from edgeops.stages.export import ARTIFACT_DIR, ExportedModels
from edgeops.stages.train import MODEL_ARTIFACT_DIR, load_model

PEER_ARTIFACT_DIR = "peer"
Say = Callable[[str], None]


class ProductionModel(BaseModel):
    """Where the production model of one registered name came from."""

    model_name: str
    registry_version: str
    run_id: str
    strategy: str


def production_model(settings: Settings, model_name: str) -> ProductionModel | None:
    from mlflow.exceptions import MlflowException

    client = tracking.client(settings)
    try:
        version = client.get_model_version_by_alias(model_name, settings.registry_alias)
    except MlflowException:
        return None
    tags = client.get_run(version.run_id).data.tags
    return ProductionModel(
        model_name=model_name,
        registry_version=version.version,
        run_id=version.run_id,
        strategy=tags.get("int8_strategy", ""),
    )


def ensure_production_model(settings: Settings, dataset: Dataset, say: Say) -> ProductionModel:
    """The track's production model; when there is none yet, the pipeline runs first to make one."""
    model_name = settings.track(dataset).model_name
    found = production_model(settings, model_name)
    if found is not None:
        return found
    from edgeops.pipeline.arguments import pipeline_arguments
    from edgeops.pipeline.local import run_local

    say(f"no '{settings.registry_alias}' model for {model_name} yet: running the {dataset} pipeline first")
    run_local(settings, pipeline_arguments(settings, dataset=dataset), settings.out_dir / "kfp")
    found = production_model(settings, model_name)
    if found is None:
        raise EdgeopsError(f"the pipeline ran but {model_name} has no '{settings.registry_alias}' version")
    return found


def fetch_run_inputs(settings: Settings, run_id: str, directory: Path) -> tuple[Path, Path, Path]:
    """The run's dataset (from the raw bucket), trained weights and ExecuTorch programs, in `directory`."""
    client = tracking.client(settings)
    dataset_dir = directory / "dataset"
    dataset_dir.mkdir(parents=True)
    record = Path(client.download_artifacts(run_id, "dataset/dataset.json", str(directory)))
    dataset = DatasetRecord.model_validate_json(record.read_text())
    record.replace(dataset_dir / DatasetRecord.record_file)
    s3_client(settings).download_file(
        settings.raw_bucket, dataset_key(dataset.version, DATA_FILE), str(dataset_dir / DATA_FILE)
    )
    model_dir = Path(client.download_artifacts(run_id, MODEL_ARTIFACT_DIR, str(directory)))
    export_dir = Path(client.download_artifacts(run_id, ARTIFACT_DIR, str(directory)))
    return dataset_dir, model_dir, export_dir


def peer_bench(
    settings: Settings, out_dir: Path, config: PeerConfig, dataset: Dataset = Dataset.pmd, say: Say = print
) -> PeerResult:
    """Run the production model's exact programs and weights under every engine; log the report to its run."""
    production = ensure_production_model(settings, dataset, say)
    say(
        f"{production.model_name} registry version {production.registry_version} "
        f"(run {production.run_id}, INT8 {production.strategy})"
    )
    with tempfile.TemporaryDirectory() as scratch:
        dataset_dir, model_dir, export_dir = fetch_run_inputs(settings, production.run_id, Path(scratch))
        exported = ExportedModels.load(export_dir)
        int8 = exported.candidates[production.strategy]
        _, model = load_model(model_dir)
        splits = load_splits(dataset_dir)
        x_train = splits["train"][0]
        calibration = x_train[evenly_spaced(len(x_train), exported.calibration_samples)]  # as export calibrated
        x_test, y_test = splits["test"]
        say(f"measuring 6 engines on {len(y_test)} test samples (this takes a few minutes)")
        result = compare(
            model,
            calibration,
            x_test,
            y_test,
            export_dir / exported.fp32.file,
            export_dir / int8.file,
            out_dir,
            labels=exported.spec.labels,
            config=config,
            lowering={ET_FP32: exported.fp32, ET_INT8: int8},
        )
    paths = write_report(result, out_dir)

    import mlflow

    with tracking.resume_run(settings, production.run_id):
        for path in paths:
            mlflow.log_artifact(str(path), PEER_ARTIFACT_DIR)
        for pairing in result.ratios:
            mlflow.log_metric(f"peer_ratio_{pairing.a}_vs_{pairing.b}", pairing.ratio.median_paired)
        for key, engine in result.engines.items():
            mlflow.log_metric(f"peer_{key}_accuracy", engine.evaluation.accuracy)
    return result
