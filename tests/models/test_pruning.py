"""Channel pruning of PostureNet: thinner inverted residuals that compute what the original did wherever the
removed channels were idle, rebuild from their widths, fine-tune, export, quantize and lower to XNNPACK."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeops.models.nets import PostureNet
from edgeops.models.pruning import (
    build_pruned,
    expanding_blocks,
    kept_count,
    parameter_count,
    prune_posture_net,
    pruned_channels,
)
from edgeops.models.training import Recipe, denormals_flushed, fit

CLASSES, FULL_SCALE, WIDTH = 3, 4095.0, 0.5
# torchvision's MobileNetV2 at width 0.5: 16 expanding blocks, then a 1280-channel head.
WIDTHS = [48, 96, 96, 96, 96, 96, 192, 192, 192, 192, 288, 288, 288, 480, 480, 480, 1280]


def frames(n: int, seed: int = 0) -> torch.Tensor:
    """Sparse pressure maps in raw counts: mostly low readings, a few loaded cells."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 64, 32, generator=generator) ** 3 * 1500


def trained_like(seed: int = 0) -> PostureNet:
    """A width-0.5 PostureNet whose batch norms look trained: scattered gammas and betas, running statistics
    from data, so an idle channel's constant output is not 0 and pruning has to account for it."""
    torch.manual_seed(seed)
    model = PostureNet(CLASSES, FULL_SCALE, WIDTH)
    x = frames(64, seed)
    model.fit(x)
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    with torch.no_grad(), denormals_flushed():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
            norm.momentum = None  # a cumulative average: one pass sets the statistics
        model.train()(x)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> PostureNet:
    return trained_like()


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eager outputs, with denormals flushed as in training: fresh MobileNetV2 weights make them, and slow."""
    with torch.no_grad(), denormals_flushed():
        return model(x)


def test_keeping_every_channel_computes_exactly_the_same(trained: PostureNet) -> None:
    pruned = prune_posture_net(trained, 1.0)
    assert pruned is not trained and isinstance(pruned, PostureNet) and not pruned.training
    assert pruned_channels(pruned) == pruned_channels(trained) == WIDTHS
    assert parameter_count(pruned) == parameter_count(trained)
    x = frames(8, seed=1)
    assert torch.equal(outputs(pruned, x), outputs(trained, x))


@pytest.mark.parametrize("keep", [0.75, 0.5, 0.01])
def test_hidden_and_head_widths_shrink_in_multiples_of_8_and_block_outputs_stay(
    trained: PostureNet, keep: float
) -> None:
    before = copy.deepcopy(trained.state_dict())
    pruned = prune_posture_net(trained, keep)
    widths = pruned_channels(pruned)
    for width, original in zip(widths, WIDTHS, strict=True):
        assert width % 8 == 0 and 8 <= width < original
        assert abs(width - keep * original) <= 4 or width == 8
    assert [block.out_channels for block in pruned.network.features[1:-1]] == [
        block.out_channels for block in trained.network.features[1:-1]
    ]
    assert pruned.network.classifier[-1].in_features == widths[-1] == pruned.network.last_channel
    assert parameter_count(pruned) < parameter_count(trained)
    assert outputs(pruned, frames(2)).shape == (2, CLASSES)
    assert all(torch.equal(value, before[name]) for name, value in trained.state_dict().items())  # left as it was
    assert torch.equal(pruned.mean, trained.mean) and torch.equal(pruned.std, trained.std)
    assert pruned.full_scale == trained.full_scale


def test_the_head_is_left_whole_on_request(trained: PostureNet) -> None:
    widths = pruned_channels(prune_posture_net(trained, 0.5, prune_head=False))
    assert widths[-1] == 1280 and widths[:-1] == [kept_count(width, 0.5) for width in WIDTHS[:-1]]


def test_the_channels_with_the_largest_gamma_are_kept(trained: PostureNet) -> None:
    pruned = prune_posture_net(trained, 0.5)
    for original, block in zip(expanding_blocks(trained), expanding_blocks(pruned), strict=True):
        gammas = original.conv[0][1].weight.detach()
        kept = block.conv[0][1].weight.detach()
        assert torch.equal(kept.sort().values, gammas.sort().values[-len(kept) :])
        # The same channels throughout the block: the depthwise kernels and projection columns go with them.
        chosen = torch.isin(gammas, kept).nonzero().flatten()
        assert torch.equal(block.conv[1][0].weight, original.conv[1][0].weight[chosen])
        assert torch.equal(block.conv[2].weight, original.conv[2].weight[:, chosen])


def test_removing_idle_channels_leaves_the_output_unchanged(trained: PostureNet) -> None:
    """Hidden channels with gamma and beta 0 still feed the projection a constant (the depthwise batch norm of 0);
    head channels with gamma 0 feed the classifier their beta. Pruning folds both in."""
    model = copy.deepcopy(trained)
    generator = torch.Generator().manual_seed(2)
    head_norm = model.network.features[-1][1]
    with torch.no_grad():
        for norm in [*(block.conv[0][1] for block in expanding_blocks(model)), head_norm]:
            channels = norm.num_features
            idle = torch.randperm(channels, generator=generator)[: channels - kept_count(channels, 0.5)]
            norm.weight[idle] = 0.0
            if norm is not head_norm:
                norm.bias[idle] = 0.0
    x = frames(16, seed=3)
    expected = outputs(model, x)
    pruned = prune_posture_net(model, 0.5)
    assert pruned_channels(pruned) == [kept_count(width, 0.5) for width in WIDTHS]
    torch.testing.assert_close(outputs(pruned, x), expected, atol=1e-5, rtol=1e-5)

    # Without the fold the removed channels' constant is lost: the check above is not vacuous.
    unfolded = copy.deepcopy(pruned)
    with torch.no_grad():
        for block, original in zip(expanding_blocks(unfolded), expanding_blocks(model), strict=True):
            block.conv[3].running_mean.copy_(original.conv[3].running_mean)
        unfolded.network.classifier[-1].bias.copy_(model.network.classifier[-1].bias)
    assert (outputs(unfolded, x) - expected).abs().max() > 1e-2


def test_a_pruned_network_rebuilds_from_its_stored_widths(trained: PostureNet) -> None:
    pruned = prune_posture_net(trained, 0.75)
    stored = json.loads(json.dumps(pruned_channels(pruned)))  # as a loader reads it back beside the weights
    rebuilt = build_pruned(PostureNet(CLASSES, FULL_SCALE, WIDTH), stored)
    assert pruned_channels(rebuilt) == stored
    rebuilt.load_state_dict(pruned.state_dict())  # strict: every shape and name matches
    x = frames(4, seed=4)
    assert torch.equal(outputs(rebuilt.eval(), x), outputs(pruned, x))


def test_wrong_fractions_and_widths_are_refused(trained: PostureNet) -> None:
    for keep in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="keep is the fraction"):
            prune_posture_net(trained, keep)
    for channels in (WIDTHS[:-1], [*WIDTHS[:-1], 1288], [0, *WIDTHS[1:]]):
        with pytest.raises(ValueError, match="do not fit"):
            build_pruned(trained, channels)


def test_a_pruned_network_exports_and_fine_tunes(trained: PostureNet) -> None:
    pruned = prune_posture_net(trained, 0.5)
    batch = torch.export.Dim("batch", min=1, max=64)
    x = frames(4, seed=5)
    exported = torch.export.export(pruned, (x,), dynamic_shapes=({0: batch},)).module()
    torch.testing.assert_close(outputs(exported, x), outputs(pruned, x))

    y = torch.tensor([0, 1, 2, 1])
    before = copy.deepcopy(pruned.state_dict())
    with denormals_flushed():
        fit(pruned, x, y, x, y, Recipe(epochs=1, batch_size=4, learning_rate=1e-3, seed=0))
    assert not torch.equal(
        pruned.state_dict()["network.features.2.conv.0.0.weight"], before["network.features.2.conv.0.0.weight"]
    )


@pytest.mark.slow  # PT2E calibration and XNNPACK lowering of a whole MobileNetV2: most of a minute
def test_a_pruned_network_quantizes_to_int8_and_lowers_entirely_to_xnnpack(trained: PostureNet, tmp_path: Path) -> None:
    from edgeops.quantize.lowering import lower
    from edgeops.quantize.pt2e import quantize
    from edgeops.runtime import Program
    from edgeops.settings import QuantizeConfig, Strategy

    pruned = prune_posture_net(trained, 0.5)
    x = frames(32, seed=6).numpy()
    y = np.arange(32) % CLASSES
    splits = {"train": (x, y), "val": (x[:8], y[:8])}
    recipe = Recipe(epochs=1, batch_size=8, learning_rate=1e-3, seed=0)  # PTQ does not train
    quantized = quantize(pruned, Strategy.ptq_per_tensor, splits, recipe, QuantizeConfig(calibration_samples=32))
    example = torch.from_numpy(x[:1])
    program = lower(quantized, example, tmp_path / "pruned_int8.pte", "executorch/pruned_int8.pte")
    # The one node outside the delegate is its output `getitem`, as for the unpruned FP32 and INT8 programs.
    assert program.non_delegated_ops == 1 and program.delegated_ops > 300

    # Shapes as a device checks them, and finite output. Not closeness to the q/dq graph: with random weights
    # per-tensor INT8 is far off even for the unpruned network; accuracy is the verify stage's gate.
    loaded = Program(tmp_path / "pruned_int8.pte")
    for sample in torch.from_numpy(x[:4]):
        loaded.check([1, 1, 64, 32], [1, CLASSES], sample[None].contiguous())
