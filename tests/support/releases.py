"""Real but tiny ExecuTorch programs and signed releases of them, for publisher and agent tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

import torch

from edgeops.datasets import signature_for
from edgeops.datasets.base import ModelSignature
from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import publish
from edgeops.ota.release import Release, model_target
from edgeops.settings import Dataset, Settings
from edgeops.stack.s3 import s3_client

INPUT_SHAPE = [1, 8, 4]
OUTPUT_SHAPE = [1, 2]


@dataclass(frozen=True)
class TinyModel:
    data: bytes
    reference_input: list[object]
    reference_output: list[object]
    signature: ModelSignature  # the track's: what a device of that track feeds it

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.data)


def lowered(model: torch.nn.Module, example: torch.Tensor, signature: ModelSignature) -> TinyModel:
    """`model` lowered to XNNPACK, with its output on `example` recorded for the smoke test."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(
        torch.export.export(model, (example,)), partitioner=[XnnpackPartitioner()]
    ).to_executorch()
    with torch.no_grad():
        output = model(example)
    return TinyModel(bytes(program.buffer), example.tolist(), output.tolist(), signature)


@cache
def tiny_model(seed: int, track: Dataset = Dataset.mat) -> TinyModel:
    """A linear classifier with `track`'s model signature (default settings), lowered to XNNPACK; distinct per seed."""
    signature = signature_for(track, Settings())
    torch.manual_seed(seed)
    inputs = int(torch.tensor(signature.input_shape).prod())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(inputs, len(signature.labels))).eval()
    example = torch.randn(*signature.input_shape)
    return lowered(model, example, signature)


def unique_model_name(prefix: str = "ota") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def draft(name: str, model: TinyModel, channel: str = "stable", **changes: object) -> Release:
    release = Release(
        model_name=name,
        channel=channel,
        model_target=model_target(model.sha256),
        model_key=f"{name}/{model_target(model.sha256)}",
        sha256=model.sha256,
        size=len(model.data),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        dataset=model.signature.dataset,
        labels=model.signature.labels,
        input={"shape": model.signature.input_shape, "dtype": "float32", "units": model.signature.input_units},
        output={"shape": model.signature.output_shape, "dtype": "float32"},
        reference_input=model.reference_input,
        reference_output=model.reference_output,
    )
    return release.model_copy(update=changes)


def release(settings: Settings, name: str, model: TinyModel, channel: str = "stable", **changes: object) -> Release:
    """Publish `model` as the next release of `name` with the test keys."""
    keyring = Keyring.load(settings.release)
    return publish(
        s3_client(settings),
        settings.ota_bucket,
        keyring,
        settings.release,
        draft(name, model, channel, **changes),
        model.data,
    )


@cache
def mat_model(kind: str = "baseline") -> TinyModel:
    """A mat model with chosen weights, so a simulated fleet sees both classes and faults are real programs.

    It says `occupied` when the first chamber's pressure, averaged over the window, is above a threshold (the
    real recordings sit near 98.2 kPa empty and 100 kPa occupied). `candidate` moves the threshold a little
    (a healthy new model); `collapse` always says `occupied`; `slow` also runs a dead branch of forty 512-wide
    layers, some hundred times the baseline's time.
    """
    signature = signature_for(Dataset.mat, Settings())
    frames, chambers = signature.input_shape[1], signature.input_shape[2]
    threshold = {"baseline": 99_000.0, "candidate": 98_900.0, "collapse": 0.0, "slow": 99_000.0}[kind]

    class ThresholdModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(frames * chambers, 2)
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.weight[1, 0::chambers] = 0.01 / frames
                self.head.bias.copy_(torch.tensor([0.0, -0.01 * threshold]))
            self.dead = torch.nn.Linear(512, 512) if kind == "slow" else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.flatten(1)
            logits = self.head(flat)
            if self.dead is not None:  # the same layer forty times: much work, few bytes
                wide = (flat / 1e5).repeat(1, 512 // (frames * chambers))
                for _ in range(40):
                    wide = torch.tanh(self.dead(wide))
                logits = logits + wide.sum(dim=1, keepdim=True) * 1e-9
            return logits

    model = ThresholdModel().eval()
    example = torch.full(signature.input_shape, 99_500.0) + torch.randn(*signature.input_shape) * 50
    return lowered(model, example, signature)
