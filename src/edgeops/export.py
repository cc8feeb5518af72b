"""Export: the FP32 ExecuTorch program and one INT8 candidate per quantization strategy, lowered to XNNPACK.

Strategies (settings.quantize.strategies), all PT2E with XNNPACKQuantizer's symmetric config:
- `ptq_per_tensor`: post-training, one scale per weight tensor, calibrated on training samples;
- `ptq_per_channel`: post-training, one scale per output channel;
- `qat`: quantization-aware fine-tuning of the trained weights (per-tensor weights unless
  `settings.quantize.qat_per_channel`).
Verify later promotes the smallest, fastest candidate that passes the gates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import BaseModel

from edgeops import tracking
from edgeops.errors import EdgeopsError
from edgeops.ingest import Splits, load_splits
from edgeops.model import ModelSpec
from edgeops.records import StageRecord
from edgeops.runtime import Program as LoadedProgram
from edgeops.settings import QuantizeConfig, Settings, Strategy
from edgeops.storage import sha256_file
from edgeops.train import Recipe, denormals_flushed, fit, load_model, recipe_for

if TYPE_CHECKING:
    from torchao.quantization.pt2e.quantizer import Quantizer

INFO_FILE = "export.json"
ARTIFACT_DIR = "executorch"
CALIBRATION_BATCH = 64
LOWERING_CHECK_SAMPLES = 16
# The FP32 program must reproduce eager PyTorch to within this fraction of the largest output.
FP32_LOWERING_TOLERANCE = 1e-3
STRATEGY_DESCRIPTIONS: dict[Strategy, str] = {
    "ptq_per_tensor": "PTQ, per-tensor weights, symmetric int8",
    "ptq_per_channel": "PTQ, per-channel weights, symmetric int8",
    "qat": "QAT (PT2E fake quantization), symmetric int8",
}


class Program(BaseModel):
    """One `.pte` file and what lowering did to it."""

    file: str
    sha256: str
    size_bytes: int
    delegated_ops: int
    non_delegated_ops: int
    artifact_path: str  # inside the MLflow run
    seconds: float = 0.0  # quantize (and fine-tune) plus lower

    @property
    def delegated_fraction(self) -> float:
        return self.delegated_ops / max(1, self.delegated_ops + self.non_delegated_ops)


class Candidate(Program):
    """An INT8 program built by one strategy."""

    strategy: Strategy
    description: str


class ExportedModels(StageRecord):
    record_file = INFO_FILE
    spec: ModelSpec
    dataset_version: str
    run_id: str
    parameters: int
    fp32: Program
    candidates: dict[str, Candidate]  # strategy -> INT8 program
    calibration_samples: int


class LoweringError(EdgeopsError):
    """A program lowered without error but does not compute what its graph computes."""


def dense(example: torch.Tensor) -> torch.Tensor:
    """`example` with row-major strides.

    Export takes the program's input layout from the example's strides, and numpy gives size-1
    axes arbitrary ones (0 after `np.newaxis`, 1 after fancy indexing). ExecuTorch then refuses
    the program or, worse, builds one that reads its input in another layout.
    """
    return example.clone(memory_format=torch.contiguous_format)


def lower(model: torch.nn.Module, example: torch.Tensor, path: Path, artifact_path: str) -> Program:
    """Export `model` at `example`'s shape and lower it to an XNNPACK-delegated `.pte` at `path`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, (dense(example),))
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    delegation = get_delegation_info(edge.exported_program().graph_module)
    path.write_bytes(edge.to_executorch().buffer)
    return Program(
        file=path.name,
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        delegated_ops=delegation.num_delegated_nodes,
        non_delegated_ops=delegation.num_non_delegated_nodes,
        artifact_path=artifact_path,
    )


def check_lowering(path: Path, reference: torch.nn.Module, samples: torch.Tensor, tolerance: float) -> float:
    """The program's largest deviation from `reference` on `samples`, relative to the largest output.

    Raises when it exceeds `tolerance`: a wrong program must stop export, not surface later as
    a mysteriously bad benchmark.
    """
    program = LoadedProgram(path)
    with torch.no_grad():
        expected = torch.cat([reference(sample[None]) for sample in samples])
    actual = torch.cat([program(dense(sample[None])) for sample in samples])
    deviation = float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
    if deviation > tolerance:
        raise LoweringError(
            f"{path.name}: the lowered program deviates from the model by {deviation:.2%} of its largest "
            f"output on {len(samples)} training samples (tolerance {tolerance:.2%}); it would not compute "
            "what was trained"
        )
    return deviation


def quantizer_for(strategy: Strategy, qat_per_channel: bool = False) -> Quantizer:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(
        get_symmetric_quantization_config(
            is_per_channel=strategy == "ptq_per_channel" or (strategy == "qat" and qat_per_channel),
            is_qat=strategy == "qat",
        )
    )
    return quantizer


def capture(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """The model as a graph with a dynamic batch, so calibration and fine-tuning run in batches."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    pair = dense(example.expand(2, *example.shape[1:]))  # batch 1 would be specialised
    return torch.export.export(model, (pair,), dynamic_shapes=({0: batch},)).module()


def ptq(
    model: torch.nn.Module, strategy: Strategy, example: torch.Tensor, calibration: torch.Tensor
) -> torch.nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(capture(model.eval(), example), quantizer_for(strategy))
    with torch.no_grad():
        for start in range(0, len(calibration), CALIBRATION_BATCH):
            prepared(calibration[start : start + CALIBRATION_BATCH])
    return drop_unused_attributes(convert_pt2e(prepared))


def qat(
    model: torch.nn.Module,
    example: torch.Tensor,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    recipe: Recipe,
    per_channel: bool = False,
) -> torch.fx.GraphModule:
    """Fine-tune with fake quantization from the trained weights (batch norm folded in training mode)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    prepared = prepare_qat_pt2e(capture(model.train(), example), quantizer_for("qat", per_channel))
    allow_exported_model_train_eval(prepared)
    with denormals_flushed():
        fit(prepared, *train, *val, recipe)
    move_exported_model_to_eval(prepared)
    return drop_unused_attributes(convert_pt2e(prepared))


def drop_unused_attributes(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Delete parameters and buffers the graph no longer reads.

    QAT's convert folds batch norm into the convolutions but leaves the batch-norm tensors on the
    module; export would lift them as program inputs and the `.pte` would carry ~8 % dead weight.
    """
    graph.graph.eliminate_dead_code()
    read = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in read:
            owner, _, attribute = name.rpartition(".")
            delattr(graph.get_submodule(owner), attribute)
    graph.delete_all_unused_submodules()
    graph.recompile()
    return graph


def evenly_spaced(samples: int, count: int) -> np.ndarray:
    """Indices of `count` samples spread over all `samples` (subjects and postures are stored in runs)."""
    return np.unique(np.linspace(0, samples - 1, min(samples, count)).round().astype(np.int64))


def qat_recipe(base: Recipe, config: QuantizeConfig) -> Recipe:
    """The training recipe, gentler: few epochs at a small constant learning rate."""
    return Recipe(
        epochs=config.qat_epochs,
        batch_size=base.batch_size,
        learning_rate=config.qat_learning_rate,
        weight_decay=base.weight_decay,
        label_smoothing=base.label_smoothing,
        augment=base.augment,
        seed=base.seed,
        freeze_norm=config.qat_freeze_norm,
    )


def quantize(
    model: torch.nn.Module, strategy: Strategy, splits: Splits, recipe: Recipe, config: QuantizeConfig
) -> torch.fx.GraphModule:
    """The trained `model` quantized by `strategy`, calibrated (or fine-tuned) on the training split."""
    x_train, y_train = splits["train"]
    calibration = torch.from_numpy(x_train[evenly_spaced(len(x_train), config.calibration_samples)])
    example = calibration[:1]
    if strategy != "qat":
        return ptq(model, strategy, example, calibration)
    picked = evenly_spaced(len(x_train), config.qat_samples)
    train = torch.from_numpy(x_train[picked]), torch.from_numpy(y_train[picked])
    x_val, y_val = splits["val"]
    kept = evenly_spaced(len(y_val), config.qat_samples // 4)  # judges the fine-tuned epoch; kept small
    val = torch.from_numpy(x_val[kept]), torch.from_numpy(y_val[kept])
    return qat(model, example, train, val, qat_recipe(recipe, config), config.qat_per_channel)


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

    recipe = recipe_for(trained.spec.architecture, settings, trained.spec.labels)
    candidates: dict[str, Candidate] = {}
    for strategy in dict.fromkeys(config.strategies):
        started = time.perf_counter()
        # QAT changes weights in place; every strategy starts from the trained ones.
        quantized = quantize(load_model(model_dir)[1], strategy, splits, recipe, config)
        name = f"model_int8_{strategy}.pte"
        program = lower(quantized, example, out_dir / name, f"{ARTIFACT_DIR}/{name}")
        program.seconds = time.perf_counter() - started
        description = STRATEGY_DESCRIPTIONS[strategy]
        if strategy == "qat":
            description += f", {'per-channel' if config.qat_per_channel else 'per-tensor'} weights"
        candidates[strategy] = Candidate(**program.model_dump(), strategy=strategy, description=description)
        print(f"{strategy}: {program.size_bytes:,} bytes in {program.seconds:.1f} s")

    result = ExportedModels(
        spec=trained.spec,
        dataset_version=trained.dataset_version,
        run_id=trained.run_id,
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
