"""INT8 by PT2E with XNNPACKQuantizer's symmetric config, one function per strategy.

- `ptq_per_tensor`: post-training, one scale per weight tensor, calibrated on training samples;
- `ptq_per_channel`: post-training, one scale per output channel;
- `qat`: quantization-aware fine-tuning of the trained weights (per-tensor weights unless
  `settings.quantize.qat_per_channel`).

With `settings.quantize.depthwise_per_channel`, the per-tensor strategies still give each depthwise
convolution one scale per channel: batch norm folded into a depthwise kernel spreads its channels'
ranges over orders of magnitude, and one scale for all of them rounds the small ones away (the
classic MobileNet INT8 failure). Depthwise layers hold few weights, so this costs ~3 % of the file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
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


def depthwise_modules(model: torch.nn.Module) -> list[str]:
    """Names of the modules holding each depthwise convolution with its batch norm and activation
    (the quantizer's patterns match conv-bn-relu inside one named module)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            owner, _, _ = name.rpartition(".")
            names.append(owner or name)
    return names


def quantizer_for(
    strategy: Strategy, qat_per_channel: bool = False, per_channel_modules: Iterable[str] = ()
) -> Quantizer:
    """XNNPACK's symmetric config; `per_channel_modules` get per-channel weights under a per-tensor strategy.

    Two quantizers split the graph by module, not `set_module_name`: its filter also demands a module for
    the weight nodes, which have none, so the named layers would be left in float.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer

    is_qat = strategy == Strategy.qat
    per_channel = strategy == Strategy.ptq_per_channel or (is_qat and qat_per_channel)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(per_channel, is_qat=is_qat))
    owners = set(per_channel_modules)
    if per_channel or not owners:
        return quantizer

    def in_owners(node: torch.fx.Node) -> bool | None:
        """Whether the node belongs to one of `owners`; None for nodes outside every module (weights)."""
        stack = node.meta.get("nn_module_stack")
        return any(path in owners for path, _ in stack.values()) if stack else None

    channelwise = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(True, is_qat=is_qat))
    channelwise.set_filter_function(lambda node: in_owners(node) is not False)
    quantizer.set_filter_function(lambda node: in_owners(node) is not True)
    return ComposableQuantizer([channelwise, quantizer])


def export_batched(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`model` exported with a dynamic batch, so calibration, fine-tuning and evaluation run in batches."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    pair = dense(example.expand(2, *example.shape[1:]))  # batch 1 would be specialised
    return torch.export.export(model, (pair,), dynamic_shapes=({0: batch},))


def capture(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    return export_batched(model, example).module()


def save_reference(quantized: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Keep the quantized graph (fake quantization in float) that a `.pte` is lowered from, so the benchmark
    can tell what quantization costs from what the integer kernels add."""
    torch.export.save(export_batched(quantized, example), path)


def load_reference(path: Path) -> torch.nn.Module:
    import torch.ao.quantization.fx._decomposed  # registers the quantized_decomposed ops the graph calls

    return torch.export.load(path).module()


def ptq(
    model: torch.nn.Module,
    strategy: Strategy,
    example: torch.Tensor,
    calibration: torch.Tensor,
    per_channel_modules: Iterable[str] = (),
) -> torch.nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = quantizer_for(strategy, per_channel_modules=per_channel_modules)
    prepared = prepare_pt2e(capture(model.eval(), example), quantizer)
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
    per_channel_modules: Iterable[str] = (),
) -> torch.fx.GraphModule:
    """Fine-tune with fake quantization from the trained weights; batch norm is folded first when the
    recipe freezes it, else torchao folds it in training mode."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    quantizer = quantizer_for(Strategy.qat, per_channel, per_channel_modules)
    if recipe.freeze_norm:
        model = norm_folded(model)
    prepared = prepare_qat_pt2e(capture(model.train(), example), quantizer)
    allow_exported_model_train_eval(prepared)
    with denormals_flushed():
        fit(prepared, *train, *val, recipe)
    move_exported_model_to_eval(prepared)
    return drop_unused_attributes(convert_pt2e(prepared))


def norm_folded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with every batch norm that follows a convolution folded into it.

    Under QAT with frozen batch norm, each norm is a fixed affine map, so folding it first changes
    nothing the network computes: fine-tuning then moves the very weights the program will hold, and
    torchao's own conv-bn folding, which traces a graph for each of dozens of pattern variants (most of the
    QAT candidate's convert time), finds nothing to do.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for sequence in [module for module in folded.modules() if isinstance(module, torch.nn.Sequential)]:
        for index in range(len(sequence) - 1):
            conv, norm = sequence[index], sequence[index + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                sequence[index] = fuse_conv_bn_eval(conv, norm)
                sequence[index + 1] = torch.nn.Identity()
    return folded


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
    """The training recipe, gentler: few epochs at a small learning rate."""
    return Recipe(
        epochs=config.qat_epochs,
        batch_size=base.batch_size,
        learning_rate=config.qat_learning_rate,
        weight_decay=base.weight_decay,
        label_smoothing=base.label_smoothing,
        augment=base.augment,
        augmentation=base.augmentation,
        seed=base.seed,
        one_cycle=config.qat_one_cycle,
        freeze_norm=config.qat_freeze_norm,
        keep_last_epoch=base.keep_last_epoch,
    )


def quantize(
    model: torch.nn.Module, strategy: Strategy, splits: Splits, recipe: Recipe, config: QuantizeConfig
) -> torch.fx.GraphModule:
    """The trained `model` quantized by `strategy`, calibrated (or fine-tuned) on the training split."""
    x_train, y_train = splits["train"]
    example = torch.from_numpy(x_train[:1])
    per_channel_modules = depthwise_modules(model) if config.depthwise_per_channel else []
    if strategy != Strategy.qat:
        calibration = torch.from_numpy(x_train[evenly_spaced(len(x_train), config.calibration_count(len(x_train)))])
        return ptq(model, strategy, example, calibration, per_channel_modules)
    picked = evenly_spaced(len(x_train), config.qat_samples)
    train = torch.from_numpy(x_train[picked]), torch.from_numpy(y_train[picked])
    x_val, y_val = splits["val"]
    kept = evenly_spaced(len(y_val), config.qat_samples // 4)  # judges the fine-tuned epoch; kept small
    val = torch.from_numpy(x_val[kept]), torch.from_numpy(y_val[kept])
    return qat(model, example, train, val, qat_recipe(recipe, config), config.qat_per_channel, per_channel_modules)
