"""Benchmark: accuracy and latency of the eager model, the FP32 `.pte` and every INT8 candidate on the test split."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from edgeops.datasets.base import load_splits
from edgeops.errors import VerificationError
from edgeops.files import sha256_file
from edgeops.latency import Latency, measure
from edgeops.models.training import logits_of
from edgeops.quantize.lowering import LoweredProgram
from edgeops.records import StageRecord
from edgeops.runtime import Program
from edgeops.settings import Architecture, Settings
from edgeops.stack import tracking
from edgeops.stages.export import ExportedModels
from edgeops.stages.train import WEIGHTS_FILE, load_model

INFO_FILE = "benchmark.json"
REPORT_FILE = "report.md"
OFFSETS_PA = (-1000.0, 1000.0)  # mat track: common offset of the order weather adds


def candidate_key(strategy: str) -> str:
    return f"int8_{strategy}"


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

    def accuracy_drop(self, strategy: str) -> float:
        return self.results["fp32"].accuracy - self.results[candidate_key(strategy)].accuracy


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


def predict_all(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    """One sample per call, as on a device (the `.pte` programs have batch 1)."""
    return np.array([int(predict(x[i : i + 1]).argmax(dim=1)) for i in range(len(x))])


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
    if report.offset_accuracy:
        lines += ["", "INT8 accuracy with a common pressure offset (weather moves every chamber together):", ""]
        lines += [
            f"- {name}: " + ", ".join(f"{offset} {accuracy:.4f}" for offset, accuracy in by_offset.items())
            for name, by_offset in report.offset_accuracy.items()
        ]
    lines += ["", "Confusion matrices (rows: true, columns: predicted, order " + ", ".join(report.labels) + "):", ""]
    lines += [f"- {name}: {r.confusion}" for name, r in report.results.items()]
    return "\n".join(lines) + "\n"


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

    def eager_predict(sample: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return eager(sample)

    predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"eager": eager_predict, **programs}
    samples = [x[i : i + 1] for i in range(len(x))]
    results = {}
    for name, predict in predictors.items():
        predicted = logits_of(eager, x).argmax(dim=1).numpy() if name == "eager" else predict_all(predict, x)
        results[name] = RunnerResult(
            **classification(y_true, predicted, classes),
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
            mlflow.log_metric(f"{candidate_key(strategy)}_accuracy_drop", report.accuracy_drop(strategy))
        for strategy, by_offset in offset_accuracy.items():
            for offset, accuracy in zip(OFFSETS_PA, by_offset.values(), strict=True):
                mlflow.log_metric(f"{candidate_key(strategy)}_accuracy_offset_{offset:.0f}pa", accuracy)
        mlflow.log_text(markdown, f"benchmark/{REPORT_FILE}")
        mlflow.log_dict(report.model_dump(mode="json"), f"benchmark/{INFO_FILE}")
    return report
