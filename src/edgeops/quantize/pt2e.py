"""INT8 by PT2E with XNNPACKQuantizer's symmetric config, one function per strategy.

- `ptq_per_tensor`: post-training, one scale per weight tensor, calibrated on training samples;
- `ptq_per_channel`: post-training, one scale per output channel;
- `qat`: quantization-aware fine-tuning of the trained weights (per-tensor weights unless
  `settings.quantize.qat_per_channel`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from edgeops.datasets.base import Splits
from edgeops.models.training import Recipe, denormals_flushed, fit
from edgeops.quantize.lowering import dense
from edgeops.settings import QuantizeConfig, Strategy

if TYPE_CHECKING:
    from torchao.quantization.pt2e.quantizer import Quantizer

CALIBRATION_BATCH = 64
STRATEGY_DESCRIPTIONS: dict[Strategy, str] = {
    Strategy.ptq_per_tensor: "PTQ, per-tensor weights, symmetric int8",
    Strategy.ptq_per_channel: "PTQ, per-channel weights, symmetric int8",
    Strategy.qat: "QAT (PT2E fake quantization), symmetric int8",
}


def quantizer_for(strategy: Strategy, qat_per_channel: bool = False) -> Quantizer:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(
        get_symmetric_quantization_config(
            is_per_channel=strategy == Strategy.ptq_per_channel or (strategy == Strategy.qat and qat_per_channel),
            is_qat=strategy == Strategy.qat,
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

    prepared = prepare_qat_pt2e(capture(model.train(), example), quantizer_for(Strategy.qat, per_channel))
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
    if strategy != Strategy.qat:
        return ptq(model, strategy, example, calibration)
    picked = evenly_spaced(len(x_train), config.qat_samples)
    train = torch.from_numpy(x_train[picked]), torch.from_numpy(y_train[picked])
    x_val, y_val = splits["val"]
    kept = evenly_spaced(len(y_val), config.qat_samples // 4)  # judges the fine-tuned epoch; kept small
    val = torch.from_numpy(x_val[kept]), torch.from_numpy(y_val[kept])
    return qat(model, example, train, val, qat_recipe(recipe, config), config.qat_per_channel)
