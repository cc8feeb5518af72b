"""Structured channel pruning of PostureNet: a smaller, faster network for the export stage to quantize.

MobileNetV2 spends its multiply-adds inside the inverted residuals: a 1x1 expansion to `hidden` channels, a 3x3
depthwise convolution over them and a 1x1 projection back. Pruning removes the same hidden channels from all three
(and their batch norms); block outputs, the residual stream, keep their width, so skip connections are untouched.
It can also thin the final 1x1 "head" convolution, which holds almost a third of the parameters at width 0.5, with
the classifier's matching inputs. The result is an ordinary `PostureNet` with thinner layers, so export, PT2E
quantization and XNNPACK lowering take it as they take the original.

A pruned network's shape is `pruned_channels(model)`: store it beside the weights and rebuild the architecture with
`build_pruned(build_model(spec), channels)` before `load_state_dict`.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgeops.models.nets import PostureNet

if TYPE_CHECKING:
    from torchvision.models.mobilenetv2 import InvertedResidual

# Kept widths are multiples of this: XNNPACK's convolution kernels work on channel tiles of 8 (or 16), so a width
# that is not a multiple pays for the padded tile anyway. torchvision rounds MobileNetV2's widths to 8 likewise.
CHANNEL_MULTIPLE = 8


def parameter_count(model: nn.Module) -> int:
    """Weights and biases, not buffers: what the train stage records as a network's size."""
    return sum(parameter.numel() for parameter in model.parameters())


def expanding_blocks(model: PostureNet) -> list[InvertedResidual]:
    """The inverted residuals with an expansion layer (all but the first), in forward order."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    return [block for block in model.network.features if isinstance(block, InvertedResidual) and len(block.conv) == 4]


def pruned_channels(model: PostureNet) -> list[int]:
    """The widths that differ between pruned networks: each expanding block's hidden channels, in forward order,
    then the head's output channels (the last entry). Plain ints, to store beside the weights."""
    hidden = [int(block.conv[0][0].out_channels) for block in expanding_blocks(model)]
    return [*hidden, int(model.network.features[-1][0].out_channels)]


def kept_count(channels: int, keep: float, multiple: int = CHANNEL_MULTIPLE) -> int:
    """How many of `channels` pruning keeps: the `keep` fraction rounded to a multiple of `multiple`, at least one
    multiple, never more than there are."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep is the fraction of channels kept, in (0, 1]; got {keep}")
    return min(channels, max(multiple, multiple * math.floor(channels * keep / multiple + 0.5)))


def channel_importance(norm: nn.BatchNorm2d) -> torch.Tensor:
    """|gamma| of the batch norm after a convolution, per channel.

    Why gamma and not the L1 norm of the convolution's weights: batch norm divides the convolution's scale back
    out, so weight norms say nothing about what a channel passes on, while |gamma| is the amplitude of its
    normalised signal. A channel with gamma near 0 emits a near-constant (its beta), which pruning folds into the
    following batch norm or bias; network slimming (an L1 penalty on gamma in training) drives unneeded channels
    there. The depthwise batch norm further on rescales each channel again, so among live channels the ranking is
    a heuristic that fine-tuning after pruning corrects.
    """
    return norm.weight.detach().abs()


def prune_posture_net(
    model: PostureNet, keep: float, *, prune_head: bool = True, multiple: int = CHANNEL_MULTIPLE
) -> PostureNet:
    """A new PostureNet keeping the most important `keep` fraction of every expanding block's hidden channels
    (and of the head's channels, with `prune_head`), ranked by `channel_importance`; `model` is left as it is.

    What a removed channel contributed when idle, its constant output, is folded into the projection's batch norm
    (the classifier's bias for the head), so removing a channel whose gamma is 0 changes nothing (beside the
    zero-padded border when its beta is not 0 either). Fine-tune the result: removed live channels are lost.
    """
    norms = [block.conv[0][1] for block in expanding_blocks(model)]
    counts = [kept_count(norm.num_features, keep, multiple) for norm in norms]
    head_norm = model.network.features[-1][1]
    counts.append(kept_count(head_norm.num_features, keep, multiple) if prune_head else head_norm.num_features)
    kept = [
        torch.argsort(channel_importance(norm), descending=True, stable=True)[:count].sort().values
        for norm, count in zip([*norms, head_norm], counts, strict=True)
    ]
    return _sliced(model, kept, fold_removed=True)


def build_pruned(base: PostureNet, channels: list[int]) -> PostureNet:
    """A network of `base`'s kind with the widths `pruned_channels` gave, to `load_state_dict` a pruned network's
    weights into (it holds the first channels of `base`'s weights until then)."""
    widths = pruned_channels(base)
    if len(channels) != len(widths) or not all(0 < n <= width for n, width in zip(channels, widths, strict=True)):
        raise ValueError(f"channels {channels} do not fit a network of widths {widths}")
    return _sliced(base, [torch.arange(n) for n in channels], fold_removed=False)


def _sliced(model: PostureNet, kept: list[torch.Tensor], fold_removed: bool) -> PostureNet:
    """A copy of `model` keeping channels `kept[i]` of each expanding block's hidden layer, then of the head."""
    pruned = copy.deepcopy(model)
    *hidden, head = kept
    with torch.no_grad():
        for block, channels in zip(expanding_blocks(pruned), hidden, strict=True):
            _slice_block(block, channels, fold_removed)
        _slice_head(pruned, head, fold_removed)
    pruned.train(model.training)  # the new layers start in training mode
    return pruned


def _removed(channels: int, kept: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(channels, dtype=torch.bool)
    mask[kept] = False
    return mask.nonzero().flatten()


def _slice_block(block: InvertedResidual, kept: torch.Tensor, fold_removed: bool) -> None:
    expand, depthwise, project, project_norm = block.conv
    if fold_removed:
        removed = _removed(project.in_channels, kept)
        # An idle hidden channel: the expansion's batch norm gives its beta, the depthwise convolution sums its
        # kernel over that constant (exact away from the zero-padded border), then batch norm and activation.
        idle = expand[2](expand[1].bias[removed])
        idle = idle * depthwise[0].weight[removed].sum(dim=(1, 2, 3))
        idle = depthwise[2](_eval_norm(depthwise[1], removed, idle))
        # The projection adds weight @ idle everywhere and its batch norm subtracts its running mean: without
        # the channels the sum lacks that part, so the running mean, lowered by it, stays in step.
        project_norm.running_mean -= project.weight[:, removed].flatten(1) @ idle
    for stage in (expand, depthwise):
        stage[0] = _slice_conv(stage[0], out=kept)
        stage[1] = _slice_norm(stage[1], kept)
        stage.out_channels = len(kept)
    block.conv[2] = _slice_conv(project, into=kept)


def _slice_head(model: PostureNet, kept: torch.Tensor, fold_removed: bool) -> None:
    network = model.network
    head, classifier = network.features[-1], network.classifier[-1]
    if fold_removed:
        removed = _removed(head[0].out_channels, kept)
        # With gamma 0 a head channel is its beta after activation everywhere; average pooling keeps that constant.
        classifier.bias += classifier.weight[:, removed] @ head[2](head[1].bias[removed])
    head[0] = _slice_conv(head[0], out=kept)
    head[1] = _slice_norm(head[1], kept)
    head.out_channels = len(kept)
    weight = classifier.weight
    linear = nn.Linear(len(kept), classifier.out_features, device=weight.device, dtype=weight.dtype)
    linear.weight.copy_(classifier.weight[:, kept])
    linear.bias.copy_(classifier.bias)
    network.classifier[-1] = linear
    network.last_channel = len(kept)


def _eval_norm(norm: nn.BatchNorm2d, channels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What `norm` makes of the per-channel values `x` in eval mode, for `channels` only."""
    scale = norm.weight[channels] / torch.sqrt(norm.running_var[channels] + norm.eps)
    return (x - norm.running_mean[channels]) * scale + norm.bias[channels]


def _slice_conv(conv: nn.Conv2d, out: torch.Tensor | None = None, into: torch.Tensor | None = None) -> nn.Conv2d:
    """`conv` keeping output channels `out` and input channels `into` (None: all); a depthwise convolution keeps
    one group per kept channel."""
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and not (depthwise and into is None):
        raise ValueError(f"only plain and depthwise convolutions are sliced here, not {conv}")
    weight = conv.weight if out is None else conv.weight[out]
    weight = weight if into is None else weight[:, into]
    out_channels = weight.shape[0]
    sliced = nn.Conv2d(
        out_channels if depthwise else weight.shape[1],
        out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=out_channels if depthwise else 1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    sliced.weight.copy_(weight)
    if conv.bias is not None:
        sliced.bias.copy_(conv.bias if out is None else conv.bias[out])
    return sliced


def _slice_norm(norm: nn.BatchNorm2d, kept: torch.Tensor) -> nn.BatchNorm2d:
    like = norm.running_mean
    sliced = nn.BatchNorm2d(
        len(kept), norm.eps, norm.momentum, norm.affine, norm.track_running_stats, device=like.device, dtype=like.dtype
    )
    sliced.load_state_dict(
        {name: value[kept] if value.ndim == 1 else value.clone() for name, value in norm.state_dict().items()}
    )
    return sliced
