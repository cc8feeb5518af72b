"""Run ExecuTorch programs on samples and save their outputs: the one process each emulated CPU path starts.

Under qemu, importing torch takes tens of seconds, so one long-lived process evaluates every program.
It runs as a file (`python -P path_runner.py ...`) on an aarch64 site that holds only numpy, torch and
executorch: it imports the standard library, numpy, torch (methods take torch tensors only) and ExecuTorch's
runtime extension, never edgeops or pydantic. `kernel_paths.run_native`
calls `evaluate` in-process, so native and emulated paths compute the same way.

usage: path_runner.py --inputs SAMPLES.npy --output LOGITS.npz --timings TIMINGS.json PROGRAM.pte ...
  SAMPLES: float32 [N, ...] (.npy, or .npz with one array); each program has batch 1 and sees one sample a call.
  LOGITS: `program_<i>` [N, ...] for the i-th program. TIMINGS: import seconds, per-program load and per-call ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()  # before numpy: under emulation its import is part of the cost

import numpy as np  # noqa: E402


class ProgramError(Exception):
    """A program that does not load or run; the message starts with its path."""


@dataclass
class Evaluated:
    """One program's outputs on every sample, and what it cost."""

    path: Path
    logits: np.ndarray  # [N, ...]: the program's output without its batch axis
    load_ms: float
    call_ms: list[float]

    @property
    def median_call_ms(self) -> float:
        return statistics.median(self.call_ms) if self.call_ms else 0.0


def key(index: int) -> str:
    """The array name of the `index`-th program in the output `.npz`."""
    return f"program_{index}"


def load_inputs(path: Path) -> np.ndarray:
    loaded = np.load(path)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if len(loaded.files) != 1:
                raise ValueError(f"{path}: expected one array, found {loaded.files}")
            loaded = loaded[loaded.files[0]]
    if loaded.dtype != np.float32 or loaded.ndim < 1:
        raise ValueError(f"{path}: expected float32 samples [N, ...], got {loaded.dtype} {loaded.shape}")
    return np.asarray(loaded)


def evaluate(programs: list[Path], inputs: np.ndarray, log: Any = None) -> list[Evaluated]:
    """Each program's output on each sample, one sample per call (the programs have batch 1).

    Loads every program before running any, so a broken one fails in seconds, not after the others ran.
    """
    import torch
    from executorch.extension.pybindings import _portable_lib as extension

    methods: list[tuple[Path, Any, float]] = []
    for path in programs:
        started = time.perf_counter()
        try:
            verification = extension.Verification.InternalConsistency
            method = extension._load_program(str(path), program_verification=verification).load_method("forward")
        except Exception as error:
            raise ProgramError(f"{path}: ExecuTorch cannot load it: {error}") from error
        methods.append((path, method, (time.perf_counter() - started) * 1000))
    results = []
    for path, method, load_ms in methods:
        outputs: list[np.ndarray] = []
        call_ms: list[float] = []
        for index in range(len(inputs)):
            sample = torch.from_numpy(np.ascontiguousarray(inputs[index : index + 1]))
            started = time.perf_counter()
            try:
                output = method([sample])[0]
            except Exception as error:
                raise ProgramError(f"{path}: failed on sample {index}: {error}") from error
            call_ms.append((time.perf_counter() - started) * 1000)
            outputs.append(np.array(output.numpy()[0], copy=True))  # the runtime may reuse its output buffer
        result = Evaluated(path, np.stack(outputs) if outputs else np.empty((0,)), load_ms, call_ms)
        results.append(result)
        if log is not None:
            print(f"path_runner: {path.name}: {len(inputs)} samples, {result.median_call_ms:.3f} ms/call", file=log)
    return results


def write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary file, so a reader never sees half an output."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        write(handle)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Evaluate ExecuTorch programs on samples (one process, many programs)."
    )
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--timings", type=Path, required=True)
    parser.add_argument("programs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        inputs = load_inputs(args.inputs)
        # The runtime extension alone (as edgeops.runtime loads it), not executorch.runtime, which also
        # imports the exporter: most of an emulated process's start-up.
        import torch  # noqa: F401  (libtorch first: the extension links against it)
        from executorch.extension.pybindings import _portable_lib  # noqa: F401

        import_s = time.perf_counter() - STARTED
        print(f"path_runner: {platform.machine()}, imports took {import_s:.1f} s", file=sys.stderr, flush=True)
        results = evaluate(args.programs, inputs, log=sys.stderr)
    except (ProgramError, ValueError, OSError) as error:
        print(f"path_runner: error: {error}", file=sys.stderr)
        return 2
    arrays: dict[str, Any] = {key(i): result.logits for i, result in enumerate(results)}
    write_atomically(args.output, lambda handle: np.savez(handle, **arrays))
    timings = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "samples": len(inputs),
        "import_s": import_s,
        "seconds": time.perf_counter() - STARTED,
        "programs": [
            {"path": str(r.path), "key": key(i), "load_ms": r.load_ms, "median_call_ms": r.median_call_ms}
            for i, r in enumerate(results)
        ],
    }
    write_atomically(args.timings, lambda handle: handle.write(json.dumps(timings, indent=1).encode()))
    return 0


if __name__ == "__main__":
    # Run as a file, this directory would come first on sys.path (kernel_paths passes -P, which prevents it).
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    sys.exit(main())
