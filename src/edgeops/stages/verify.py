"""Verify: pick the INT8 candidate to promote, fetch it back from MLflow, prove it is the exported one.

Every candidate is judged against the gates; of those that pass, the smallest wins (sizes within
settings.quantize.size_tolerance count as equal, and then the fastest p50 wins). Why each candidate
won or lost is recorded with the run. Nothing is judged unless the benchmark's record names the
run, dataset version and program hashes of the very export being verified.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from edgeops.datasets.base import load_splits
from edgeops.errors import GateError, VerificationError
from edgeops.files import sha256_file
from edgeops.models.nets import ModelSpec
from edgeops.records import StageRecord
from edgeops.runtime import Program
from edgeops.settings import GateConfig, Settings
from edgeops.stack import tracking
from edgeops.stages.benchmark import INFO_FILE as BENCHMARK_FILE
from edgeops.stages.benchmark import BenchmarkReport, candidate_key, slug
from edgeops.stages.export import INFO_FILE as EXPORT_FILE
from edgeops.stages.export import ExportedModels

INFO_FILE = "verified.json"
MODEL_FILE = "model.pte"
CANDIDATES_ARTIFACT = "verify/candidates.json"
PATH_METRIC = "int8_accuracy_path_"  # + the kernel path's slug: the chosen program's accuracy on that path


class Gate(BaseModel):
    name: str
    value: float
    limit: float
    passed: bool
    measured_on: str = ""  # accuracy gates: the CPU kernel path the value comes from (the worst one)

    def describe(self) -> str:
        relation = ">=" if self.name.startswith("min") else "<="
        verdict = "passed" if self.passed else f"FAILED by {abs(self.value - self.limit):.4g}"
        where = f" on {self.measured_on}" if self.measured_on else ""
        return f"{self.name}: {self.value:.4g}{where} (must be {relation} {self.limit:.4g}) {verdict}"


class CandidateVerdict(BaseModel):
    strategy: str
    description: str
    size_bytes: int
    p50_ms: float
    accuracy: float
    gates: list[Gate]
    chosen: bool = False
    reason: str = ""

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)


class VerifiedModel(StageRecord):
    """The INT8 program that passed every check, with what promotion publishes about it."""

    record_file = INFO_FILE

    spec: ModelSpec
    dataset_version: str
    run_id: str
    model_name: str = ""
    strategy: str
    quantization: str  # the chosen candidate's description
    candidates: list[CandidateVerdict]
    file: str
    sha256: str
    size_bytes: int
    artifact_path: str
    gates: list[Gate]
    metrics: dict[str, float]
    # Published with the release: a device smoke-tests the model by reproducing this output.
    reference_input: list[Any]
    reference_output: list[Any]


def measured_export(benchmark_dir: Path, export_dir: Path, exported: ExportedModels) -> BenchmarkReport:
    """The benchmark record, refused unless it measured this very export.

    A benchmark directory left from another export would otherwise pass that export's numbers
    off as these programs'.
    """
    rerun = f"Re-run benchmark on this export ({export_dir}), then verify again."
    try:
        report = BenchmarkReport.load(benchmark_dir)
    except ValidationError as error:
        missing = sorted(
            {str(problem["loc"][0]) for problem in error.errors() if problem["type"] == "missing" and problem["loc"]}
            & {"run_id", "dataset_version", "programs"}
        )
        if not missing:
            raise VerificationError(f"{benchmark_dir / BENCHMARK_FILE} is not a benchmark record: {error}") from None
        raise VerificationError(
            f"{benchmark_dir / BENCHMARK_FILE} has no {', '.join(missing)}: it was written before benchmarks "
            f"recorded which export they measured, so its numbers cannot be tied to {export_dir}. {rerun}"
        ) from None
    exported_programs = {
        "fp32": exported.fp32,
        **{candidate_key(strategy): program for strategy, program in exported.candidates.items()},
    }
    compared: list[tuple[str, str, str]] = [
        ("run_id", report.run_id, exported.run_id),
        ("dataset_version", report.dataset_version, exported.dataset_version),
    ]
    for name in dict.fromkeys([*exported_programs, *report.programs]):
        benchmarked, produced = report.programs.get(name), exported_programs.get(name)
        compared.append(
            (
                f"programs.{name}.sha256",
                benchmarked.sha256 if benchmarked else "(not measured)",
                produced.sha256 if produced else "(not exported)",
            )
        )
    differences = [
        f"  - {field} differs: {benchmark_value} in {benchmark_dir / BENCHMARK_FILE}, "
        f"{export_value} in {export_dir / EXPORT_FILE}"
        for field, benchmark_value, export_value in compared
        if benchmark_value != export_value
    ]
    if differences:
        raise VerificationError(
            f"the benchmark in {benchmark_dir} did not measure the export in {export_dir}:\n"
            + "\n".join(differences)
            + f"\n{rerun}"
        )
    return report


def evaluate_gates(
    report: BenchmarkReport, exported: ExportedModels, strategy: str, size_bytes: int, gates: GateConfig
) -> list[Gate]:
    """Accuracy gates judge the candidate on its worst CPU kernel path; bytes per parameter count the
    candidate's own parameters (a pruned network has fewer)."""
    int8 = report.results[candidate_key(strategy)]
    worst_path, worst_accuracy = report.worst_path(strategy)
    checks = [
        ("min_int8_accuracy", worst_accuracy, gates.min_int8_accuracy, worst_path),
        ("max_int8_accuracy_drop", report.accuracy_drop(strategy), gates.max_int8_accuracy_drop, worst_path),
        ("max_int8_p95_ms", int8.latency.p95_ms, gates.max_int8_p95_ms, ""),
        ("max_int8_size_bytes", float(size_bytes), float(gates.max_int8_size_bytes), ""),
        ("min_int8_size_ratio", exported.fp32.size_bytes / size_bytes, gates.min_int8_size_ratio, ""),
    ]
    if gates.max_int8_bytes_per_param:
        parameters = exported.candidates[strategy].parameters
        checks.append(("max_int8_bytes_per_param", size_bytes / parameters, gates.max_int8_bytes_per_param, ""))
    return [
        Gate(name=n, value=value, limit=limit, passed=passes(n, value, limit), measured_on=path)
        for n, value, limit, path in checks
    ]


def passes(gate: str, value: float, limit: float) -> bool:
    """`min_*` gates are lower bounds, `max_*` upper bounds."""
    return value >= limit if gate.startswith("min") else value <= limit


def gate_limits(gates: GateConfig) -> dict[str, float]:
    """Every gate verify checks, with its limit (bytes per parameter only when set)."""
    limits = {name: float(limit) for name, limit in gates.model_dump().items()}
    if not gates.max_int8_bytes_per_param:
        del limits["max_int8_bytes_per_param"]
    return limits


def choose(
    report: BenchmarkReport, exported: ExportedModels, gates: GateConfig, size_tolerance: float
) -> list[CandidateVerdict]:
    """Judge every candidate; mark the one to promote and say why each other one was not."""
    verdicts = [
        CandidateVerdict(
            strategy=strategy,
            description=program.description,
            size_bytes=program.size_bytes,
            p50_ms=report.results[candidate_key(strategy)].latency.p50_ms,
            accuracy=report.worst_path(strategy)[1],
            gates=evaluate_gates(report, exported, strategy, program.size_bytes, gates),
        )
        for strategy, program in exported.candidates.items()
    ]
    passing = [verdict for verdict in verdicts if verdict.passed]
    for verdict in verdicts:
        if not verdict.passed:
            failed = [gate.describe() for gate in verdict.gates if not gate.passed]
            verdict.reason = "failed " + "; ".join(failed)
    if not passing:
        return verdicts
    smallest = min(verdict.size_bytes for verdict in passing)
    small_enough = [verdict for verdict in passing if verdict.size_bytes <= smallest * (1 + size_tolerance)]
    winner = min(small_enough, key=lambda verdict: verdict.p50_ms)
    winner.chosen = True
    winner.reason = (
        f"passed every gate; smallest ({winner.size_bytes:,} bytes"
        + (f", {len(small_enough) - 1} other(s) within {size_tolerance:.0%})" if len(small_enough) > 1 else ")")
        + f" and fastest of those (p50 {winner.p50_ms:.3f} ms)"
    )
    for verdict in passing:
        if verdict is winner:
            continue
        if verdict in small_enough:
            verdict.reason = f"passed, as small, but slower: p50 {verdict.p50_ms:.3f} ms vs {winner.p50_ms:.3f} ms"
        else:
            verdict.reason = f"passed, but larger: {verdict.size_bytes:,} bytes vs {winner.size_bytes:,}"
    return verdicts


def describe(verdicts: list[CandidateVerdict]) -> str:
    return "\n".join(
        f"  - {verdict.strategy}{' (chosen)' if verdict.chosen else ''}: {verdict.reason}" for verdict in verdicts
    )


def verify(
    dataset_dir: Path,
    export_dir: Path,
    benchmark_dir: Path,
    out_dir: Path,
    settings: Settings,
    gates: GateConfig | None = None,
) -> VerifiedModel:
    """`gates` default to the gates of the track the model was trained for."""
    exported = ExportedModels.load(export_dir)
    report = measured_export(benchmark_dir, export_dir, exported)
    gates = gates or settings.track(exported.spec.dataset).gates

    import mlflow

    with tracking.resume_run(settings, exported.run_id):
        verdicts = choose(report, exported, gates, settings.quantize.size_tolerance)
        mlflow.log_dict([verdict.model_dump(mode="json") for verdict in verdicts], CANDIDATES_ARTIFACT)
        for verdict in verdicts:
            key = candidate_key(verdict.strategy)
            mlflow.log_metrics({f"gate_{key}_{gate.name}_passed": float(gate.passed) for gate in verdict.gates})
        chosen = next((verdict for verdict in verdicts if verdict.chosen), None)
        if chosen is None:
            mlflow.set_tag("verify", "failed gates")
            raise GateError(
                "no INT8 candidate passed the quality gates, nothing will be promoted:\n" + describe(verdicts)
            )
        expected = exported.candidates[chosen.strategy]
        recorded = mlflow.get_run(exported.run_id).data.tags.get(f"{chosen.strategy}_sha256")
        if recorded != expected.sha256:
            raise VerificationError(
                f"MLflow run records {chosen.strategy} sha256 {recorded}, export produced {expected.sha256}"
            )
        with tempfile.TemporaryDirectory() as scratch:
            downloaded = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=exported.run_id, artifact_path=expected.artifact_path, dst_path=scratch
                )
            )
            actual = sha256_file(downloaded)
            if actual != expected.sha256:
                mlflow.set_tag("verify", "hash mismatch")
                raise VerificationError(
                    f"{expected.artifact_path} from MLflow has sha256 {actual}, export recorded {expected.sha256}"
                )
            sample = torch.from_numpy(load_splits(dataset_dir)["test"][0][:1])
            program = Program(downloaded)
            program.check(exported.spec.input_shape, exported.spec.output_shape, sample)
            reference_output = program(sample)
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(downloaded, out_dir / MODEL_FILE)

        int8, fp32 = report.results[candidate_key(chosen.strategy)], report.results["fp32"]
        worst_path, worst_accuracy = report.worst_path(chosen.strategy)
        metrics = {
            "int8_accuracy": int8.accuracy,  # native, on the whole test split
            "int8_accuracy_worst_path": worst_accuracy,
            "fp32_accuracy": fp32.accuracy,
            "eager_accuracy": report.results["eager"].accuracy,
            "int8_accuracy_drop": report.accuracy_drop(chosen.strategy),
            "int8_f1": int8.f1,
            "int8_latency_p50_ms": int8.latency.p50_ms,
            "int8_latency_p95_ms": int8.latency.p95_ms,
            "fp32_latency_p50_ms": fp32.latency.p50_ms,
            "int8_size_bytes": expected.size_bytes,
            "fp32_size_bytes": exported.fp32.size_bytes,
            "int8_bytes_per_param": expected.size_bytes / expected.parameters,
            "parameters": expected.parameters,
            "test_samples": report.test_samples,
        }
        # Every kernel path's figure travels with the release (which ones ran, and the worst, are in the report).
        metrics |= {
            f"int8_accuracy_path_{slug(path)}": value for path, value in report.path_accuracy(chosen.strategy).items()
        }
        if report.fake_quant.get(candidate_key(chosen.strategy)):
            metrics["int8_fake_quant_accuracy"] = report.fake_quant[candidate_key(chosen.strategy)].accuracy
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {
                "verify": "passed",
                "int8_strategy": chosen.strategy,
                "int8_sha256": expected.sha256,
                "int8_worst_kernel_path": worst_path,
            }
        )
        print("INT8 candidates:\n" + describe(verdicts))

    verified = VerifiedModel(
        spec=exported.spec,
        dataset_version=exported.dataset_version,
        run_id=exported.run_id,
        model_name=exported.model_name,
        strategy=chosen.strategy,
        quantization=chosen.description,
        candidates=verdicts,
        file=MODEL_FILE,
        sha256=expected.sha256,
        size_bytes=expected.size_bytes,
        artifact_path=expected.artifact_path,
        gates=chosen.gates,
        metrics=metrics,
        reference_input=sample.tolist(),
        reference_output=reference_output.tolist(),
    )
    verified.save(out_dir)
    return verified
