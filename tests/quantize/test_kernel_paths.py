"""CPU kernel paths: which apply and why not (fast), and emulated INT8 logits against native ones (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeops.quantize import kernel_paths as kp
from edgeops.quantize.kernel_paths import (
    EmulationError,
    HostCpu,
    KernelPathConfig,
    emulated_path,
    kernel_paths,
    run_native,
    start_emulated,
    stratified_subset,
)

AVX512_HOST = HostCpu("x86_64", frozenset({"sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw"}))
AVX2_HOST = HostCpu("x86_64", frozenset({"sse4_1", "avx", "avx2", "fma", "f16c"}))
ARM_HOST = HostCpu("aarch64", frozenset({"fp", "asimd", "asimdhp", "asimddp"}))
AARCH64 = "aarch64 cortex-a76 (qemu)"
HASWELL = "x86-64 Haswell, no AVX-512 (qemu)"


# --- stratified_subset ---------------------------------------------------------------------------------------


def test_the_subset_keeps_each_class_share_and_is_fixed() -> None:
    labels = np.repeat(np.array([2, 0, 1]), [500, 300, 200])[np.random.default_rng(0).permutation(1000)]
    picked = stratified_subset(labels, 100)
    assert len(picked) == 100 and len(np.unique(picked)) == 100
    assert np.all(np.diff(picked) > 0)  # sorted
    assert np.bincount(labels[picked]).tolist() == [30, 20, 50]
    assert np.array_equal(picked, stratified_subset(labels.copy(), 100))


def test_the_subset_is_evenly_spaced_within_a_class() -> None:
    labels = np.zeros(100, dtype=np.int64)
    assert stratified_subset(labels, 4).tolist() == [12, 37, 62, 87]  # the middles of four runs of 25


def test_the_subset_rounds_shares_by_largest_remainder() -> None:
    labels = np.repeat(np.array([0, 1, 2]), [5, 3, 2])  # shares of 4: 2.0, 1.2, 0.8
    picked = stratified_subset(labels, 4)
    assert np.bincount(labels[picked], minlength=3).tolist() == [2, 1, 1]


def test_a_subset_as_large_as_the_set_is_all_of_it() -> None:
    labels = np.array([1, 0, 1])
    assert stratified_subset(labels, 3).tolist() == [0, 1, 2]
    assert stratified_subset(labels, 400).tolist() == [0, 1, 2]
    assert stratified_subset(labels, 0).tolist() == []


# --- which paths apply ---------------------------------------------------------------------------------------


@pytest.fixture
def qemu_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """Applicability without depending on this machine's qemu."""
    monkeypatch.setattr(kp, "find_qemu", lambda arch, preferred=None: f"/usr/bin/qemu-{arch}")


def test_without_the_runtime_aarch64_is_skipped_with_what_to_run(tmp_path: Path, qemu_present: None) -> None:
    paths = kernel_paths(KernelPathConfig(runtime_dir=tmp_path), AVX512_HOST)
    assert paths.native.name == "native x86-64 (AVX-512)"
    assert [path.name for path in paths.emulated] == [HASWELL]
    assert "no ready.json" in paths.skipped[AARCH64] and "make kernel-paths" in paths.skipped[AARCH64]


def test_a_runtime_for_another_executorch_is_skipped(tmp_path: Path, qemu_present: None) -> None:
    (tmp_path / "ready.json").write_text(
        json.dumps({"python": str(tmp_path), "site": str(tmp_path), "wheels": {"executorch": "0.1", "torch": "1.0"}})
    )
    reason = kernel_paths(KernelPathConfig(runtime_dir=tmp_path), AVX512_HOST).skipped[AARCH64]
    assert "executorch 0.1" in reason and "make kernel-paths" in reason


def test_without_avx512_native_already_is_the_avx2_path(tmp_path: Path, qemu_present: None) -> None:
    paths = kernel_paths(KernelPathConfig(runtime_dir=tmp_path), AVX2_HOST)
    assert paths.native.name == "native x86-64 (AVX2)"
    assert HASWELL in paths.skipped and "AVX2 path" in paths.skipped[HASWELL]
    assert "no AVX-512" in paths.skipped[HASWELL]


def test_on_an_aarch64_host_native_is_the_aarch64_path(tmp_path: Path, qemu_present: None) -> None:
    paths = kernel_paths(KernelPathConfig(runtime_dir=tmp_path), ARM_HOST)
    assert paths.native.name == "native aarch64 (dotprod)"
    assert paths.native.features == ("NEON", "FP16", "dotprod")
    assert paths.emulated == []
    assert "native path runs its aarch64 kernels" in paths.skipped[AARCH64]
    assert "x86-64 host" in paths.skipped[HASWELL]


def test_without_qemu_the_x86_path_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kp, "find_qemu", lambda arch, preferred=None: None)
    reason = kernel_paths(KernelPathConfig(runtime_dir=tmp_path), AVX512_HOST).skipped[HASWELL]
    assert "qemu-x86_64 >= 8" in reason and "make kernel-paths" in reason


def test_paths_describe_their_isa() -> None:
    assert emulated_path("aarch64:cortex-a76").describe() == "aarch64 cortex-a76 (qemu): NEON, FP16, dotprod"
    assert emulated_path("x86_64:Haswell").features == ("SSE4.1", "AVX", "AVX2", "FMA", "F16C")
    assert emulated_path("aarch64:some-new-core").features == ("qemu's some-new-core",)


def test_an_emulated_python_inherits_no_venv_or_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("VIRTUAL_ENV", "/work/main/.venv")
    monkeypatch.setenv("QEMU_CPU", "max")
    env = kp.guest_env(Path("/site"))
    assert env["PYTHONPATH"] == "/site" and env["PYTHONNOUSERSITE"] == "1"
    assert "VIRTUAL_ENV" not in env and "QEMU_CPU" not in env
    assert "PYTHONPATH" not in kp.guest_env(None)


def test_the_config_refuses_an_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="ARCH:QEMU_CPU_MODEL"):
        KernelPathConfig(emulated=["arm:cortex-a76"])


# --- emulated against native (slow: builds a program, imports torch under qemu) ------------------------------

ROWS, COLS, CLASSES = 8, 4, 3


def tiny_int8_program(directory: Path) -> Path:
    """A static-INT8 (per-channel PTQ) XNNPACK program with batch 1, as export builds them."""
    from edgeops.quantize.lowering import lower
    from edgeops.quantize.pt2e import ptq
    from edgeops.settings import Strategy

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * ROWS * COLS, CLASSES),
    ).eval()
    calibration = torch.from_numpy(frames(64, seed=1))
    quantized = ptq(model, Strategy.ptq_per_channel, calibration[:1], calibration)
    path = directory / "int8.pte"
    program = lower(quantized, calibration[:1], path, "executorch/int8.pte")
    assert program.non_delegated_ops <= 1, "all in XNNPACK (the one node outside reads the delegate's output)"
    return path


def frames(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, 1, ROWS, COLS)).astype(np.float32)


def require_runtime(config: KernelPathConfig) -> None:
    """The slow tier needs the aarch64 runtime: fail, never skip, without it (`make kernel-paths` installs it).

    Only an aarch64 host, where no path needs emulating, skips.
    """
    paths = kernel_paths(config)
    reason = paths.skipped.get(AARCH64, "")
    if kp.INSTALL_HINT in reason:
        pytest.fail(f"the aarch64 kernel path cannot run: {reason}")
    if not paths.emulated:
        pytest.skip(f"no emulated path applies on this host: {paths.skipped}")


@pytest.mark.slow
def test_every_emulated_path_computes_the_native_int8_logits(tmp_path: Path) -> None:
    config = KernelPathConfig(timeout_s=1200)
    require_runtime(config)
    program = tiny_int8_program(tmp_path)
    labels = np.random.default_rng(2).integers(0, CLASSES, 200)
    inputs = frames(200, seed=3)[stratified_subset(labels, 48)]
    with start_emulated({"int8": program}, inputs, tmp_path / "emulated", config) as runs:
        native = run_native({"int8": program}, inputs)  # while the emulated paths import
        emulated = runs.wait()
    assert all(process.poll() is not None for process in runs.processes)
    assert set(emulated) == {path.name for path in runs.paths}
    expected = native.logits["int8"]
    assert expected.shape == (48, CLASSES)
    step = float(np.ptp(expected)) / 255  # about one step of the INT8 output
    print(f"\n{native.path.describe()}: {native.call_ms['int8']:.3f} ms/call")
    for name, result in emulated.items():
        actual = result.logits["int8"]
        assert actual.shape == expected.shape and result.samples == 48
        np.testing.assert_allclose(actual, expected, rtol=0, atol=step, err_msg=name)
        assert np.array_equal(actual.argmax(1), expected.argmax(1)), name
        difference = float(np.abs(actual - expected).max())
        print(
            f"{result.path.describe()}: "
            + ("bit-identical to native" if np.array_equal(actual, expected) else f"max |diff| {difference:.3g}")
            + f"; imports {result.import_s:.1f} s, {result.call_ms['int8']:.3f} ms/call, run {result.seconds:.1f} s"
        )
    for name, reason in runs.skipped.items():
        print(f"{name}: skipped, {reason}")


@pytest.mark.slow
def test_a_broken_program_fails_the_emulated_runs_naming_it(tmp_path: Path) -> None:
    config = KernelPathConfig(timeout_s=1200)
    require_runtime(config)
    broken = tmp_path / "broken.pte"
    broken.write_bytes(b"not an ExecuTorch program " * 64)
    good = tiny_int8_program(tmp_path)
    with (
        start_emulated({"good": good, "broken": broken}, frames(4, seed=4), tmp_path / "emulated", config) as runs,
        pytest.raises(EmulationError, match=r"broken\.pte: ExecuTorch cannot load it"),
    ):
        runs.wait()
    assert all(process.poll() is not None for process in runs.processes)  # the other path was stopped too


@pytest.mark.slow
def test_a_timeout_or_an_error_stops_the_emulated_processes(tmp_path: Path) -> None:
    config = KernelPathConfig(emulated=["aarch64:cortex-a76"], timeout_s=3)
    require_runtime(config)
    program = tmp_path / "never-loaded.pte"
    program.write_bytes(b"x")
    with start_emulated({"p": program}, frames(2, seed=5), tmp_path / "timeout", config) as runs:
        assert runs.paths and all(process.poll() is None for process in runs.processes)
        with pytest.raises(EmulationError, match=r"no result after 3 s \(kernel_paths\.timeout_s\)"):
            runs.wait()
    assert all(process.poll() is not None for process in runs.processes)
    with (
        pytest.raises(RuntimeError, match="native work failed"),
        start_emulated({"p": program}, frames(2, seed=5), tmp_path / "error", config) as runs,
    ):
        raise RuntimeError("native work failed")
    assert runs.processes and all(process.poll() is not None for process in runs.processes)


def test_the_installer_takes_the_requirements_whose_markers_hold_on_aarch64() -> None:
    """What `make kernel-paths` installs beside torch is read from torch's own aarch64 metadata."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("emulated_runtime", REPO / "scripts" / "emulated_runtime.py")
    assert spec is not None and spec.loader is not None
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    metadata = "\n".join(
        [
            "Name: torch",
            "Requires-Dist: filelock",
            'Requires-Dist: nvidia-cudnn-cu13==9.1; platform_system == "Linux" and platform_machine == "aarch64"',
            'Requires-Dist: intel-openmp; platform_machine == "x86_64"',
            'Requires-Dist: cuda-toolkit[cublas,cudart]==13.0; platform_system == "Linux"',
            'Requires-Dist: opt-einsum>=3.3; extra == "opt-einsum"',
            'Requires-Dist: triton==3.4; python_version < "3.14" and platform_machine == "aarch64"',
        ]
    )
    assert installer.requirements(metadata, set()) == {
        "filelock": set(),
        "nvidia-cudnn-cu13": set(),
        "cuda-toolkit": {"cublas", "cudart"},
        "triton": set(),
    }
    assert "opt-einsum" in installer.requirements(metadata, {"opt-einsum"})
