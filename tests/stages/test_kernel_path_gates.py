"""Gates judge each INT8 candidate on its worst CPU kernel path (unit tier: synthetic logits, no servers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeops.latency import Latency
from edgeops.models.nets import ModelSpec, PostureNet
from edgeops.quantize.kernel_paths import KernelPath, PathLogits
from edgeops.quantize.lowering import LoweredProgram
from edgeops.quantize.pt2e import depthwise_modules
from edgeops.settings import Architecture, Dataset, GateConfig, MatTrack, PmdTrack, QuantizeConfig, Strategy
from edgeops.stages.benchmark import BenchmarkReport, RunnerResult, path_results, slug
from edgeops.stages.export import PRUNED_PREFIX, Candidate, ExportedModels, candidate_names
from edgeops.stages.verify import evaluate_gates

LABELS = np.array([0, 1, 2] * 100)
SUBSET = np.arange(0, 300, 3)  # 100 samples, every class
NATIVE = KernelPath(name="native x86-64 (AVX-512)", arch="x86_64", features=("AVX2", "AVX-512 VNNI"))
ARM = "aarch64 cortex-a76 (qemu)"


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[labels] * 4.0


def emulated(logits: np.ndarray) -> PathLogits:
    path = KernelPath(name=ARM, arch="aarch64", features=("NEON", "dotprod"), cpu="cortex-a76")
    return PathLogits(path, {"int8_qat": logits}, len(logits), 60.0, 50.0, {"int8_qat": 5.0})


def report_with(accuracy_native: float, emulated_logits: np.ndarray) -> BenchmarkReport:
    native_logits = one_hot(LABELS)
    wrong = np.flatnonzero(np.arange(len(LABELS)) % 3)[: round((1 - accuracy_native) * len(LABELS))]  # not in SUBSET
    native_logits[wrong] = one_hot((LABELS[wrong] + 1) % 3)
    paths = path_results({"int8_qat": native_logits}, {ARM: emulated(emulated_logits)}, SUBSET, LABELS, NATIVE)
    result = RunnerResult(
        accuracy=accuracy_native,
        precision=1,
        recall=1,
        f1=1,
        confusion=[],
        latency=Latency(runs=1, p50_ms=0.1, p95_ms=0.2, p99_ms=0.3, mean_ms=0.1),
        load_ms=1,
        size_bytes=100,
    )
    fp32 = result.model_copy(update={"accuracy": 1.0})
    return BenchmarkReport(
        run_id="r",
        dataset_version="v",
        labels=["a", "b", "c"],
        test_samples=len(LABELS),
        results={"fp32": fp32, "int8_qat": result},
        programs={},
        native_path=NATIVE.name,
        kernel_paths=paths,
    )


def exported(parameters: int = 100) -> ExportedModels:
    program = LoweredProgram(
        file="f", sha256="0" * 64, size_bytes=400, delegated_ops=1, non_delegated_ops=0, artifact_path="a"
    )
    candidate = Candidate(**program.model_dump(), strategy=Strategy.qat, description="d", parameters=parameters)
    spec = ModelSpec(
        architecture=Architecture.mobilenet_v2,
        dataset=Dataset.pmd,
        labels=["a", "b", "c"],
        input_shape=[1, 1, 64, 32],
        input_units="raw",
        input_layout="NCHW",
    )
    return ExportedModels(
        spec=spec,
        dataset_version="v",
        run_id="r",
        parameters=1000,
        fp32=program.model_copy(update={"size_bytes": 4000}),
        candidates={"qat": candidate},
        calibration_samples=1,
    )


def test_an_emulated_path_that_agrees_with_native_keeps_the_native_accuracy() -> None:
    report = report_with(0.99, one_hot(LABELS[SUBSET]))
    arm = report.kernel_paths[ARM].candidates["int8_qat"]
    # The subset holds none of the three natively-wrong samples: on it both paths are perfect.
    assert arm.accuracy == 1.0 and arm.disagreements == 0
    assert arm.estimated_accuracy == pytest.approx(0.99)
    assert report.worst_path("qat") == (NATIVE.name, pytest.approx(0.99))


def test_the_worst_path_decides_the_accuracy_gates_and_is_named() -> None:
    on_arm = one_hot(LABELS[SUBSET])
    on_arm[:4] = one_hot((LABELS[SUBSET][:4] + 1) % 3)  # 4 of 100 flip on the aarch64 kernels
    report = report_with(1.0, on_arm)
    assert report.kernel_paths[ARM].candidates["int8_qat"].disagreements == 4
    assert report.worst_path("qat") == (ARM, pytest.approx(0.96))
    assert report.accuracy_drop("qat") == pytest.approx(0.04)
    gates = {gate.name: gate for gate in evaluate_gates(report, exported(), "qat", 400, GateConfig())}
    assert not gates["min_int8_accuracy"].passed and gates["min_int8_accuracy"].measured_on == ARM
    assert f"on {ARM}" in gates["max_int8_accuracy_drop"].describe()
    assert gates["max_int8_p95_ms"].measured_on == ""


def test_bytes_per_parameter_count_the_candidates_own_parameters() -> None:
    report = report_with(1.0, one_hot(LABELS[SUBSET]))
    gates = GateConfig(max_int8_bytes_per_param=1.15)
    pruned = {gate.name: gate for gate in evaluate_gates(report, exported(parameters=200), "qat", 400, gates)}
    assert pruned["max_int8_bytes_per_param"].value == 2.0 and not pruned["max_int8_bytes_per_param"].passed


def test_without_measured_paths_the_native_result_stands() -> None:
    report = report_with(0.99, one_hot(LABELS[SUBSET])).model_copy(update={"kernel_paths": {}})
    assert report.worst_path("qat") == (NATIVE.name, 0.99)


def test_path_names_become_metric_names() -> None:
    assert slug(ARM) == "aarch64_cortex_a76_qemu"
    assert slug("x86-64 Haswell, no AVX-512 (qemu)") == "x86_64_haswell_no_avx_512_qemu"


def test_the_pruned_candidate_is_built_for_mobilenet_only_and_can_be_switched_off() -> None:
    config, pmd, mat = QuantizeConfig(), PmdTrack(), MatTrack()
    assert candidate_names(pmd, config)[-1] == PRUNED_PREFIX + config.prune_strategy
    assert not any(name.startswith(PRUNED_PREFIX) for name in candidate_names(mat, config))
    off = config.model_copy(update={"prune_keep": 0.0})
    assert candidate_names(pmd, off) == [str(s) for s in pmd.strategies]


def test_each_track_builds_its_own_strategies() -> None:
    """PMD builds per-tensor PTQ only (chosen on leave-one-subject-out), plus the pruned network by the same."""
    assert candidate_names(MatTrack(), QuantizeConfig()) == [str(s) for s in Strategy]
    assert candidate_names(PmdTrack(), QuantizeConfig()) == ["ptq_per_tensor", "pruned_ptq_per_tensor"]


def test_depthwise_convolutions_are_found_by_their_owning_module() -> None:
    names = depthwise_modules(PostureNet(3, 4095.0, 0.5))
    assert len(names) == 17 and all(name.startswith("network.features.") for name in names)
    # The first block has no expansion: its depthwise conv is the block's first layer.
    assert names[0] == "network.features.1.conv.0"
    assert depthwise_modules(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 8, 1))) == []
