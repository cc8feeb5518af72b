"""Benchmark: accuracy and latency of the eager model, the FP32 `.pte` and every INT8 candidate on the test split.

Every INT8 candidate's accuracy is also measured on each CPU kernel path reachable here (XNNPACK picks its
integer kernels by instruction set): natively on the whole split, and under emulation (aarch64 as on
phones, x86-64 without AVX-512) on a fixed stratified subset. Verify gates on the worst path. Each
candidate's quantized graph (fake quantization, in PyTorch) is measured too, so a loss can be put on
quantization itself or on the integer kernels.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from edgeops import progress
from edgeops.datasets.base import load_splits
from edgeops.errors import VerificationError
from edgeops.files import sha256_file
from edgeops.latency import Latency, measure
from edgeops.models.training import logits_of
from edgeops.quantize.kernel_paths import (
    HostCpu,
    KernelPath,
    PathLogits,
    native_path,
    start_emulated,
    stratified_subset,
)
from edgeops.quantize.lowering import LoweredProgram
from edgeops.quantize.pt2e import load_reference
from edgeops.records import StageRecord
from edgeops.runtime import Program
from edgeops.settings import Architecture, Settings
from edgeops.stack import tracking
from edgeops.stages.export import ExportedModels
from edgeops.stages.train import WEIGHTS_FILE, load_model

INFO_FILE = "benchmark.json"
REPORT_FILE = "report.md"
KERNEL_PATHS_DIR = "kernel_paths"  # the emulated runs' inputs, outputs and logs
OFFSETS_PA = (-1000.0, 1000.0)  # mat track: common offset of the order weather adds


def candidate_key(strategy: str) -> str:
    return f"int8_{strategy}"


def slug(name: str) -> str:
    """A kernel path's name as part of a metric name: `aarch64 cortex-a76 (qemu)` -> `aarch64_cortex_a76_qemu`."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


class RunnerResult(BaseModel):
    accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    latency: Latency
    load_ms: float
    size_bytes: int


class MeasuredProgram(BaseModel):
    """The `.pte` a result was measured on, so verify can refuse numbers measured on other bytes."""

    file: str
    sha256: str  # of the file as loaded and timed, hashed from disk rather than copied from export.json


class PathAccuracy(BaseModel):
    """One INT8 candidate on one kernel path."""

    accuracy: float  # on the samples this path ran
    # On the whole test split: the native accuracy, moved by this path's difference from the native
    # program on the same samples (native: measured on the whole split, so equal to `accuracy`).
    estimated_accuracy: float
    subset_accuracy: float  # on the emulated paths' subset (native: shows how well the subset stands for the split)
    disagreements: int  # samples classified differently from the native program
    max_logit_difference: float  # largest difference from the native program's logits


class KernelPathResult(BaseModel):
    description: str  # the ISA features XNNPACK's kernels depend on
    emulated: bool
    samples: int
    seconds: float  # the whole run, imports included
    candidates: dict[str, PathAccuracy]  # "int8_<candidate>" -> accuracy on this path


class FakeQuantResult(BaseModel):
    """The quantized graph in PyTorch (float arithmetic, fake quantization) against its `.pte` (integer kernels)."""

    accuracy: float
    disagreements: int  # test samples the native program classifies differently
    max_logit_error: float
    mean_logit_error: float


class BenchmarkReport(StageRecord):
    record_file = INFO_FILE
    # Of the export measured: with `programs`, what verify checks against the export it judges.
    run_id: str
    dataset_version: str
    labels: list[str]
    test_samples: int
    results: dict[str, RunnerResult]  # "eager", "fp32", and "int8_<strategy>" per candidate
    programs: dict[str, MeasuredProgram]  # "fp32" and "int8_<strategy>": the bytes behind each result
    # Mat track: accuracy of each INT8 candidate with a common pressure offset added.
    offset_accuracy: dict[str, dict[str, float]] = Field(default_factory=dict)
    native_path: str = ""
    kernel_paths: dict[str, KernelPathResult] = Field(default_factory=dict)  # path name -> result, native first
    skipped_paths: dict[str, str] = Field(default_factory=dict)  # path name -> why it could not run here
    fake_quant: dict[str, FakeQuantResult] = Field(default_factory=dict)  # "int8_<candidate>" -> result

    def path_accuracy(self, candidate: str) -> dict[str, float]:
        """The candidate's (estimated) test-split accuracy on every kernel path measured."""
        key = candidate_key(candidate)
        measured = {name: path.candidates[key].estimated_accuracy for name, path in self.kernel_paths.items()}
        return measured or {self.native_path or "native": self.results[key].accuracy}

    def worst_path(self, candidate: str) -> tuple[str, float]:
        """The kernel path where the candidate is least accurate, and that accuracy: what the gates judge."""
        accuracy = self.path_accuracy(candidate)
        name = min(accuracy, key=lambda path: accuracy[path])
        return name, accuracy[name]

    def accuracy_drop(self, strategy: str) -> float:
        """FP32 accuracy minus the candidate's on its worst kernel path."""
        return self.results["fp32"].accuracy - self.worst_path(strategy)[1]


def classification(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> dict[str, float | list[list[int]]]:
    """Accuracy, macro-averaged precision/recall/F1 and the confusion matrix."""
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    precision = np.divide(true_positive, confusion.sum(axis=0), out=np.zeros(classes), where=confusion.sum(axis=0) > 0)
    recall = np.divide(true_positive, confusion.sum(axis=1), out=np.zeros(classes), where=confusion.sum(axis=1) > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(classes), where=denominator > 0)
    return {
        "accuracy": float(true_positive.sum() / max(1, confusion.sum())),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "confusion": confusion.tolist(),
    }


def logits_each(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One sample per call, as on a device (the `.pte` programs have batch 1)."""
    return torch.cat([predict(x[i : i + 1]) for i in range(len(x))])


def predict_all(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    return np.asarray(logits_each(predict, x).argmax(dim=1).numpy())


def path_results(
    native: dict[str, np.ndarray],
    emulated: dict[str, PathLogits],
    subset: np.ndarray,
    y_true: np.ndarray,
    native_path: KernelPath,
) -> dict[str, KernelPathResult]:
    """Each candidate on each path, beside the native program on the same samples."""

    def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
        return float((logits.argmax(axis=1) == labels).mean())

    results = {
        native_path.name: KernelPathResult(
            description=native_path.describe(),
            emulated=False,
            samples=len(y_true),
            seconds=0.0,
            candidates={
                key: PathAccuracy(
                    accuracy=accuracy(logits, y_true),
                    estimated_accuracy=accuracy(logits, y_true),
                    subset_accuracy=accuracy(logits[subset], y_true[subset]),
                    disagreements=0,
                    max_logit_difference=0.0,
                )
                for key, logits in native.items()
            },
        )
    }
    for path_name, run in emulated.items():
        candidates = {}
        for key, logits in run.logits.items():
            reference = native[key][subset]
            on_path = accuracy(logits, y_true[subset])
            # Samples this path gets right that native gets wrong, minus the reverse, per subset sample.
            gained = int(
                (logits.argmax(axis=1) == y_true[subset]).sum() - (reference.argmax(axis=1) == y_true[subset]).sum()
            )
            candidates[key] = PathAccuracy(
                accuracy=on_path,
                estimated_accuracy=accuracy(native[key], y_true) + gained / len(subset),
                subset_accuracy=on_path,
                disagreements=int((logits.argmax(axis=1) != reference.argmax(axis=1)).sum()),
                max_logit_difference=float(np.abs(logits - reference).max()),
            )
        results[path_name] = KernelPathResult(
            description=run.path.describe(),
            emulated=True,
            samples=run.samples,
            seconds=run.seconds,
            candidates=candidates,
        )
    return results


def fake_quant_result(
    reference: torch.nn.Module, program_logits: np.ndarray, x: torch.Tensor, y: np.ndarray
) -> FakeQuantResult:
    graph = logits_of(reference, x).numpy()
    error = np.abs(program_logits - graph)
    return FakeQuantResult(
        accuracy=float((graph.argmax(axis=1) == y).mean()),
        disagreements=int((graph.argmax(axis=1) != program_logits.argmax(axis=1)).sum()),
        max_logit_error=float(error.max()),
        mean_logit_error=float(error.mean()),
    )


def render_report(report: BenchmarkReport, exported: ExportedModels) -> str:
    lines = [
        f"# Benchmark — dataset {report.dataset_version}, run {report.run_id}",
        "",
        f"{report.test_samples} held-out test samples; latency is one sample per call, after warm-up.",
        "",
        "| model | accuracy | precision | recall | F1 | p50 ms | p95 ms | p99 ms | load ms | size bytes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report.results.items():
        lines.append(
            f"| {name} | {r.accuracy:.4f} | {r.precision:.4f} | {r.recall:.4f} | {r.f1:.4f} | "
            f"{r.latency.p50_ms:.4f} | {r.latency.p95_ms:.4f} | {r.latency.p99_ms:.4f} | "
            f"{r.load_ms:.2f} | {r.size_bytes:,} |"
        )
    lines.append("")
    programs: list[tuple[str, LoweredProgram]] = [("fp32", exported.fp32), *exported.candidates.items()]
    for name, program in programs:
        drop = "" if name == "fp32" else f", accuracy drop vs FP32 {report.accuracy_drop(name) * 100:+.2f} points"
        measured = report.programs["fp32" if name == "fp32" else candidate_key(name)]
        lines.append(
            f"- {name}: {program.delegated_ops} ops delegated to XNNPACK, {program.non_delegated_ops} not, "
            f"built in {program.seconds:.1f} s{drop} (sha256 `{measured.sha256[:16]}…`)"
        )
    if report.kernel_paths:
        lines += render_kernel_paths(report)
    if report.offset_accuracy:
        lines += ["", "INT8 accuracy with a common pressure offset (weather moves every chamber together):", ""]
        lines += [
            f"- {name}: " + ", ".join(f"{offset} {accuracy:.4f}" for offset, accuracy in by_offset.items())
            for name, by_offset in report.offset_accuracy.items()
        ]
    lines += ["", "Confusion matrices (rows: true, columns: predicted, order " + ", ".join(report.labels) + "):", ""]
    lines += [f"- {name}: {r.confusion}" for name, r in report.results.items()]
    return "\n".join(lines) + "\n"


def render_kernel_paths(report: BenchmarkReport) -> list[str]:
    """Each candidate on each CPU kernel path, the quantized graph beside its program, and paths not run."""
    names = list(report.kernel_paths)
    lines = [
        "",
        "## INT8 accuracy on each CPU kernel path",
        "",
        "XNNPACK picks integer kernels by instruction set. Emulated paths (qemu-user) run a fixed stratified "
        "subset; their whole-split figure is the native accuracy moved by the paths' difference on that subset. "
        "Verify gates on the worst path. *graph* is the quantized graph in PyTorch (fake quantization), "
        "*max abs Δlogit* its largest difference from the native program.",
        "",
        "| candidate | graph | max abs Δlogit | " + " | ".join(names) + " | worst |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for key in report.kernel_paths[names[0]].candidates:
        strategy = key.removeprefix("int8_")
        graph = report.fake_quant.get(key)
        cells = []
        for path in report.kernel_paths.values():
            measured = path.candidates[key]
            cell = f"{measured.estimated_accuracy:.4f}"
            if path.emulated:
                cell += f" ({measured.accuracy:.4f} on {path.samples}, {measured.disagreements} differ)"
            cells.append(cell)
        worst, accuracy = report.worst_path(strategy)
        cells.append(f"{accuracy:.4f} ({worst})")
        lines.append(
            f"| {strategy} | {f'{graph.accuracy:.4f}' if graph else '-'} | "
            f"{f'{graph.max_logit_error:.3f}' if graph else '-'} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    for path in report.kernel_paths.values():
        timing = f"; {path.samples} samples in {path.seconds:.0f} s" if path.emulated else ""
        lines.append(f"- {path.description}{timing}")
    native = report.kernel_paths[names[0]]
    subset = next((path.samples for path in report.kernel_paths.values() if path.emulated), 0)
    if subset:
        lines.append(
            f"- the {subset}-sample subset stands for the split: native accuracy on it vs on all "
            f"{native.samples}: "
            + ", ".join(
                f"{key.removeprefix('int8_')} {m.subset_accuracy:.4f} vs {m.accuracy:.4f}"
                for key, m in native.candidates.items()
            )
        )
    lines += [f"- {name}: not run ({reason})" for name, reason in report.skipped_paths.items()]
    return lines


def benchmark(
    dataset_dir: Path, model_dir: Path, export_dir: Path, out_dir: Path, settings: Settings
) -> BenchmarkReport:
    config = settings.benchmark
    exported = ExportedModels.load(export_dir)
    x_np, y_true = load_splits(dataset_dir)["test"]
    x = torch.from_numpy(x_np)
    classes = len(exported.spec.labels)

    started = time.perf_counter()
    _, eager = load_model(model_dir)
    eager_load_ms = (time.perf_counter() - started) * 1000
    files: dict[str, LoweredProgram] = {
        "fp32": exported.fp32,
        **{candidate_key(strategy): program for strategy, program in exported.candidates.items()},
    }
    # Hashed just before loading and checked again after timing: the hash is of the bytes measured.
    measured = {
        name: MeasuredProgram(file=program.file, sha256=sha256_file(export_dir / program.file))
        for name, program in files.items()
    }
    programs = {name: Program(export_dir / program.file) for name, program in files.items()}
    int8 = {name: export_dir / program.file for name, program in files.items() if name != "fp32"}
    subset = stratified_subset(y_true, settings.kernel_paths.samples)

    def eager_predict(sample: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return eager(sample)

    predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"eager": eager_predict, **programs}
    # The emulated paths run in the background (niced) while this process measures accuracy natively;
    # latency is timed only after they finish, on a quiet CPU.
    with start_emulated(int8, x_np[subset], out_dir / KERNEL_PATHS_DIR, settings.kernel_paths) as emulated:
        if emulated.paths:
            progress.report(
                f"kernel paths: running {len(int8)} INT8 programs on {len(subset)} samples under emulation: "
                + ", ".join(path.name for path in emulated.paths)
            )
        logits = {
            name: logits_of(eager, x).numpy() if name == "eager" else logits_each(predict, x).numpy()
            for name, predict in predictors.items()
        }
        fake_quant = {
            candidate_key(name): fake_quant_result(
                load_reference(export_dir / program.reference_file), logits[candidate_key(name)], x, y_true
            )
            for name, program in exported.candidates.items()
            if program.reference_file
        }
        emulated_logits = emulated.wait()
    native = native_path(HostCpu.read())
    paths = path_results({name: logits[name] for name in int8}, emulated_logits, subset, y_true, native)
    for name, path in paths.items():
        if path.emulated:
            progress.report(f"kernel paths: {name} took {path.seconds:.0f} s")

    samples = [x[i : i + 1] for i in range(len(x))]
    results = {}
    for index, (name, predict) in enumerate(predictors.items()):
        progress.report(f"timing {name} ({index + 1} of {len(predictors)} engines)", index, len(predictors))
        results[name] = RunnerResult(
            **classification(y_true, logits[name].argmax(axis=1), classes),
            # Single-sample calls, cycling through the test samples, after warm-up.
            latency=measure(predict, samples, config.warmup_runs, config.latency_runs).summary(),
            load_ms=eager_load_ms if name == "eager" else programs[name].load_ms,
            size_bytes=(model_dir / WEIGHTS_FILE).stat().st_size if name == "eager" else files[name].size_bytes,
        )
    offset_accuracy = (
        {
            strategy: {
                f"{offset:+.0f} Pa": float(
                    (predict_all(programs[candidate_key(strategy)], x + offset) == y_true).mean()
                )
                for offset in OFFSETS_PA
            }
            for strategy in exported.candidates
        }
        if exported.spec.architecture == Architecture.mat_mlp
        else {}
    )
    for program in measured.values():
        if sha256_file(export_dir / program.file) != program.sha256:
            raise VerificationError(
                f"{export_dir / program.file} changed while it was being benchmarked; re-run benchmark on this export"
            )
    report = BenchmarkReport(
        run_id=exported.run_id,
        dataset_version=exported.dataset_version,
        labels=exported.spec.labels,
        test_samples=len(y_true),
        results=results,
        programs=measured,
        offset_accuracy=offset_accuracy,
        native_path=native.name,
        kernel_paths=paths,
        skipped_paths=emulated.skipped,
        fake_quant=fake_quant,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    report.save(out_dir)
    markdown = render_report(report, exported)
    (out_dir / REPORT_FILE).write_text(markdown)

    import mlflow

    with tracking.resume_run(settings, exported.run_id):
        for name, r in results.items():
            mlflow.log_metrics(
                {
                    f"{name}_accuracy": r.accuracy,
                    f"{name}_precision": r.precision,
                    f"{name}_recall": r.recall,
                    f"{name}_f1": r.f1,
                    f"{name}_latency_p50_ms": r.latency.p50_ms,
                    f"{name}_latency_p95_ms": r.latency.p95_ms,
                    f"{name}_latency_p99_ms": r.latency.p99_ms,
                    f"{name}_load_ms": r.load_ms,
                }
            )
            mlflow.log_dict({"labels": report.labels, "matrix": r.confusion}, f"benchmark/confusion_{name}.json")
        for strategy in exported.candidates:
            key = candidate_key(strategy)
            mlflow.log_metric(f"{key}_accuracy_drop", report.accuracy_drop(strategy))
            for path_name, accuracy in report.path_accuracy(strategy).items():
                mlflow.log_metric(f"{key}_accuracy_path_{slug(path_name)}", accuracy)
            if key in fake_quant:
                mlflow.log_metrics(
                    {
                        f"{key}_fake_quant_accuracy": fake_quant[key].accuracy,
                        f"{key}_fake_quant_max_logit_error": fake_quant[key].max_logit_error,
                    }
                )
        for strategy, by_offset in offset_accuracy.items():
            for offset, accuracy in zip(OFFSETS_PA, by_offset.values(), strict=True):
                mlflow.log_metric(f"{candidate_key(strategy)}_accuracy_offset_{offset:.0f}pa", accuracy)
        mlflow.log_text(markdown, f"benchmark/{REPORT_FILE}")
        mlflow.log_dict(report.model_dump(mode="json"), f"benchmark/{INFO_FILE}")
    return report
