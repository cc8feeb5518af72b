"""INT8 recipe details: batch norm folded before frozen-norm QAT, and how many frames PTQ observes."""

from __future__ import annotations

import torch
from torch import nn

from edgeops.models.nets import PostureNet
from edgeops.quantize.pt2e import depthwise_modules, norm_folded
from edgeops.settings import QuantizeConfig


def trained_looking(model: nn.Module) -> nn.Module:
    """Batch norms with statistics and affine terms far from their initial identity."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator))
            module.running_var.copy_(torch.rand(channels, generator=generator) * 3 + 0.1)
            module.weight.data.copy_(torch.randn(channels, generator=generator))
            module.bias.data.copy_(torch.randn(channels, generator=generator))
    return model.eval()


def test_folding_keeps_what_the_network_computes_and_leaves_no_batch_norm() -> None:
    model = trained_looking(PostureNet(classes=3, full_scale=4095.0, width_mult=0.25))
    model.fit(torch.rand(8, 1, 64, 32) * 4095)
    frames = torch.rand(4, 1, 64, 32) * 4095
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    folded = norm_folded(model)

    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert sum(isinstance(module, nn.BatchNorm2d) for module in model.modules()) > 0  # the original is a copy
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(folded(frames), model(frames), rtol=1e-4, atol=1e-4)
    # The depthwise layers keep their module names, so per-channel depthwise quantization still finds them.
    assert depthwise_modules(folded) == depthwise_modules(model)


def test_a_norm_that_follows_no_convolution_is_left_alone() -> None:
    model = trained_looking(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)))
    folded = norm_folded(model)
    assert [type(module) for module in folded] == [nn.ReLU, nn.BatchNorm2d, nn.Conv2d]


def test_ptq_observes_every_training_frame_unless_given_a_number() -> None:
    assert QuantizeConfig().calibration_count(12_736) == 12_736
    assert QuantizeConfig(calibration_samples=1000).calibration_count(12_736) == 1000
    assert QuantizeConfig(calibration_samples=1000).calibration_count(64) == 64
