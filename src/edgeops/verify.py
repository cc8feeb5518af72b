"""Verify: fetch the INT8 program back from MLflow, prove it is the exported one, and apply the gates."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from edgeops import tracking
from edgeops.benchmark import BenchmarkReport
from edgeops.errors import GateError, VerificationError
from edgeops.export import ExportedModels
from edgeops.ingest import load_splits
from edgeops.model import ModelSpec
from edgeops.records import StageRecord
from edgeops.runtime import Program
from edgeops.settings import GateConfig, Settings
from edgeops.storage import sha256_file

INFO_FILE = "verified.json"
MODEL_FILE = "model.pte"


class Gate(BaseModel):
    name: str
    value: float
    limit: float
    passed: bool

    def describe(self) -> str:
        relation = ">=" if self.name.startswith("min") else "<="
        verdict = "passed" if self.passed else f"FAILED by {abs(self.value - self.limit):.4g}"
        return f"{self.name}: {self.value:.4g} (must be {relation} {self.limit:.4g}) {verdict}"


class VerifiedModel(StageRecord):
    """The INT8 program that passed every check, with what promotion publishes about it."""

    record_file = INFO_FILE

    spec: ModelSpec
    dataset_version: str
    run_id: str
    file: str
    sha256: str
    size_bytes: int
    artifact_path: str
    gates: list[Gate]
    metrics: dict[str, float]
    # Published with the release: a device smoke-tests the model by reproducing this output.
    reference_input: list[Any]
    reference_output: list[Any]


def evaluate_gates(report: BenchmarkReport, size_bytes: int, gates: GateConfig) -> list[Gate]:
    int8 = report.results["int8"]
    checks = [
        ("min_int8_accuracy", int8.accuracy, gates.min_int8_accuracy),
        ("max_int8_accuracy_drop", report.int8_accuracy_drop, gates.max_int8_accuracy_drop),
        ("max_int8_p95_ms", int8.latency.p95_ms, gates.max_int8_p95_ms),
        ("max_int8_size_bytes", float(size_bytes), float(gates.max_int8_size_bytes)),
    ]
    return [
        Gate(name=name, value=value, limit=limit, passed=value >= limit if name.startswith("min") else value <= limit)
        for name, value, limit in checks
    ]


def verify(
    dataset_dir: Path, export_dir: Path, benchmark_dir: Path, out_dir: Path, settings: Settings
) -> VerifiedModel:
    exported = ExportedModels.load(export_dir)
    report = BenchmarkReport.load(benchmark_dir)
    expected = exported.int8

    import mlflow

    with tracking.resume_run(settings, exported.run_id):
        recorded = mlflow.get_run(exported.run_id).data.tags.get("int8_sha256")
        if recorded != expected.sha256:
            raise VerificationError(f"MLflow run records int8 sha256 {recorded}, export produced {expected.sha256}")
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

        gates = evaluate_gates(report, downloaded_size := (out_dir / MODEL_FILE).stat().st_size, settings.gates)
        mlflow.log_metrics({f"gate_{gate.name}_passed": float(gate.passed) for gate in gates})
        failed = [gate for gate in gates if not gate.passed]
        mlflow.set_tag("verify", "failed gates" if failed else "passed")
        if failed:
            (out_dir / MODEL_FILE).unlink()
            raise GateError(
                "quality gate(s) failed, nothing will be promoted:\n" + "\n".join(f"  - {g.describe()}" for g in failed)
            )

    int8, fp32 = report.results["int8"], report.results["fp32"]
    verified = VerifiedModel(
        spec=exported.spec,
        dataset_version=exported.dataset_version,
        run_id=exported.run_id,
        file=MODEL_FILE,
        sha256=expected.sha256,
        size_bytes=downloaded_size,
        artifact_path=expected.artifact_path,
        gates=gates,
        metrics={
            "int8_accuracy": int8.accuracy,
            "fp32_accuracy": fp32.accuracy,
            "int8_f1": int8.f1,
            "int8_latency_p50_ms": int8.latency.p50_ms,
            "int8_latency_p95_ms": int8.latency.p95_ms,
            "test_windows": report.test_windows,
        },
        reference_input=sample.tolist(),
        reference_output=reference_output.tolist(),
    )
    verified.save(out_dir)
    return verified
