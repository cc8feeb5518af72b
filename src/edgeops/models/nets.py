"""The two networks, mat occupancy and in-bed posture. Each takes raw sensor values and carries its normalisation."""

from __future__ import annotations

import torch
from torch import nn

from edgeops.datasets.base import ModelSignature
from edgeops.settings import Architecture


class ModelSpec(ModelSignature):
    """What it takes to rebuild the network, beside its signature (the track it was trained on and what it
    takes and returns), which a device checks."""

    architecture: Architecture
    input_layout: str
    hidden: int = 32  # mat-mlp
    width_mult: float = 1.0  # mobilenet_v2
    full_scale: float = 4095.0  # mobilenet_v2: sensor maximum


class PressureFeatures(nn.Module):
    """Chamber-vs-chamber and within-window differences, standardised with training-split statistics.

    Weather and altitude move all four chambers together by ~1 kPa, as much as a
    person does; differences cancel that common offset, so the model cannot learn
    the day's absolute pressure. The statistics are buffers, exported with the model.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(2 * channels))
        self.register_buffer("std", torch.ones(2 * channels))

    @staticmethod
    def differences(pressure: torch.Tensor) -> torch.Tensor:
        across_chambers = pressure - pressure.mean(dim=2, keepdim=True)
        over_time = pressure - pressure.mean(dim=1, keepdim=True)
        return torch.cat([across_chambers, over_time], dim=2)

    def fit(self, pressure: torch.Tensor, min_std_pa: float = 1.0) -> None:
        features = self.differences(pressure).reshape(-1, self.mean.numel())
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(features.std(dim=0).clamp_min(min_std_pa))

    def forward(self, pressure: torch.Tensor) -> torch.Tensor:
        return (self.differences(pressure) - self.mean) / self.std


class MatOccupancyNet(nn.Module):
    """[batch, window, channels] Pa -> [batch, classes] logits."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        _, window, channels = spec.input_shape
        self.features = PressureFeatures(channels)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(window * 2 * channels, spec.hidden),
            nn.ReLU(),
            nn.Linear(spec.hidden, spec.hidden),
            nn.ReLU(),
            nn.Linear(spec.hidden, len(spec.labels)),
        )

    def fit(self, pressure: torch.Tensor) -> None:
        self.features.fit(pressure)

    def forward(self, pressure: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pressure))


class PostureNet(nn.Module):
    """torchvision's MobileNetV2 for one-channel 64x32 pressure maps: [batch, 1, 64, 32] raw sensor values -> logits.

    Only the stem (one input channel) and the classifier (our classes) change. Scaling by the
    sensor's full scale and standardising with training-split statistics happen inside, so a
    device feeds raw readings.
    """

    def __init__(self, classes: int, full_scale: float, width_mult: float = 1.0) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        # A constant, not a buffer: exported as a fixed clamp bound, XNNPACK runs the clamp inside
        # its delegate (a buffer bound becomes a graph input, and the clamp falls out of the delegate).
        self.full_scale = float(full_scale)
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))
        network = mobilenet_v2(num_classes=classes, width_mult=width_mult)
        stem = network.features[0][0]
        network.features[0][0] = nn.Conv2d(
            1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
        )
        self.network = network

    def scaled(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.clamp(0.0, self.full_scale) / self.full_scale

    def fit(self, frames: torch.Tensor) -> None:
        """Standardisation from the training split, kept as buffers so it is exported with the weights."""
        scaled = self.scaled(frames)
        self.mean.copy_(scaled.mean())
        self.std.copy_(scaled.std().clamp_min(1e-6))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.network((self.scaled(frames) - self.mean) / self.std)


def build_model(spec: ModelSpec) -> MatOccupancyNet | PostureNet:
    """A fresh network for `spec`; call `fit` on training inputs before training."""
    if spec.architecture == Architecture.mobilenet_v2:
        return PostureNet(len(spec.labels), spec.full_scale, spec.width_mult)
    return MatOccupancyNet(spec)
