"""Export: the FP32 ExecuTorch program and one INT8 candidate per quantization strategy, lowered to XNNPACK.

Verify later promotes the smallest, fastest candidate that passes the gates.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from edgeops.datasets.base import load_splits
from edgeops.models.nets import ModelSpec
from edgeops.models.training import recipe_for
from edgeops.quantize.lowering import FP32_LOWERING_TOLERANCE, LoweredProgram, check_lowering, lower
from edgeops.quantize.pt2e import STRATEGY_DESCRIPTIONS, evenly_spaced, quantize
from edgeops.records import StageRecord
from edgeops.settings import Settings, Strategy
from edgeops.stack import tracking
from edgeops.stages.train import load_model

INFO_FILE = "export.json"
ARTIFACT_DIR = "executorch"
LOWERING_CHECK_SAMPLES = 16


class Candidate(LoweredProgram):
    """An INT8 program built by one strategy."""

    strategy: Strategy
    description: str


class ExportedModels(StageRecord):
    record_file = INFO_FILE
    spec: ModelSpec
    dataset_version: str
    run_id: str
    model_name: str = ""
    parameters: int
    fp32: LoweredProgram
    candidates: dict[str, Candidate]  # strategy -> INT8 program
    calibration_samples: int


def export(dataset_dir: Path, model_dir: Path, out_dir: Path, settings: Settings) -> ExportedModels:
    config = settings.quantize
    if not config.strategies:
        raise ValueError("settings.quantize.strategies is empty: nothing to export")
    trained, model = load_model(model_dir)
    splits = load_splits(dataset_dir)
    x_train = splits["train"][0]
    example = torch.from_numpy(x_train[:1])
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    fp32 = lower(model, example, out_dir / "model_fp32.pte", f"{ARTIFACT_DIR}/model_fp32.pte")
    fp32.seconds = time.perf_counter() - started
    samples = torch.from_numpy(x_train[evenly_spaced(len(x_train), LOWERING_CHECK_SAMPLES)])
    check_lowering(out_dir / fp32.file, model.eval(), samples, FP32_LOWERING_TOLERANCE)
    print(f"fp32: {fp32.size_bytes:,} bytes in {fp32.seconds:.1f} s")

    recipe = recipe_for(settings.track(trained.spec.dataset), trained.spec.labels)
    candidates: dict[str, Candidate] = {}
    for strategy in dict.fromkeys(config.strategies):
        started = time.perf_counter()
        # QAT changes weights in place; every strategy starts from the trained ones.
        quantized = quantize(load_model(model_dir)[1], strategy, splits, recipe, config)
        name = f"model_int8_{strategy}.pte"
        program = lower(quantized, example, out_dir / name, f"{ARTIFACT_DIR}/{name}")
        program.seconds = time.perf_counter() - started
        description = STRATEGY_DESCRIPTIONS[strategy]
        if strategy == Strategy.qat:
            description += f", {'per-channel' if config.qat_per_channel else 'per-tensor'} weights"
        candidates[strategy] = Candidate(**program.model_dump(), strategy=strategy, description=description)
        print(f"{strategy}: {program.size_bytes:,} bytes in {program.seconds:.1f} s")

    result = ExportedModels(
        spec=trained.spec,
        dataset_version=trained.dataset_version,
        run_id=trained.run_id,
        model_name=trained.model_name,
        parameters=trained.parameters,
        fp32=fp32,
        candidates=candidates,
        calibration_samples=len(evenly_spaced(len(x_train), config.calibration_samples)),
    )

    import mlflow

    with tracking.resume_run(settings, trained.run_id):
        for name, program in (("fp32", fp32), *candidates.items()):
            mlflow.log_artifact(str(out_dir / program.file), ARTIFACT_DIR)
            mlflow.set_tag(f"{name}_sha256", program.sha256)
            mlflow.log_metrics(
                {
                    f"{name}_size_bytes": program.size_bytes,
                    f"{name}_delegated_ops": program.delegated_ops,
                    f"{name}_non_delegated_ops": program.non_delegated_ops,
                    f"{name}_export_seconds": program.seconds,
                }
            )
        mlflow.log_params(
            {
                "export.quantizer": "XNNPACKQuantizer symmetric",
                "export.strategies": ",".join(candidates),
                "export.calibration_samples": result.calibration_samples,
                "export.qat_epochs": config.qat_epochs,
                "export.qat_samples": config.qat_samples,
                "export.qat_learning_rate": config.qat_learning_rate,
            }
        )
        mlflow.log_dict(result.model_dump(mode="json"), f"{ARTIFACT_DIR}/export.json")
    result.save(out_dir)
    return result
