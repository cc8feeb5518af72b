"""Lowering to ExecuTorch, on a tiny convolutional model: fast, and no stack needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeops.quantize.lowering import FP32_LOWERING_TOLERANCE, LoweringError, check_lowering, lower

ROWS, COLS = 8, 4


def tiny_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * ROWS * COLS, 3),
    ).eval()


def one_channel_frames() -> dict[str, torch.Tensor]:
    """Frames as the PMD adapter holds them: a channel axis numpy gives stride 0, or 1 after indexing."""
    frames = np.random.default_rng(0).uniform(0, 4095, (10, ROWS, COLS)).astype(np.float32)[:, np.newaxis]
    return {"newaxis": torch.from_numpy(frames), "indexed": torch.from_numpy(frames[np.array([1, 3, 5, 7, 9])])}


@pytest.mark.parametrize("layout", ["newaxis", "indexed"])
def test_a_size_one_axis_stride_does_not_change_the_program(layout: str, tmp_path: Path) -> None:
    frames = one_channel_frames()[layout]
    assert 0 in frames.stride() or 1 in frames.stride()[:2]  # the strides that broke LOSO's programs
    model = tiny_net(0)
    program = lower(model, frames[:1], tmp_path / "model.pte", "executorch/model.pte")
    row_major = torch.tensor(frames[:1].tolist())  # a fresh tensor: ordinary strides on every axis
    assert row_major.stride() == (ROWS * COLS, ROWS * COLS, COLS, 1)
    assert program.sha256 == lower(model, row_major, tmp_path / "dense.pte", "executorch/dense.pte").sha256
    check_lowering(tmp_path / "model.pte", model, frames, FP32_LOWERING_TOLERANCE)  # raises on a wrong program


def test_a_program_that_computes_something_else_stops_export(tmp_path: Path) -> None:
    frames = one_channel_frames()["newaxis"]
    lower(tiny_net(0), frames[:1], tmp_path / "model.pte", "executorch/model.pte")
    with pytest.raises(LoweringError, match=r"model\.pte: the lowered program deviates from the model by"):
        check_lowering(tmp_path / "model.pte", tiny_net(1), frames, FP32_LOWERING_TOLERANCE)
