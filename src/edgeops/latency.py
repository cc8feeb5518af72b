"""Latency, load-time and memory measurement shared by every inference engine.

Everything here treats an engine as a `Runner`: a callable doing one batch-1
inference. Timings are wall-clock around that call, so they include the Python
binding's overhead, which is the same kind of cost for every engine measured.
"""

from __future__ import annotations

import importlib
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

MS_PER_NS = 1e-6
KIB_PER_MIB = 1024
PERCENTILES = (50, 95, 99)
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
MEMORY_CHILD = "import sys; from edgeops.latency import memory_child_main; memory_child_main(sys.argv[1])"
MAX_LOG_CHARS = 4000  # of a failed child's output, in the error
RESET_PEAK_RSS = "5"  # written to clear_refs, makes VmHWM start again from the current RSS (Linux >= 4.0)


class Runner(Protocol):
    """One inference on a batch-1 input (a numpy array or torch tensor, as the engine takes it)."""

    def __call__(self, x: Any, /) -> Any: ...


class Latency(BaseModel):
    """Percentiles of single-call latency."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    runs: int


class LatencyStats(Latency):
    """Latency with the samples kept for plots."""

    samples_ms: list[float]

    def summary(self) -> Latency:
        return Latency.model_validate(self.model_dump(exclude={"samples_ms"}))

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no latency samples")
        p50, p95, p99 = np.percentile(samples_ms, PERCENTILES)
        return cls(
            p50_ms=float(p50),
            p95_ms=float(p95),
            p99_ms=float(p99),
            mean_ms=float(np.mean(samples_ms)),
            runs=len(samples_ms),
            samples_ms=list(samples_ms),
        )


class Ratio(BaseModel):
    """How much time engine a takes relative to engine b; below 1 means a is faster."""

    of_medians: float
    median_paired: float  # median over rounds of a's call / b's call in the same round
    rounds: int


class MemoryStats(BaseModel):
    """Resident memory of one engine, measured in a fresh process.

    `peak_mib` is the highest RSS reached while loading the model and running it,
    minus the RSS just before loading (after all imports). `import_mib` is what
    importing the engine's own modules added to RSS before that. `baseline_mib` is
    the RSS of the process with the common modules imported. When the kernel does
    not let us reset the peak (`peak_reset` false), `peak_mib` can only be a lower
    bound: a peak reached during imports hides a smaller one during loading.
    """

    baseline_mib: float
    import_mib: float
    peak_mib: float
    runs: int
    peak_reset: bool


@dataclass(frozen=True)
class MemoryJob:
    """What a memory-measuring subprocess does. Everything must pickle: `load` a
    module-level function or a functools.partial of one."""

    load: Callable[[], Runner]
    x: Any
    runs: int
    preload: tuple[str, ...] = ()  # imported before the baseline: common to every engine compared
    imports: tuple[str, ...] = ()  # the engine's own modules, counted in import_mib


def time_call(runner: Runner, x: Any) -> float:
    """Milliseconds one call takes."""
    started = time.perf_counter_ns()
    runner(x)
    return (time.perf_counter_ns() - started) * MS_PER_NS


def measure(runner: Runner, inputs: Sequence[Any], warmup: int, runs: int) -> LatencyStats:
    """Single calls cycling through `inputs`, after `warmup` untimed calls."""
    if not inputs:
        raise ValueError("no inputs to measure with")
    for i in range(warmup):
        runner(inputs[i % len(inputs)])
    return LatencyStats.of([time_call(runner, inputs[i % len(inputs)]) for i in range(runs)])


def interleaved(
    runners: Mapping[str, Runner], x: Any, warmup: int, rounds: int, seed: int = 0
) -> dict[str, list[float]]:
    """Every runner once per round, in an order shuffled each round, so that machine
    noise (frequency changes, other processes) hits all runners alike.

    Sample i of every runner comes from round i, which `ratio` uses to pair them.
    """
    names = list(runners)
    order = random.Random(seed)
    for _ in range(warmup):
        order.shuffle(names)
        for name in names:
            runners[name](x)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        order.shuffle(names)
        for name in names:
            samples[name].append(time_call(runners[name], x))
    return samples


def ratio(a_samples: Sequence[float], b_samples: Sequence[float]) -> Ratio:
    """a relative to b, from samples `interleaved` took in the same rounds."""
    if len(a_samples) != len(b_samples) or not a_samples:
        raise ValueError(f"need paired samples, got {len(a_samples)} and {len(b_samples)}")
    paired = [a / b for a, b in zip(a_samples, b_samples, strict=True)]
    return Ratio(
        of_medians=statistics.median(a_samples) / statistics.median(b_samples),
        median_paired=statistics.median(paired),
        rounds=len(paired),
    )


def load_time(load: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `repeats` loads in this process (libraries already imported and initialised)."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        loaded = load()
        timings.append((time.perf_counter_ns() - started) * MS_PER_NS)
        del loaded
    return statistics.median(timings)


def _status_kib(key: str) -> int:
    for line in PROC_STATUS.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise RuntimeError(f"{PROC_STATUS} has no {key}; memory measurement needs Linux")


def _reset_peak() -> bool:
    try:
        PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
    except OSError:
        return False
    return True


def _memory_child(job: MemoryJob) -> MemoryStats:
    for module in job.preload:
        importlib.import_module(module)
    common = _status_kib("VmRSS")
    for module in job.imports:
        importlib.import_module(module)
    peak_reset = _reset_peak()
    before = _status_kib("VmRSS")
    runner = job.load()
    for _ in range(job.runs):
        runner(job.x)
    peak = _status_kib("VmHWM")
    return MemoryStats(
        baseline_mib=common / KIB_PER_MIB,
        import_mib=(before - common) / KIB_PER_MIB,
        peak_mib=max(0, peak - before) / KIB_PER_MIB,
        runs=job.runs,
        peak_reset=peak_reset,
    )


def peak_memory(jobs: Mapping[str, MemoryJob], processes: int = 1) -> dict[str, MemoryStats]:
    """Run each job in a fresh interpreter, so that no engine sees memory another one
    freed or libraries another one imported.

    A plain subprocess rather than multiprocessing: the caller's `__main__` is not
    re-imported, so this works from scripts without a main guard. Up to `processes`
    run at once; each measures only itself.
    """
    if not sys.platform.startswith("linux"):
        raise RuntimeError("peak memory is read from /proc and needs Linux")
    pending = list(enumerate(jobs.items()))
    running: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    results: dict[str, MemoryStats] = {}
    with tempfile.TemporaryDirectory() as scratch:
        while pending or running:
            while pending and len(running) < max(1, processes):
                index, (name, job) = pending.pop(0)
                out = Path(scratch) / f"{index}.json"
                with (Path(scratch) / f"{index}.log").open("wb") as log:
                    child = subprocess.Popen(
                        [sys.executable, "-c", MEMORY_CHILD, str(out)],
                        stdin=subprocess.PIPE,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                assert child.stdin is not None
                with child.stdin:
                    child.stdin.write(pickle.dumps((sys.path, pickle.dumps(job))))
                running.append((name, child, out))
            name, child, out = running.pop(0)
            if child.wait() != 0:
                log_text = out.with_suffix(".log").read_text(errors="replace")[-MAX_LOG_CHARS:]
                raise RuntimeError(f"memory measurement of {name} failed:\n{log_text}")
            results[name] = MemoryStats.model_validate_json(out.read_text())
    return {name: results[name] for name in jobs}


def memory_child_main(out: str) -> None:
    """Entry point of the measuring interpreter: job from stdin, MemoryStats to `out`."""
    path, job = pickle.load(sys.stdin.buffer)
    sys.path[:] = path  # before unpickling the job, which imports the caller's modules
    Path(out).write_text(_memory_child(pickle.loads(job)).model_dump_json())


def peak_memory_while(job: MemoryJob) -> MemoryStats:
    """`peak_memory` for a single job."""
    return peak_memory({"job": job})["job"]
