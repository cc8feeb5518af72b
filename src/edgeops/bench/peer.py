"""Peer benchmark: one network under eager PyTorch, ExecuTorch (XNNPACK) and ONNX Runtime.

Every engine gets the same test windows at batch 1, and both INT8 paths calibrate
on the same windows. ONNX Runtime's INT8 is measured twice: with its default int8
activations, which on x86 leaves part of the convolutions in float behind Q/DQ
pairs, and with uint8 activations, which it fuses into QLinearConv; the second is
its best configuration here and the fair opponent for ExecuTorch INT8.

ONNX Runtime and ExecuTorch are imported only where used, so that a memory
measurement process counts the import of its own engine only.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from edgeops import progress
from edgeops.bench.onnx import (
    ONNX_FP32_FILE,
    OPTIMIZED_SUFFIX,
    PREPROCESSED_FILE,
    SINGLE_THREAD,
    ActivationType,
    as_input,
    export_onnx,
    ort_node_types,
    ort_session,
    preprocess_onnx,
    quantize_onnx,
)
from edgeops.latency import (
    LatencyStats,
    MemoryJob,
    MemoryStats,
    Ratio,
    Runner,
    interleaved,
    load_time,
    measure,
    peak_memory,
    ratio,
)
from edgeops.quantize.lowering import LoweredProgram
from edgeops.records import StageRecord
from edgeops.runtime import Program
from edgeops.stages.benchmark import classification

RECORD_FILE = "peer.json"
ONNX_DIR = "onnx"
EAGER_FILE = "model_eager.pt"
COMMON_MODULES = ("numpy", "torch")  # imported before every memory baseline: all engines here need them
Kind = Literal["eager", "executorch", "onnxruntime"]
EAGER = "eager"
ET_FP32 = "executorch_fp32"
ET_INT8 = "executorch_int8"
ORT_FP32 = "ort_fp32"
ORT_INT8 = "ort_int8_qint8"
ORT_INT8_BEST = "ort_int8_quint8"
ORT_INT8_ACTIVATIONS: dict[str, ActivationType] = {ORT_INT8: "QInt8", ORT_INT8_BEST: "QUInt8"}
LABELS = {
    EAGER: "PyTorch eager",
    ET_FP32: "ExecuTorch FP32",
    ET_INT8: "ExecuTorch INT8",
    ORT_FP32: "ORT FP32",
    ORT_INT8: "ORT INT8 (QInt8 act., default)",
    ORT_INT8_BEST: "ORT INT8 (QUInt8 act., best)",
}
RATIO_PAIRS = ((ET_INT8, ORT_INT8_BEST), (ET_INT8, ORT_INT8), (ET_FP32, ORT_FP32))
ENGINE_MODULES: dict[Kind, tuple[str, ...]] = {
    "eager": (),
    "executorch": ("executorch.extension.pybindings._portable_lib",),  # what edgeops.runtime loads
    "onnxruntime": ("onnxruntime",),
}
# int8 vs float convolutions, and the Q/DQ and layout changes around float ones
ORT_REPORTED_NODES = ("QLinearConv", "Conv", "FusedConv", "QuantizeLinear", "DequantizeLinear", "Transpose")


class PeerConfig(BaseModel):
    """How long to measure. Defaults suit a report; tests pass much smaller numbers."""

    warmup_runs: int = Field(100, ge=0)
    latency_runs: int = Field(1000, ge=1)
    interleaved_rounds: int = Field(1000, ge=1)
    load_repeats: int = Field(5, ge=1)
    measure_memory: bool = True  # one fresh process per engine: seconds each, mostly imports
    memory_runs: int = Field(100, ge=1)
    memory_processes: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    max_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    seed: int = 0

    @property
    def thread_counts(self) -> list[int]:
        return sorted({SINGLE_THREAD, self.max_threads})


class Engine(BaseModel):
    """One column of the comparison: which runtime runs which file."""

    key: str
    label: str
    kind: Kind
    path: Path
    imports: tuple[str, ...] = ()  # modules the model file needs (eager: the model's classes), counted as import


class Evaluation(BaseModel):
    accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: list[list[int]]  # rows: true label, columns: predicted label

    @classmethod
    def of(cls, logits: np.ndarray, y: np.ndarray, classes: int) -> Evaluation:
        return cls.model_validate(classification(np.asarray(y, dtype=np.int64), logits.argmax(axis=1), classes))


class EngineResult(BaseModel):
    label: str
    kind: Kind
    file: str
    size_bytes: int
    evaluation: Evaluation
    agreement_with_eager: float  # fraction of test windows with the eager model's top-1 class
    max_abs_logit_diff: float  # against the eager model, over the test windows
    latency: dict[int, LatencyStats]  # by thread count
    load_ms: float
    memory: MemoryStats | None  # None when not measured


class Pairing(BaseModel):
    """An interleaved comparison: a's time relative to b's."""

    a: str
    b: str
    threads: int
    ratio: Ratio


class ExecuTorchCoverage(BaseModel):
    """What the runtime executes: calls into delegates, and operator calls left outside them."""

    delegate_calls: dict[str, int]  # backend -> calls
    kernel_calls: dict[str, int]  # operator -> calls outside any delegate
    delegated_ops: int | None = None  # edge ops inside delegates at lowering, when the caller knows
    non_delegated_ops: int | None = None


class PeerResult(StageRecord):
    record_file = RECORD_FILE
    labels: list[str]
    test_windows: int
    calibration_windows: int
    config: PeerConfig
    machine: dict[str, str]
    engines: dict[str, EngineResult]
    ratios: list[Pairing]
    executorch: dict[str, ExecuTorchCoverage]  # by engine key
    ort_nodes: dict[str, dict[str, int]]  # by engine key: op type -> nodes after ORT's graph optimisation


class EagerRunner:
    def __init__(self, path: Path, threads: int) -> None:
        torch.set_num_threads(threads)
        self.model = torch.load(path, weights_only=False).eval()  # a file compare() wrote itself

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


class ExecuTorchRunner:
    def __init__(self, path: Path, threads: int) -> None:
        set_executorch_threads(threads)
        self.program = Program(path)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.program(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


class OrtRunner:
    def __init__(self, path: Path, threads: int) -> None:
        self.session = ort_session(path, threads)
        self.input_name: str = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]  # type: ignore[no-any-return]


RUNNERS: dict[Kind, type[EagerRunner | ExecuTorchRunner | OrtRunner]] = {
    "eager": EagerRunner,
    "executorch": ExecuTorchRunner,
    "onnxruntime": OrtRunner,
}


def load_runner(engine: Engine, threads: int) -> Runner:
    """A runner taking a float32 numpy array of batch 1 and returning logits as numpy."""
    return RUNNERS[engine.kind](engine.path, threads)


def set_executorch_threads(threads: int) -> None:
    """Size XNNPACK's process-wide thread pool (by default one thread per core).

    Resetting it invalidates the pool that loaded programs hold, so a change is
    only safe with no ExecuTorch program alive; compare() loads all programs of
    one thread count together and drops them before switching.
    """
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


def build_onnx(model: torch.nn.Module, calibration: np.ndarray, out_dir: Path) -> dict[str, Path]:
    """ORT FP32 and both INT8 variants, keyed like the engines."""
    example = torch.from_numpy(as_input(calibration[:1]))
    fp32 = export_onnx(model, example, out_dir / ONNX_FP32_FILE)
    preprocessed = preprocess_onnx(fp32, out_dir / PREPROCESSED_FILE)
    paths = {ORT_FP32: fp32}
    for key, activation_type in ORT_INT8_ACTIVATIONS.items():
        paths[key] = quantize_onnx(preprocessed, out_dir / f"{key}.onnx", calibration, activation_type, False)
    return paths


def logits(runner: Runner, x: np.ndarray) -> np.ndarray:
    """[N, classes] logits, one window per call."""
    return np.stack([np.array(runner(x[i : i + 1]), copy=True)[0] for i in range(len(x))])


def evaluate(runner: Runner, x: np.ndarray, y: np.ndarray, classes: int | None = None) -> Evaluation:
    """Accuracy, macro precision/recall/F1 and the confusion matrix, at batch 1.

    `classes` defaults to the width of the runner's output.
    """
    outputs = logits(runner, as_input(x))
    return Evaluation.of(outputs, y, classes or outputs.shape[1])


def executorch_coverage(path: Path, lowered: LoweredProgram | None = None) -> ExecuTorchCoverage:
    """Read the `.pte` for what runs inside delegates and what the portable kernels run."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall, KernelCall

    plans = deserialize_pte_binary(path.read_bytes()).program.execution_plan
    plan = next(p for p in plans if p.name == "forward")
    delegates: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            call = instruction.instr_args
            if isinstance(call, DelegateCall):
                delegates[plan.delegates[call.delegate_index].id] += 1
            elif isinstance(call, KernelCall):
                operator = plan.operators[call.op_index]
                kernels[f"{operator.name}.{operator.overload}" if operator.overload else operator.name] += 1
    return ExecuTorchCoverage(
        delegate_calls=dict(delegates),
        kernel_calls=dict(kernels),
        delegated_ops=lowered.delegated_ops if lowered else None,
        non_delegated_ops=lowered.non_delegated_ops if lowered else None,
    )


def machine() -> dict[str, str]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "logical_cpus": str(os.cpu_count()),
        **{package: importlib.metadata.version(package) for package in ("torch", "executorch", "onnxruntime")},
    }


@contextmanager
def restored_threads() -> Iterator[None]:
    """Put torch's and ExecuTorch's process-wide thread counts back afterwards."""
    from executorch.extension.pybindings import portable_lib

    torch_threads = torch.get_num_threads()
    executorch_threads = portable_lib._threadpool_get_thread_count()
    try:
        yield
    finally:
        gc.collect()  # no ExecuTorch program may outlive its thread pool
        torch.set_num_threads(torch_threads)
        set_executorch_threads(executorch_threads)


def engines(
    eager: Path,
    executorch_fp32: Path,
    executorch_int8: Path,
    onnx: Mapping[str, Path],
    eager_imports: tuple[str, ...] = (),
) -> list[Engine]:
    """The six engines; `eager_imports` names the modules defining the eager model's classes."""
    paths = {EAGER: eager, ET_FP32: executorch_fp32, ET_INT8: executorch_int8, **onnx}
    kinds: dict[str, Kind] = {
        EAGER: "eager",
        ET_FP32: "executorch",
        ET_INT8: "executorch",
        ORT_FP32: "onnxruntime",
        ORT_INT8: "onnxruntime",
        ORT_INT8_BEST: "onnxruntime",
    }
    return [
        Engine(key=key, label=LABELS[key], kind=kind, path=paths[key], imports=eager_imports if key == EAGER else ())
        for key, kind in kinds.items()
    ]


def memory_job(engine: Engine, x: np.ndarray, config: PeerConfig) -> MemoryJob:
    """Load and run `engine` at one thread in a fresh process with COMMON_MODULES imported."""
    return MemoryJob(
        load=partial(load_runner, engine, SINGLE_THREAD),
        x=x,
        runs=config.memory_runs,
        preload=COMMON_MODULES,
        imports=ENGINE_MODULES[engine.kind] + engine.imports,
    )


def compare(
    model: torch.nn.Module,
    calibration: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    executorch_fp32: Path,
    executorch_int8: Path,
    out_dir: Path,
    labels: Sequence[str] | None = None,
    config: PeerConfig | None = None,
    lowering: Mapping[str, LoweredProgram] | None = None,
) -> PeerResult:
    """Measure all six engines on the test windows `x`, `y` and save the result in `out_dir`.

    `calibration` ([N, 1, 64, 32] float32 raw values) should be what the ExecuTorch
    INT8 program was calibrated on. `lowering` may give export.lower()'s records for
    ET_FP32 and ET_INT8, adding their delegated-op counts to the report.

    Engines run one at a time per thread count, then the RATIO_PAIRS interleaved at
    one thread, then the memory subprocesses, so nothing else runs beside a timed call.
    """
    config = config or PeerConfig()
    lowering = lowering or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    x = as_input(x)
    y = np.asarray(y, dtype=np.int64)
    model = model.eval()
    eager_path = out_dir / EAGER_FILE
    torch.save(model, eager_path)
    onnx = build_onnx(model, calibration, out_dir / ONNX_DIR)
    all_engines = engines(eager_path, executorch_fp32, executorch_int8, onnx, (type(model).__module__,))
    by_key = {engine.key: engine for engine in all_engines}
    inputs = [x[i : i + 1] for i in range(len(x))]

    outputs: dict[str, np.ndarray] = {}
    load_ms: dict[str, float] = {}
    latency: dict[str, dict[int, LatencyStats]] = {engine.key: {} for engine in all_engines}
    ratios = []
    steps, step = len(config.thread_counts) * len(all_engines), 0
    with restored_threads():
        for threads in config.thread_counts:
            gc.collect()  # drop the previous thread count's programs before the pool changes
            for engine in all_engines:
                progress.report(f"timing {engine.label} at {threads} thread(s)", step, steps)
                step += 1
                runner = load_runner(engine, threads)
                if threads == SINGLE_THREAD:
                    outputs[engine.key] = logits(runner, x)
                    load_ms[engine.key] = load_time(partial(load_runner, engine, threads), config.load_repeats)
                latency[engine.key][threads] = measure(runner, inputs, config.warmup_runs, config.latency_runs)
                del runner
            if threads == SINGLE_THREAD:
                for a, b in RATIO_PAIRS:
                    progress.report(f"interleaving {a} and {b} for their paired ratio")
                    pair = {key: load_runner(by_key[key], threads) for key in (a, b)}
                    samples = interleaved(pair, inputs[0], config.warmup_runs, config.interleaved_rounds, config.seed)
                    ratios.append(Pairing(a=a, b=b, threads=threads, ratio=ratio(samples[a], samples[b])))
                    del pair

    if config.measure_memory:
        progress.report(f"peak memory of each engine in its own process ({len(all_engines)} engines)")
    memory = (
        peak_memory(
            {engine.key: memory_job(engine, inputs[0], config) for engine in all_engines}, config.memory_processes
        )
        if config.measure_memory
        else {}
    )
    classes = outputs[EAGER].shape[1]
    eager_top1 = outputs[EAGER].argmax(axis=1)
    results = {
        engine.key: EngineResult(
            label=engine.label,
            kind=engine.kind,
            file=engine.path.name,
            size_bytes=engine.path.stat().st_size,
            evaluation=Evaluation.of(outputs[engine.key], y, classes),
            agreement_with_eager=float((outputs[engine.key].argmax(axis=1) == eager_top1).mean()),
            max_abs_logit_diff=float(np.abs(outputs[engine.key] - outputs[EAGER]).max()),
            latency=latency[engine.key],
            load_ms=load_ms[engine.key],
            memory=memory.get(engine.key),
        )
        for engine in all_engines
    }
    result = PeerResult(
        labels=list(labels) if labels else [str(label) for label in range(classes)],
        test_windows=len(x),
        calibration_windows=len(calibration),
        config=config,
        machine=machine(),
        engines=results,
        ratios=ratios,
        executorch={key: executorch_coverage(by_key[key].path, lowering.get(key)) for key in (ET_FP32, ET_INT8)},
        ort_nodes={key: ort_node_types(path, path.with_suffix(OPTIMIZED_SUFFIX)) for key, path in onnx.items()},
    )
    result.save(out_dir)
    return result
