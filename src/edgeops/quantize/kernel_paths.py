"""The CPU kernel paths an INT8 program's accuracy is measured on here, and running the emulated ones.

XNNPACK picks its kernels from the CPU it runs on (NEON dotprod on phones, AVX2 or AVX-512 VNNI on x86), and
INT8 arithmetic may round differently between them: accuracy measured natively is one path's. The emulated
paths run the same programs under qemu-user on a CPU model: aarch64 (a Debian arm64 python3.11 and aarch64
wheels, installed outside the repository by `make kernel-paths`) and x86-64 without AVX-512 (the venv's own
python under `qemu-x86_64 -cpu Haswell`). Emulation is slow (imports take about a minute, INT8 calls 100x
native), so it runs on a fixed subset (`stratified_subset`) in background processes (`start_emulated`) while
the caller does its native work.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType

import numpy as np

from edgeops.errors import EdgeopsError
from edgeops.quantize import path_runner
from edgeops.settings import KernelPathConfig

RUNNER = Path(path_runner.__file__)
MIN_QEMU = 8  # bookworm's qemu 7.2 computed wrong INT8 with some CPU models
NICE = 5  # emulated processes yield the CPU (2 cores here) to native work
STOP_GRACE_S = 5.0
INSTALL_HINT = "run `make kernel-paths`"
# Harmless lines in an emulated run's log, left out of error messages.
NOISE = re.compile(
    r"\[cpuinfo_utils\.cpp:\d+\]"  # ExecuTorch reading MIDR files qemu does not provide
    r"|Can't open MIDR_EL1 sysfs entry"  # the same, from oneDNN's xbyak_aarch64
    r"|triton not found"
    r"|_pytree\.py:\d+\].*(deprecated|register_constant)"
    r"|TCG doesn't support requested feature"  # qemu's Haswell lists TSX, which TCG lacks
)
LOG_TAIL_LINES = 25

# What XNNPACK dispatches on, by /proc/cpuinfo flag, in the order shown.
X86_FEATURES = {
    "sse4_1": "SSE4.1",
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512dq": "AVX-512DQ",
    "avx512vl": "AVX-512VL",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_int8": "AMX-INT8",
}
AARCH64_FEATURES = {
    "asimd": "NEON",
    "asimdhp": "FP16",
    "asimddp": "dotprod",
    "i8mm": "I8MM",
    "bf16": "BF16",
    "sve": "SVE",
    "sve2": "SVE2",
    "sme": "SME",
}
# qemu CPU models: the ISA features they give XNNPACK (TCG implements no AVX-512, so no x86 model here has it).
_AVX2 = ("SSE4.1", "AVX", "AVX2", "FMA", "F16C")
X86_MODELS: dict[str, tuple[str, ...]] = {
    "qemu64": ("SSE2",),
    "Nehalem": ("SSE4.1",),
    "Westmere": ("SSE4.1",),
    "SandyBridge": ("SSE4.1", "AVX"),
    "IvyBridge": ("SSE4.1", "AVX", "F16C"),
    **{model: _AVX2 for model in ("Haswell", "Haswell-noTSX", "Broadwell", "Broadwell-noTSX", "Skylake-Client")},
}
_V82 = ("NEON", "FP16", "dotprod")
AARCH64_MODELS: dict[str, tuple[str, ...]] = {
    "cortex-a53": ("NEON",),
    "cortex-a57": ("NEON",),
    "cortex-a72": ("NEON",),
    "cortex-a55": _V82,
    "cortex-a76": _V82,
    "neoverse-n1": _V82,
    "neoverse-v1": (*_V82, "I8MM", "BF16", "SVE"),
    "cortex-a710": (*_V82, "I8MM", "BF16", "SVE", "SVE2"),
    "neoverse-n2": (*_V82, "I8MM", "BF16", "SVE", "SVE2"),
    "max": (*_V82, "I8MM", "BF16", "SVE", "SVE2", "SME"),
}


@dataclass(frozen=True)
class HostCpu:
    """This machine's CPU, as XNNPACK sees it."""

    arch: str  # "x86_64" or "aarch64"
    flags: frozenset[str]  # /proc/cpuinfo `flags` (x86) or `Features` (aarch64)
    model: str = ""

    @classmethod
    def read(cls) -> HostCpu:
        machine = platform.machine().lower()
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        flags: set[str] = set()
        model = ""
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("flags", "Features") and not flags:
                flags = set(value.split())
            elif name == "model name" and not model:
                model = value.strip()
        return cls(arch, frozenset(flags), model)


@dataclass(frozen=True)
class KernelPath:
    """One CPU kernel path: the native CPU, or a qemu CPU model."""

    name: str  # e.g. "native x86-64 (AVX-512)", "aarch64 cortex-a76 (qemu)"
    arch: str
    features: tuple[str, ...]  # the ISA features XNNPACK's kernels depend on
    cpu: str | None = None  # the qemu -cpu model; None for native

    @property
    def emulated(self) -> bool:
        return self.cpu is not None

    def describe(self) -> str:
        return f"{self.name}: {', '.join(self.features) or 'baseline ISA'}"


@dataclass
class KernelPaths:
    """The native path, the emulated paths that apply here, and why the others do not."""

    native: KernelPath
    emulated: list[KernelPath]
    skipped: dict[str, str]  # path name -> reason


@dataclass
class PathLogits:
    """Every program's outputs on one path, and what the run cost."""

    path: KernelPath
    logits: dict[str, np.ndarray]  # program name -> [samples, ...]
    samples: int
    seconds: float  # wall time of the whole run, imports included
    import_s: float  # numpy, torch and ExecuTorch's runtime extension (most of an emulated run's start-up)
    call_ms: dict[str, float]  # program name -> median milliseconds per call (emulated: not a device latency)


class KernelPathError(EdgeopsError):
    """A program did not run on a kernel path."""


class EmulationError(KernelPathError):
    """An emulated path failed or timed out; the message has the end of its log."""


def native_path(host: HostCpu | None = None) -> KernelPath:
    """This machine's path (`host` overrides the CPU read from /proc/cpuinfo)."""
    host = host or HostCpu.read()
    if host.arch == "aarch64":
        features = tuple(label for flag, label in AARCH64_FEATURES.items() if flag in host.flags)
        tier = next((t for t in ("I8MM", "dotprod", "NEON") if t in features), "no NEON")
        return KernelPath(f"native aarch64 ({tier})", host.arch, features)
    features = tuple(label for flag, label in X86_FEATURES.items() if flag in host.flags)
    if host.arch != "x86_64":
        return KernelPath(f"native {host.arch}", host.arch, features)
    return KernelPath(f"native x86-64 ({x86_tier(features)})", host.arch, features)


def x86_tier(features: tuple[str, ...]) -> str:
    """The widest x86 vector ISA among `features`: what XNNPACK's kernel choice mostly follows."""
    return next((t.removesuffix("F") for t in ("AVX-512F", "AVX2", "AVX", "SSE4.1") if t in features), "SSE2")


def emulated_path(spec: str) -> KernelPath:
    """The path of an `arch:model` entry; unknown models are described by their name only."""
    arch, _, model = spec.partition(":")
    if arch == "aarch64":
        return KernelPath(f"aarch64 {model} (qemu)", arch, AARCH64_MODELS.get(model, (f"qemu's {model}",)), model)
    if model in X86_MODELS:
        return KernelPath(f"x86-64 {model}, no AVX-512 (qemu)", arch, X86_MODELS[model], model)
    return KernelPath(f"x86-64 {model} (qemu)", arch, (f"qemu's {model}",), model)


def qemu_version(binary: str) -> tuple[int, ...] | None:
    """(major, minor[, patch]) from `binary --version`; None when it does not run."""
    try:
        output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", output)
    return tuple(int(part) for part in match.groups() if part is not None) if match else None


def newest_qemu(arch: str) -> tuple[str, tuple[int, ...]] | None:
    """The newest of qemu-<arch> and qemu-<arch>-static, with its version, whatever that version is."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"])
    best: tuple[str, tuple[int, ...]] | None = None
    for name in (f"qemu-{arch}", f"qemu-{arch}-static"):
        binary = shutil.which(name, path=search)
        version = qemu_version(binary) if binary else None
        if binary and version and (best is None or version > best[1]):
            best = (binary, version)
    return best


def find_qemu(arch: str, preferred: str | None = None) -> str | None:
    """A qemu-<arch> (or -static) of version >= MIN_QEMU: `preferred` if it still is one, else the newest."""
    version = qemu_version(preferred) if preferred else None
    if preferred and version and version[0] >= MIN_QEMU:
        return preferred
    newest = newest_qemu(arch)
    return newest[0] if newest and newest[1][0] >= MIN_QEMU else None


@dataclass(frozen=True)
class Aarch64Runtime:
    """What `make kernel-paths` installed: the sysroot's python, its site and the qemu to run them with."""

    sysroot: Path
    python: Path
    site: Path
    qemu: str


def aarch64_runtime(runtime_dir: Path) -> Aarch64Runtime | str:
    """The installed runtime, or why there is none usable (a reason that ends with what to run)."""
    ready_file = runtime_dir / "ready.json"
    try:
        ready = json.loads(ready_file.read_text())
        python, site, wheels = Path(ready["python"]), Path(ready["site"]), ready["wheels"]
        preferred = ready.get("qemu", {}).get("aarch64", {}).get("path")
    except FileNotFoundError:
        return f"the aarch64 runtime is not installed in {runtime_dir} (no ready.json): {INSTALL_HINT}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{ready_file} is unreadable ({error!r}): {INSTALL_HINT}"
    for package in ("executorch", "torch"):
        try:
            here = metadata.version(package)
        except metadata.PackageNotFoundError:
            here = "none"
        if wheels.get(package) != here:
            return (
                f"the aarch64 runtime in {runtime_dir} has {package} {wheels.get(package)} and this venv "
                f"{package} {here}: {INSTALL_HINT}"
            )
    if not python.exists() or not site.is_dir():
        return f"the aarch64 runtime in {runtime_dir} lost {python if not python.exists() else site}: {INSTALL_HINT}"
    qemu = find_qemu("aarch64", preferred)
    if qemu is None:
        return f"no qemu-aarch64 >= {MIN_QEMU} found: {INSTALL_HINT}"
    return Aarch64Runtime(sysroot=python.parents[2], python=python, site=site, qemu=qemu)


def kernel_paths(config: KernelPathConfig, host: HostCpu | None = None) -> KernelPaths:
    """The native path and each configured emulated path that applies here; the others with the reason why not."""
    host = host or HostCpu.read()
    native = native_path(host)
    emulated: list[KernelPath] = []
    skipped: dict[str, str] = {}
    for spec in dict.fromkeys(config.emulated):
        path = emulated_path(spec)
        reason = _why_not(path, host, config)
        if reason:
            skipped[path.name] = reason
        else:
            emulated.append(path)
    return KernelPaths(native, emulated, skipped)


def _why_not(path: KernelPath, host: HostCpu, config: KernelPathConfig) -> str | None:
    if path.arch == "aarch64":
        if host.arch == "aarch64":
            return "the host is aarch64: the native path runs its aarch64 kernels"
        runtime = aarch64_runtime(config.runtime_dir)
        return runtime if isinstance(runtime, str) else None
    if host.arch != "x86_64":
        return f"needs an x86-64 host (it runs the venv's own python under qemu-x86_64); this one is {host.arch}"
    native = native_path(host)
    if path.cpu in X86_MODELS and x86_tier(path.features) == x86_tier(native.features):
        return (
            f"the native CPU has no AVX-512: {native.name} already is the {x86_tier(path.features)} path "
            f"{path.cpu} would emulate"
        )
    if find_qemu("x86_64") is None:
        return f"no qemu-x86_64 >= {MIN_QEMU} found: {INSTALL_HINT}"
    return None


def stratified_subset(labels: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of `count` samples, each class's share as in `labels`, evenly spaced within the class.

    Deterministic (no RNG), so every path and every run sees the same samples. Shares are rounded by largest
    remainder (ties to the smaller class label); inside a class the k picks are the middles of k equal runs.
    """
    labels = np.asarray(labels)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = sizes * count / len(labels)
    take = np.floor(quotas).astype(np.int64)
    by_remainder = np.argsort(-(quotas - take), kind="stable")
    take[by_remainder[: count - int(take.sum())]] += 1
    picked = []
    for label, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == label)
        picked.append(members[((np.arange(k) + 0.5) * len(members) / k).astype(np.int64)] if k else members[:0])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def run_native(programs: dict[str, Path], inputs: np.ndarray, host: HostCpu | None = None) -> PathLogits:
    """The programs on this machine's CPU, in this process, computed as the emulated runs compute them."""
    started = time.perf_counter()
    import torch  # noqa: F401
    from executorch.extension.pybindings import _portable_lib  # noqa: F401

    import_s = time.perf_counter() - started
    try:
        results = path_runner.evaluate(list(programs.values()), _float32(inputs))
    except path_runner.ProgramError as error:
        raise KernelPathError(f"{native_path(host).name}: {error}") from error
    return PathLogits(
        path=native_path(host),
        logits={name: result.logits for name, result in zip(programs, results, strict=True)},
        samples=len(inputs),
        seconds=time.perf_counter() - started,
        import_s=import_s,
        call_ms={name: result.median_call_ms for name, result in zip(programs, results, strict=True)},
    )


def _float32(inputs: np.ndarray) -> np.ndarray:
    if not np.issubdtype(inputs.dtype, np.floating):
        raise ValueError(f"inputs must be floating point samples [N, ...], got {inputs.dtype}")
    return np.ascontiguousarray(inputs, dtype=np.float32)


def guest_env(site: Path | None) -> dict[str, str]:
    """The environment of an emulated python: nothing of ours (venv, PYTHONPATH, QEMU_*) leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_", "VIRTUAL_ENV", "CONDA"))}
    env["PYTHONNOUSERSITE"] = "1"
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return env


@dataclass
class _Run:
    path: KernelPath
    process: subprocess.Popen[bytes]
    directory: Path
    started: float
    finished: float | None = None

    @property
    def log(self) -> Path:
        return self.directory / "log.txt"

    def tail(self) -> str:
        """The end of the run's log without the known harmless noise."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        kept = [line for line in lines if line.strip() and not NOISE.search(line)]
        return "\n".join(f"  | {line}" for line in kept[-LOG_TAIL_LINES:]) or "  | (nothing but known noise)"


@dataclass
class EmulatedRuns:
    """Emulated paths running in the background. A context manager: leaving it stops every process it started."""

    runs: list[_Run]
    skipped: dict[str, str]  # path name -> why it does not run
    programs: dict[str, Path]
    timeout_s: float
    started: float = field(default_factory=time.monotonic)

    @property
    def paths(self) -> list[KernelPath]:
        return [run.path for run in self.runs]

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [run.process for run in self.runs]

    def wait(self) -> dict[str, PathLogits]:
        """Each path's logits, by path name. Raises EmulationError on the first failure or at the timeout."""
        results: dict[str, PathLogits] = {}
        pending = list(self.runs)
        try:
            while pending:
                for run in list(pending):
                    code = run.process.poll()
                    if code is None:
                        continue
                    run.finished = time.monotonic()
                    pending.remove(run)
                    if code != 0:
                        raise EmulationError(
                            f"{run.path.name} failed (exit code {code}) on {self._files()}; "
                            f"log {run.log}:\n{run.tail()}"
                        )
                    results[run.path.name] = self._read(run)
                if pending and time.monotonic() - self.started > self.timeout_s:
                    raise EmulationError(
                        f"{', '.join(run.path.name for run in pending)}: no result after {self.timeout_s:.0f} s "
                        f"(kernel_paths.timeout_s) on {self._files()}:\n"
                        + "\n".join(f"{run.path.name}, log {run.log}:\n{run.tail()}" for run in pending)
                    )
                if pending:
                    time.sleep(0.2)
        finally:
            self.close()
        return results

    def _files(self) -> str:
        return ", ".join(path.name for path in self.programs.values())

    def _read(self, run: _Run) -> PathLogits:
        try:
            timings = json.loads((run.directory / "timings.json").read_text())
            with np.load(run.directory / "logits.npz") as arrays:
                logits = {name: arrays[path_runner.key(i)] for i, name in enumerate(self.programs)}
        except (OSError, ValueError, KeyError) as error:
            raise EmulationError(
                f"{run.path.name}: unreadable output in {run.directory} ({error!r}):\n{run.tail()}"
            ) from error
        return PathLogits(
            path=run.path,
            logits=logits,
            samples=int(timings["samples"]),
            seconds=(run.finished or time.monotonic()) - run.started,
            import_s=float(timings["import_s"]),
            call_ms={
                name: float(t["median_call_ms"]) for name, t in zip(self.programs, timings["programs"], strict=True)
            },
        )

    def close(self) -> None:
        """Stop every process still running, its whole process group: SIGTERM, then SIGKILL."""
        live = [run.process for run in self.runs if run.process.poll() is None]
        for process in live:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> EmulatedRuns:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # its own session: the group id is its pid


def start_emulated(
    programs: dict[str, Path], inputs: np.ndarray, work_dir: Path, config: KernelPathConfig
) -> EmulatedRuns:
    """Start one background process per applicable emulated path, each evaluating every program on `inputs`.

    `inputs` are the samples to run (float32 [N, ...], one per call: the programs have batch 1), usually
    `stratified_subset(labels, config.samples)` of the test split. Logs and outputs go under `work_dir`.
    Use the result as a context manager and call `wait()` after the native work.
    """
    paths = kernel_paths(config)
    work_dir.mkdir(parents=True, exist_ok=True)
    samples = work_dir / "inputs.npy"
    np.save(samples, _float32(inputs))
    files = [str(path.resolve()) for path in programs.values()]
    nice = [found, "-n", str(NICE)] if (found := shutil.which("nice")) else []
    runs = EmulatedRuns(runs=[], skipped=paths.skipped, programs=dict(programs), timeout_s=config.timeout_s)
    try:
        for path in paths.emulated:
            directory = work_dir / re.sub(r"[^A-Za-z0-9._-]+", "-", f"{path.arch}-{path.cpu}")
            directory.mkdir(parents=True, exist_ok=True)
            runner = [
                "-P",  # not this package's directory first on sys.path
                str(RUNNER),
                "--inputs",
                str(samples.resolve()),
                "--output",
                str((directory / "logits.npz").resolve()),
                "--timings",
                str((directory / "timings.json").resolve()),
                *files,
            ]
            if path.arch == "aarch64":
                runtime = aarch64_runtime(config.runtime_dir)
                assert isinstance(runtime, Aarch64Runtime)  # kernel_paths checked it
                command = [runtime.qemu, "-L", str(runtime.sysroot), "-cpu", str(path.cpu), str(runtime.python)]
                env = guest_env(runtime.site)
            else:
                qemu = find_qemu("x86_64")
                assert qemu is not None  # kernel_paths checked it
                command, env = [qemu, "-cpu", str(path.cpu), sys.executable], guest_env(None)
            with (directory / "log.txt").open("wb") as log:
                process = subprocess.Popen(
                    [*nice, *command, *runner],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=directory,
                    env=env,
                    start_new_session=True,  # its own process group, so close() reaches all of it
                )
            runs.runs.append(_Run(path, process, directory, time.monotonic()))
    except BaseException:
        runs.close()
        raise
    return runs
