"""Loading and running `.pte` programs with the ExecuTorch runtime, as a device does."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from edgeops.errors import VerificationError

# ExecuTorch's Python extension is not safe to use from several threads at once: two threads loading programs
# at the same time hung inside `load_method` (simulated devices smoke-testing in parallel), and an agent runs its
# model in one thread while smoke-testing a candidate in another. Every call into it holds this lock.
_RUNTIME_LOCK = threading.RLock()


def load_program(path: Path) -> Any:
    """The program at `path`, through ExecuTorch's runtime extension alone.

    `executorch.runtime` wraps the same extension but imports the exporter (`executorch.exir`) on the
    way, which is most of a process's start-up: several seconds natively, tens of seconds under qemu.
    The extension needs libtorch loaded first, hence `torch` above. Verification as `executorch.runtime`
    does it: the program's internal offsets are checked before anything runs.
    """
    with _RUNTIME_LOCK:
        from executorch.extension.pybindings import _portable_lib as extension

        return extension._load_program(str(path), program_verification=extension.Verification.InternalConsistency)


class Program:
    """A loaded `forward` method, with how long loading took."""

    def __init__(self, path: Path) -> None:
        started = time.perf_counter()
        with _RUNTIME_LOCK:
            self.method: Any = load_program(path).load_method("forward")
        self.load_ms = (time.perf_counter() - started) * 1000
        self.last_ms = 0.0
        self.path = path

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with _RUNTIME_LOCK:
            started = time.perf_counter()
            output = self.method([x])[0]
            self.last_ms = (time.perf_counter() - started) * 1000  # the run alone, not the wait for the lock
            return output

    def signature(self) -> tuple[list[int], list[int]]:
        meta = self.method.method_meta()
        return list(meta.input_tensor_meta(0).sizes()), list(meta.output_tensor_meta(0).sizes())

    def check(self, input_shape: list[int], output_shape: list[int], sample: torch.Tensor) -> None:
        """Raise unless the program has the expected shapes and gives finite output on a real input."""
        actual_in, actual_out = self.signature()
        if actual_in != input_shape or actual_out != output_shape:
            raise VerificationError(
                f"{self.path.name}: signature {actual_in} -> {actual_out}, expected {input_shape} -> {output_shape}"
            )
        output = self(sample)
        if list(output.shape) != output_shape or not torch.isfinite(output).all():
            raise VerificationError(f"{self.path.name}: output {output.tolist()} is not finite or has the wrong shape")


def reproduction_error(
    path: Path, input_shape: list[int], output_shape: list[int], reference_input: Any, reference_output: Any
) -> float:
    """Load the program, check its shapes, and return how far its output on `reference_input` is from
    `reference_output` (the largest absolute difference): what a device and the release signer check."""
    program = Program(path)
    reference = torch.tensor(reference_input, dtype=torch.float32)
    program.check(input_shape, output_shape, reference)
    expected = torch.tensor(reference_output, dtype=torch.float32)
    return float((program(reference) - expected).abs().max())
