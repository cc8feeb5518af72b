"""Lowering a network to an XNNPACK-delegated ExecuTorch program, and checking the program computes what it should."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel

from edgeops.errors import EdgeopsError
from edgeops.files import sha256_file
from edgeops.runtime import Program

# The FP32 program must reproduce eager PyTorch to within this fraction of the largest output.
FP32_LOWERING_TOLERANCE = 1e-3


class LoweredProgram(BaseModel):
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


class LoweringError(EdgeopsError):
    """A program lowered without error but does not compute what its graph computes."""


def dense(example: torch.Tensor) -> torch.Tensor:
    """`example` with row-major strides.

    Export takes the program's input layout from the example's strides, and numpy gives size-1
    axes arbitrary ones (0 after `np.newaxis`, 1 after fancy indexing). ExecuTorch then refuses
    the program or, worse, builds one that reads its input in another layout.
    """
    return example.clone(memory_format=torch.contiguous_format)


def lower(model: torch.nn.Module, example: torch.Tensor, path: Path, artifact_path: str) -> LoweredProgram:
    """Export `model` at `example`'s shape and lower it to an XNNPACK-delegated `.pte` at `path`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, (dense(example),))
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    delegation = get_delegation_info(edge.exported_program().graph_module)
    path.write_bytes(edge.to_executorch().buffer)
    return LoweredProgram(
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
    program = Program(path)
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
