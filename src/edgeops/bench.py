"""Benchmark commands beside the pipeline: `make bench` (ExecuTorch against ONNX Runtime on the
production model) and `make bench-loso` (leave-one-subject-out on PMD).

Both measure and print; neither gates anything. Figures go to `out/bench*/` and to MLflow.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from edgeops import pmd, tracking
from edgeops.benchmark import predict_all
from edgeops.errors import EdgeopsError
from edgeops.export import ExportedModels, evenly_spaced, lower, quantize
from edgeops.ingest import DATA_FILE, load_splits
from edgeops.model import build_model
from edgeops.peer import ET_FP32, ET_INT8, PeerConfig, PeerResult, compare, write_report
from edgeops.records import DatasetRecord, StageRecord
from edgeops.runtime import Program
from edgeops.settings import DatasetName, Settings, Strategy
from edgeops.storage import s3_client
from edgeops.train import (
    MODEL_ARTIFACT_DIR,
    denormals_flushed,
    fit,
    load_model,
    logits_of,
    model_spec,
    prepare_torch,
    recipe_for,
    training_tensors,
)

PEER_ARTIFACT_DIR = "peer"
LOSO_FILE = "loso.json"
LOSO_REPORT = "loso.md"
LOSO_PLOT = "loso.png"

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


def ensure_production_model(settings: Settings, dataset: DatasetName, say: Say) -> ProductionModel:
    """The track's production model; when there is none yet, the pipeline runs first to make one."""
    model_name = settings.model_name_for(dataset)
    found = production_model(settings, model_name)
    if found is not None:
        return found
    from edgeops.pipeline import pipeline_arguments, run_local

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
        settings.raw_bucket, f"datasets/{dataset.version}/{DATA_FILE}", str(dataset_dir / DATA_FILE)
    )
    model_dir = Path(client.download_artifacts(run_id, MODEL_ARTIFACT_DIR, str(directory)))
    export_dir = Path(client.download_artifacts(run_id, "executorch", str(directory)))
    return dataset_dir, model_dir, export_dir


def peer_bench(
    settings: Settings, out_dir: Path, config: PeerConfig, dataset: DatasetName = "pmd", say: Say = print
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


# ---------------------------------------------------------------- leave one subject out


class LosoFold(BaseModel):
    test_subject: str
    val_subject: str
    train_samples: int
    test_samples: int
    best_epoch: int
    fp32_accuracy: float  # eager PyTorch
    int8_accuracy: float  # the INT8 ExecuTorch program, through the runtime
    seconds: float


class LosoResult(StageRecord):
    record_file = LOSO_FILE
    dataset: str
    label_set: str
    strategy: Strategy
    recipe: dict[str, float | int | str | bool]
    folds: list[LosoFold]

    @property
    def mean_fp32(self) -> float:
        return float(np.mean([fold.fp32_accuracy for fold in self.folds]))

    @property
    def mean_int8(self) -> float:
        return float(np.mean([fold.int8_accuracy for fold in self.folds]))


def loso_fold(
    data: pmd.PmdData, subject: str, val_subject: str, settings: Settings, strategy: Strategy, work: Path
) -> LosoFold:
    """Train on every subject but two, pick the epoch on `val_subject`, test FP32 and INT8 on `subject`."""
    started = time.perf_counter()
    splits, split_subjects = pmd.split_by_subject(data, [subject], [val_subject])
    record = pmd.dataset_info(data, splits, split_subjects, 0, settings.pmd.experiment, settings.pmd.max_value)
    spec = model_spec(record, settings.architecture_for("pmd"), settings)
    recipe = recipe_for(spec.architecture, settings, spec.labels)
    prepare_torch(recipe, settings)
    x_train, y_train, x_val, y_val = training_tensors(splits)
    model = build_model(spec)
    model.fit(x_train)
    with denormals_flushed():
        best_epoch, _, _ = fit(model, x_train, y_train, x_val, y_val, recipe)
    x_test, y_test = splits["test"]
    x = torch.from_numpy(x_test)
    fp32_accuracy = float((logits_of(model, x).argmax(dim=1).numpy() == y_test).mean())

    quantized = quantize(model, strategy, splits, recipe, settings.quantize)
    path = work / f"{subject}_int8.pte"
    lower(quantized, x[:1], path, path.name)
    int8_accuracy = float((predict_all(Program(path), x) == y_test).mean())
    return LosoFold(
        test_subject=subject,
        val_subject=val_subject,
        train_samples=len(x_train) // recipe.train_stride,
        test_samples=len(y_test),
        best_epoch=best_epoch,
        fp32_accuracy=fp32_accuracy,
        int8_accuracy=int8_accuracy,
        seconds=time.perf_counter() - started,
    )


def render_loso(result: LosoResult) -> str:
    lines = [
        f"# Leave-one-subject-out: PMD {result.dataset}, {result.label_set}",
        "",
        "Each subject is the test set once; the next subject validates (best epoch), the rest train. "
        f"FP32 is eager PyTorch; INT8 is the {result.strategy} ExecuTorch program run by the runtime.",
        "",
        "| test subject | val subject | train samples | test samples | best epoch | FP32 | INT8 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {f.test_subject} | {f.val_subject} | {f.train_samples} | {f.test_samples} | {f.best_epoch} | "
        f"{f.fp32_accuracy:.4f} | {f.int8_accuracy:.4f} | {f.seconds:.0f} |"
        for f in result.folds
    ]
    lines += [
        f"| **mean** | | | | | **{result.mean_fp32:.4f}** | **{result.mean_int8:.4f}** | |",
        "",
        f"Recipe: {result.recipe}",
    ]
    return "\n".join(lines) + "\n"


def plot_loso(result: LosoResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = [fold.test_subject for fold in result.folds]
    positions = np.arange(len(subjects))
    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.bar(positions - 0.2, [f.fp32_accuracy for f in result.folds], 0.4, label="FP32 (eager)")
    axes.bar(positions + 0.2, [f.int8_accuracy for f in result.folds], 0.4, label=f"INT8 ({result.strategy})")
    axes.axhline(
        result.mean_int8, linestyle="--", linewidth=1, color="black", label=f"mean INT8 {result.mean_int8:.3f}"
    )
    axes.set_xticks(positions, subjects)
    axes.set_ylim(min(0.5, min(f.int8_accuracy for f in result.folds) - 0.05), 1.0)
    axes.set_ylabel("accuracy on the held-out subject")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def loso(
    settings: Settings,
    out_dir: Path,
    subjects: list[str] | None = None,
    strategy: Strategy = "qat",
    say: Say = print,
) -> LosoResult:
    config = settings.pmd
    chosen = subjects or config.subjects
    if len(chosen) < 3:
        raise EdgeopsError("leave-one-subject-out needs at least 3 subjects (test, validation, training)")
    data = pmd.load_subjects(config, chosen)
    recipe_params = recipe_for(settings.architecture_for("pmd"), settings, pmd.labels_for(config.label_set)).params()
    out_dir.mkdir(parents=True, exist_ok=True)
    folds: list[LosoFold] = []
    with tempfile.TemporaryDirectory() as work:
        for index, subject in enumerate(chosen):
            val_subject = chosen[(index + 1) % len(chosen)]
            say(f"fold {index + 1}/{len(chosen)}: test {subject}, validation {val_subject}")
            fold = loso_fold(data, subject, val_subject, settings, strategy, Path(work))
            folds.append(fold)
            result = LosoResult(
                dataset=config.experiment,
                label_set=config.label_set,
                strategy=strategy,
                recipe=recipe_params,
                folds=folds,
            )
            result.save(out_dir)  # a long run interrupted keeps its finished folds
            say(f"  FP32 {fold.fp32_accuracy:.4f}  INT8 {fold.int8_accuracy:.4f}  ({fold.seconds:.0f} s)")
    (out_dir / LOSO_REPORT).write_text(render_loso(result))
    plot_loso(result, out_dir / LOSO_PLOT)

    import mlflow

    with tracking.start_run(settings, run_name=f"{config.model_name}-loso"):
        mlflow.set_tags({"dataset": "pmd", "benchmark": "leave-one-subject-out"})
        mlflow.log_params({f"loso.{key}": value for key, value in recipe_params.items()} | {"loso.strategy": strategy})
        for fold in folds:
            mlflow.log_metrics(
                {
                    f"loso_{fold.test_subject}_fp32_accuracy": fold.fp32_accuracy,
                    f"loso_{fold.test_subject}_int8_accuracy": fold.int8_accuracy,
                }
            )
        mlflow.log_metrics({"loso_mean_fp32_accuracy": result.mean_fp32, "loso_mean_int8_accuracy": result.mean_int8})
        for name in (LOSO_FILE, LOSO_REPORT, LOSO_PLOT):
            mlflow.log_artifact(str(out_dir / name), "loso")
    return result
