"""Install what runs ExecuTorch `.pte` programs under qemu-user, so the benchmark can measure INT8 accuracy on
CPU kernel paths this machine does not have (aarch64 NEON/dotprod, x86-64 without AVX-512).

`make kernel-paths` runs it with the project's python (it shares the qemu lookup with
`edgeops.quantize.kernel_paths`; apt steps need root or sudo). It prepares, outside
the repository (default `~/.cache/edgeops/emulated-runtime`, or `--dir`, or `EDGEOPS_KERNEL_PATHS__RUNTIME_DIR`):

- qemu-user >= 8 (`qemu-aarch64`, `qemu-x86_64`), from `<codename>-backports` when the release has only 7.x:
  bookworm's qemu 7.2 computed wrong INT8 with some CPU models;
- `sysroot/`: Debian's arm64 python3.11 and the libraries it and the wheels load, unpacked (never installed);
- `site-aarch64/`: the aarch64 wheels of torch, executorch and numpy at exactly the versions in uv.lock, with
  torch's own requirements (its CUDA libraries included: libtorch links them) but not triton;
- `ready.json`, written last, only after the sysroot's python imported `executorch.runtime` under qemu.

Re-running when everything is in place only checks `ready.json` against uv.lock and qemu (well under a second).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from edgeops.quantize.kernel_paths import MIN_QEMU, guest_env, newest_qemu, qemu_version
from edgeops.settings import Settings

REPO = Path(__file__).resolve().parents[1]
FORMAT = 1  # of ready.json; kernel_paths.py reads it

QEMU_ARCHES = ("aarch64", "x86_64")
QEMU_PACKAGES = ("qemu-user",)  # in 10.x it holds the static binaries; -static and -binfmt are transitional
QEMU_COMPANIONS = ("qemu-user-static", "qemu-user-binfmt")  # upgraded along when installed (they Break < 9.1)
SELF_CHECK_CPU = "cortex-a76"

PYTHON = "3.11"  # the sysroot's python; the wheels are cp311
# What python3.11 and the wheels' native code load, from Debian's arm64 archive (media-types is arch: all).
SYSROOT_PACKAGES = (
    "python3.11",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libstdc++6",
    "libgcc-s1",
    "zlib1g",
    "libffi8",
    "libssl3",
    "libexpat1",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "libuuid1",
    "libdb5.3",
    "libgdbm6",
    "libnsl2",
    "libtirpc3",
    "libcrypt1",
    "libgomp1",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libcom-err2",
    "libkrb5support0",
    "libkeyutils1",
)
SYSROOT_ARCH_ALL = ("media-types",)

UV_PLATFORM = "aarch64-manylinux_2_28"
# pip accepts only the tags it is given: torch and executorch are manylinux_2_28, some CUDA wheels 2_17 to 2_27.
PIP_PLATFORMS = (
    *(f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)),
    "manylinux2014_aarch64",
    "linux_aarch64",
)
# Installed without their requirements: executorch.runtime imports these and nothing else of executorch's
# long list (pandas, coremltools, scikit-learn, ... are for export and tooling).
WHEEL_ROOTS = (
    "torch",
    "executorch",
    "numpy",
    "ruamel-yaml",
    "pyyaml",
    "packaging",
    "tabulate",
    "flatbuffers",
    "torchao",
)
# Installed with the closure of their wheel's Requires-Dist, evaluated for linux/aarch64/cp311.
FOLLOW_REQUIREMENTS = ("torch",)
EXCLUDED = ("triton",)  # the GPU compiler (185 MB); nothing on the CPU path loads it
# Markers of the target, for Requires-Dist (PEP 508).
MARKER_ENV = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "aarch64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "python_version": PYTHON,
    "python_full_version": f"{PYTHON}.0",
    "implementation_version": f"{PYTHON}.0",
    "platform_release": "",
    "platform_version": "",
}


class InstallError(Exception):
    """A step failed; the message says which and why."""


# --- small helpers -------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def size_of(path: Path) -> int:
    """Bytes on disk under `path`, each hard-linked file once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


# Where the commands' own output goes (apt, dpkg, uv); the terminal gets one line per step. None: the terminal.
LOG: Path | None = None


def run(command: list[str], what: str, capture: bool = False, echo: bool = True, **kwargs: Any) -> str:
    """Run `command`; raise InstallError naming `what` (with the output's tail) if it fails."""
    line = "+ " + " ".join(command)
    if LOG is not None and (echo or not capture):
        with LOG.open("a") as log:
            log.write(line + "\n")
    elif LOG is None and echo:
        say(line)
    if LOG is not None and not capture:
        with LOG.open("a") as log:
            quiet = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT}
            result = subprocess.run(command, check=False, text=True, **quiet, **kwargs)
        if result.returncode != 0:
            tail = "\n".join(LOG.read_text(errors="replace").splitlines()[-20:])
            raise InstallError(f"{what}: `{' '.join(command)}` exited with {result.returncode} (log {LOG})\n{tail}")
        return ""
    result = subprocess.run(
        command,
        check=False,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        **kwargs,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout or "").splitlines()[-20:])
        raise InstallError(
            f"{what}: `{' '.join(command)}` exited with {result.returncode}" + (f"\n{tail}" if tail else "")
        )
    return result.stdout or ""


def as_root(command: list[str]) -> list[str]:
    """`command` as root: itself when we are root, else through sudo."""
    if os.geteuid() == 0:
        return command
    sudo = shutil.which("sudo")
    if not sudo:
        raise InstallError(f"`{' '.join(command)}` needs root and sudo is not installed; re-run as root")
    return [sudo, *command]


def apt_get() -> str:
    found = shutil.which("apt-get")
    if not found:
        raise InstallError("apt-get not found: install qemu-user >= 8 and an arm64 python3.11 sysroot by hand")
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One installer per directory at a time (`make -j`, two shells)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- qemu ----------------------------------------------------------------------------------------------------


def good_qemus() -> dict[str, tuple[str, tuple[int, ...]]] | None:
    found = {arch: newest_qemu(arch) for arch in QEMU_ARCHES}
    if all(entry and entry[1][0] >= MIN_QEMU for entry in found.values()):
        return {arch: entry for arch, entry in found.items() if entry}
    return None


def os_release() -> dict[str, str]:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            fields[key] = value.strip().strip('"')
    return fields


def apt_candidate(package: str) -> str | None:
    output = subprocess.run(
        ["apt-cache", "policy", package], capture_output=True, text=True, check=False, env=apt_env()
    ).stdout
    match = re.search(r"Candidate:\s*(\S+)", output)
    return match.group(1) if match and match.group(1) != "(none)" else None


def upstream_major(debian_version: str) -> int:
    """10 for '1:10.0.2+ds-2+deb13u1~bpo12+1'."""
    match = re.match(r"(?:\d+:)?(\d+)", debian_version)
    return int(match.group(1)) if match else 0


def apt_env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def source_files() -> list[Path]:
    """APT's enabled source files (what apt reads: sources.list and *.list / *.sources)."""
    files = [Path("/etc/apt/sources.list")]
    directory = Path("/etc/apt/sources.list.d")
    if directory.is_dir():
        files += sorted(p for p in directory.iterdir() if p.suffix in (".list", ".sources"))
    return [f for f in files if f.is_file()]


def source_entries() -> list[dict[str, list[str]]]:
    """Every `deb` entry as {'URIs', 'Suites', 'Components', 'Signed-By'}, from deb822 and one-line files."""
    entries: list[dict[str, list[str]]] = []
    for path in source_files():
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                key = ""
                for line in stanza.splitlines():
                    if line.startswith("#") or not line.strip():
                        continue
                    if line[0] in " \t" and key:
                        fields[key] += " " + line.strip()
                        continue
                    key, _, value = line.partition(":")
                    key = key.strip()
                    fields[key] = value.strip()
                if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes").lower() != "no":
                    entries.append(
                        {k: fields.get(k, "").split() for k in ("URIs", "Suites", "Components", "Signed-By")}
                    )
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if not words or words[0] != "deb":
                    continue
                words = words[1:]
                options: list[str] = []
                if words and words[0].startswith("["):
                    while words:
                        options.append(words.pop(0))
                        if options[-1].endswith("]"):
                            break
                signed_by = [
                    o.split("=", 1)[1] for o in " ".join(options).strip("[]").split() if o.startswith("signed-by=")
                ]
                if len(words) >= 2:
                    entries.append(
                        {"URIs": [words[0]], "Suites": [words[1]], "Components": words[2:], "Signed-By": signed_by}
                    )
    return entries


def ensure_backports(codename: str) -> bool:
    """Add `<codename>-backports` from the mirror the release already uses. False if it was already there."""
    suite = f"{codename}-backports"
    entries = source_entries()
    if any(suite in entry["Suites"] for entry in entries):
        return False
    main = next((entry for entry in entries if codename in entry["Suites"] and entry["URIs"]), None)
    if main is None:
        raise InstallError(f"no APT source for '{codename}' found in /etc/apt; cannot add {suite} for qemu-user")
    keyring = main["Signed-By"] or (
        ["/usr/share/keyrings/debian-archive-keyring.gpg"]
        if Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists()
        else []
    )
    lines = ["Types: deb", f"URIs: {main['URIs'][0]}", f"Suites: {suite}", "Components: main"]
    if keyring:
        lines.append(f"Signed-By: {keyring[0]}")
    target = Path(f"/etc/apt/sources.list.d/{suite}.sources")
    with tempfile.NamedTemporaryFile("w", suffix=".sources", delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
    try:
        run(as_root(["install", "-m", "0644", handle.name, str(target)]), f"writing {target}")
    finally:
        os.unlink(handle.name)
    say(f"  added {target} ({main['URIs'][0]} {suite})")
    return True


def dpkg_installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return result.stdout.strip().endswith(" installed")


def ensure_qemu() -> dict[str, tuple[str, tuple[int, ...]]]:
    """qemu-aarch64 and qemu-x86_64, both >= 8; installs qemu-user (from backports if need be) otherwise."""
    found = good_qemus()
    if found:
        return found
    apt = apt_get()
    codename = os_release().get("VERSION_CODENAME", "")
    candidate = apt_candidate("qemu-user")
    if candidate is None:
        run(as_root([apt, "update"]), "apt-get update", env=apt_env())
        candidate = apt_candidate("qemu-user")
    target: list[str] = []
    if candidate is None or upstream_major(candidate) < MIN_QEMU:
        if not codename:
            raise InstallError(
                f"qemu-user {candidate or '(none)'} is older than {MIN_QEMU} and /etc/os-release names no "
                "codename to take backports from; install qemu-user >= 8 by hand"
            )
        say(f"  {codename} has qemu-user {candidate or '(none)'}; {MIN_QEMU}+ comes from {codename}-backports")
        ensure_backports(codename)
        run(as_root([apt, "update"]), "apt-get update", env=apt_env())
        target = ["-t", f"{codename}-backports"]
    packages = [*QEMU_PACKAGES, *(p for p in QEMU_COMPANIONS if dpkg_installed(p))]
    run(
        as_root(
            [
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                apt,
                "install",
                "-y",
                "--no-install-recommends",
                *target,
                *packages,
            ]
        ),
        "installing qemu-user",
        env=apt_env(),
    )
    found = good_qemus()
    if not found:
        versions = {arch: newest_qemu(arch) for arch in QEMU_ARCHES}
        raise InstallError(
            f"after installing qemu-user, qemu-aarch64/qemu-x86_64 >= {MIN_QEMU} are still missing: {versions}"
        )
    return found


# --- the arm64 sysroot ---------------------------------------------------------------------------------------


def ensure_arm64_lists() -> None:
    """arm64 as a foreign architecture, with its package lists."""
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=False)
    added = False
    if "arm64" not in foreign.stdout.split():
        run(as_root(["dpkg", "--add-architecture", "arm64"]), "dpkg --add-architecture arm64")
        added = True
    if added or apt_candidate(f"python{PYTHON}:arm64") is None:
        run(as_root([apt_get(), "update"]), "apt-get update (arm64 lists)", env=apt_env())
        if apt_candidate(f"python{PYTHON}:arm64") is None:
            raise InstallError(f"APT has no python{PYTHON}:arm64 after apt-get update; the sources must serve arm64")


def build_sysroot(directory: Path, qemu_aarch64: str) -> dict[str, str]:
    """`<dir>/sysroot`: the arm64 debs unpacked; returns {package: version}. Kept when already complete."""
    sysroot = directory / "sysroot"
    marker = sysroot / ".edgeops-sysroot.json"
    wanted = sorted([*SYSROOT_PACKAGES, *SYSROOT_ARCH_ALL])
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if sorted(recorded) == wanted:
            say(f"  sysroot already complete ({human(size_of(sysroot))})")
            return dict(recorded)
    ensure_arm64_lists()
    debs = directory / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []  # no '_apt cannot write' warning
    names = [*SYSROOT_ARCH_ALL, *(f"{package}:arm64" for package in SYSROOT_PACKAGES)]
    run(
        [apt_get(), *sandbox, "download", *names],
        "apt-get download of the arm64 sysroot",
        capture=True,
        cwd=debs,
        env=apt_env(),
    )
    files = sorted(debs.glob("*.deb"))
    versions: dict[str, str] = {}
    for deb in files:
        package, version, _ = deb.stem.split("_")
        versions[package] = version.replace("%3a", ":")
    missing = sorted(set(wanted) - set(versions))
    if missing:
        raise InstallError(f"apt-get download did not fetch {', '.join(missing)}")
    partial = directory / "sysroot.partial"
    say(f"  downloaded {len(files)} debs, {human(size_of(debs))}; unpacking them with dpkg-deb -x")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for deb in files:
        run(["dpkg-deb", "-x", str(deb), str(partial)], f"unpacking {deb.name}", capture=True, echo=False)
    python = partial / "usr" / "bin" / f"python{PYTHON}"
    if not python.exists():
        raise InstallError(f"{python} missing after unpacking the debs")
    run(
        [qemu_aarch64, "-L", str(partial), str(python), "-c", "import ssl, ctypes, sqlite3, lzma, bz2, zlib"],
        "the sysroot's python under qemu",
        capture=True,
        env=guest_env(None),
    )
    (partial / marker.name).write_text(json.dumps(versions, indent=1, sort_keys=True))
    shutil.rmtree(sysroot, ignore_errors=True)
    partial.rename(sysroot)
    say(f"  sysroot: {sysroot} ({human(size_of(sysroot))}), python{PYTHON} {versions[f'python{PYTHON}']}")
    return versions


# --- aarch64 wheels ------------------------------------------------------------------------------------------


def lock_packages(lock: Path) -> dict[str, dict[str, Any]]:
    """uv.lock's packages by normalized name."""
    try:
        data = tomllib.loads(lock.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise InstallError(f"cannot read {lock}: {error}") from error
    packages: dict[str, dict[str, Any]] = {}
    for package in data.get("package", []):
        name = normalize(package["name"])
        if name in packages:
            raise InstallError(f"{lock} holds two versions of {name}; pick one for aarch64 by hand")
        packages[name] = package
    return packages


def requirement_line(package: dict[str, Any]) -> str:
    """`name==version --hash=...` with every artifact hash the lock holds, so pip/uv verify the downloads."""
    hashes = [wheel["hash"] for wheel in package.get("wheels", []) if "hash" in wheel]
    if "sdist" in package and "hash" in package["sdist"]:
        hashes.append(package["sdist"]["hash"])
    if not hashes:
        raise InstallError(f"uv.lock has no hashes for {package['name']} {package['version']}")
    return " ".join([f"{package['name']}=={package['version']}", *(f"--hash={h}" for h in hashes)])


def requirements(metadata: str, extras: set[str]) -> dict[str, set[str]]:
    """{name: extras} of a METADATA's Requires-Dist lines whose markers hold on linux/aarch64/cp311
    for the package itself or any of `extras`."""
    needed: dict[str, set[str]] = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1])
        marker = requirement.marker
        if marker and not any(marker.evaluate(MARKER_ENV | {"extra": extra}) for extra in ["", *sorted(extras)]):
            continue
        wanted = {normalize(extra) for extra in requirement.extras}
        needed.setdefault(normalize(requirement.name), set()).update(wanted)
    return needed


def interpreter_311() -> str | None:
    """A host python3.11 to byte-compile the site with (cp311 .pyc files spare the emulator compiling them)."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    return shutil.which(f"python{PYTHON}")


def find_uv(explicit: str | None) -> str | None:
    for candidate in (explicit, os.environ.get("UV"), shutil.which("uv"), str(REPO / ".tools" / "bin" / "uv")):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def find_pip() -> list[str] | None:
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False).returncode == 0:
        return [sys.executable, "-m", "pip"]
    tools_pip = REPO / ".tools" / "bin" / "pip"
    return [str(tools_pip)] if tools_pip.exists() else None


class Installer:
    """Fetches batches of pinned wheels and hands back each one's METADATA."""

    def __init__(self, site: Path, scratch: Path, index: str) -> None:
        self.site, self.scratch, self.index = site, scratch, index

    def requirements_file(self, lines: list[str]) -> Path:
        path = self.scratch / "requirements.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    def fetch(self, lines: list[str], names: list[str]) -> dict[str, str]:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once every wheel is fetched."""


class UvInstaller(Installer):
    """uv installs each batch straight into the site (it merges the shared `nvidia/` namespace and caches)."""

    def __init__(self, uv: str, site: Path, scratch: Path, index: str) -> None:
        super().__init__(site, scratch, index)
        self.uv = uv

    def fetch(self, lines: list[str], names: list[str]) -> dict[str, str]:
        python = interpreter_311()
        command = [
            self.uv, "pip", "install", "--target", str(self.site), "--no-deps", "--only-binary", ":all:",
            "--python-platform", UV_PLATFORM, "--python-version", PYTHON, "--default-index", self.index,
            "--require-hashes", "-r", str(self.requirements_file(lines)),
        ]  # fmt: skip
        if python:
            command += ["--python", python, "--compile-bytecode"]
        run(command, "uv pip install of aarch64 wheels")
        found = {}
        for dist_info in self.site.glob("*.dist-info"):
            name = normalize(dist_info.name[: -len(".dist-info")].rpartition("-")[0])
            if name in names:
                found[name] = (dist_info / "METADATA").read_text(errors="replace")
        return found


class PipInstaller(Installer):
    """pip downloads every batch first and installs all wheels in one go: pip --target, run once per batch,
    would skip (or with --upgrade, replace) the `nvidia/` directory the CUDA wheels share."""

    def __init__(self, pip: list[str], site: Path, scratch: Path, index: str) -> None:
        super().__init__(site, scratch, index)
        self.pip = pip
        self.wheels = site.parent / "wheels"
        self.wheels.mkdir(exist_ok=True)
        self.platforms = [flag for platform in PIP_PLATFORMS for flag in ("--platform", platform)]

    def fetch(self, lines: list[str], names: list[str]) -> dict[str, str]:
        run(
            [*self.pip, "download", "--no-deps", "--only-binary=:all:", *self.platforms, "--python-version", PYTHON,
             "--index-url", self.index, "--require-hashes", "-r", str(self.requirements_file(lines)),
             "-d", str(self.wheels)],
            "pip download of aarch64 wheels",
        )  # fmt: skip
        found = {}
        for wheel in self.wheels.glob("*.whl"):
            name = normalize(wheel.name.split("-")[0])
            if name in names:
                with zipfile.ZipFile(wheel) as archive:
                    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                    found[name] = archive.read(metadata).decode(errors="replace")
        return found

    def finish(self) -> None:
        wheels = sorted(str(w) for w in self.wheels.glob("*.whl") if normalize(w.name.split("-")[0]) not in EXCLUDED)
        run(
            [*self.pip, "install", "--target", str(self.site), "--no-deps", "--no-index", "--only-binary=:all:",
             *self.platforms, "--python-version", PYTHON, *wheels],
            "pip install --target of the aarch64 wheels",
        )  # fmt: skip
        shutil.rmtree(self.wheels)


def install_wheels(directory: Path, lock: Path, uv: str | None) -> dict[str, str]:
    """`<dir>/site-aarch64`: the roots at their uv.lock versions plus torch's requirement closure (no triton).

    The closure comes from the aarch64 wheels' own Requires-Dist, read batch by batch as they arrive; every
    version and hash from uv.lock. Returns {name: version}. Kept when it already matches the lock.
    """
    locked_packages = lock_packages(lock)
    site = directory / "site-aarch64"
    record = site / ".edgeops-wheels.json"
    if record.exists():
        recorded = json.loads(record.read_text())
        stale = {n: v for n, v in recorded.items() if locked_packages.get(n, {}).get("version") != v}
        if not stale and set(WHEEL_ROOTS) <= set(recorded):
            say(f"  {len(recorded)} wheels already installed ({human(size_of(site))})")
            return dict(recorded)
        say(f"  uv.lock changed ({', '.join(sorted(stale)) or 'roots'}); reinstalling the site")
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    registries = {p["source"].get("registry") for n, p in locked_packages.items() if n in WHEEL_ROOTS}
    if len(registries) != 1 or None in registries:
        raise InstallError(f"the roots in {lock} come from several or no registries: {registries}")
    index = str(registries.pop())
    with tempfile.TemporaryDirectory(prefix="edgeops-wheels-") as scratch:
        installer: Installer
        uv_binary = find_uv(uv)
        if uv_binary:
            installer = UvInstaller(uv_binary, site, Path(scratch), index)
        else:
            pip = find_pip()
            if not pip:
                raise InstallError("neither uv nor pip found: `make install` bootstraps uv into .tools/")
            say("  uv not found; falling back to pip with every manylinux tag")
            installer = PipInstaller(pip, site, Path(scratch), index)
        installed: dict[str, str] = {}
        followed: dict[str, set[str]] = {}  # name -> the extras whose requirements are already queued
        pending: dict[str, set[str]] = {name: set() for name in WHEEL_ROOTS}
        follow = set(FOLLOW_REQUIREMENTS)
        metadata: dict[str, str] = {}
        while pending:
            batch = sorted(name for name in pending if name not in installed)
            missing = [name for name in batch if name not in locked_packages]
            if missing:
                raise InstallError(f"{', '.join(missing)} (needed on aarch64) not in {lock}; run `uv lock`")
            if batch:
                say(f"  fetching {len(batch)}: {' '.join(batch)}")
                metadata.update(installer.fetch([requirement_line(locked_packages[n]) for n in batch], batch))
                absent = [name for name in batch if name not in metadata]
                if absent:
                    raise InstallError(f"no METADATA found for {', '.join(absent)} after fetching it")
                installed.update({name: locked_packages[name]["version"] for name in batch})
            queued, pending = pending, {}
            for name, extras in queued.items():
                if name not in follow or (name in followed and extras <= followed[name]):
                    continue
                followed[name] = followed.get(name, set()) | extras
                for dependency, wanted in requirements(metadata[name], extras).items():
                    if dependency in EXCLUDED:
                        continue
                    follow.add(dependency)
                    if dependency not in followed or not wanted <= followed[dependency]:
                        pending.setdefault(dependency, set()).update(wanted)
        installer.finish()
    record.write_text(json.dumps(installed, indent=1, sort_keys=True))
    say(f"  {len(installed)} wheels, {human(size_of(site))} in {site}")
    return installed


# --- check and stamp -----------------------------------------------------------------------------------------


def self_check(directory: Path, qemu_aarch64: str) -> float:
    sysroot = directory / "sysroot"
    code = "from executorch.runtime import Runtime; Runtime.get(); import numpy; print('executorch.runtime ok')"
    started = time.monotonic()
    run(
        [qemu_aarch64, "-L", str(sysroot), "-cpu", SELF_CHECK_CPU, str(sysroot / "usr" / "bin" / f"python{PYTHON}"),
         "-c", code],
        f"importing executorch.runtime under qemu-aarch64 -cpu {SELF_CHECK_CPU}",
        capture=True,
        env=guest_env(directory / "site-aarch64"),
    )  # fmt: skip
    return time.monotonic() - started


def ready_problem(directory: Path, lock: Path) -> str | None:
    """Why `ready.json` does not describe a usable runtime for this uv.lock (None: it does)."""
    try:
        ready = json.loads((directory / "ready.json").read_text())
    except (OSError, ValueError):
        return "no ready.json"
    if ready.get("format") != FORMAT:
        return "ready.json has an older format"
    locked_packages = lock_packages(lock)
    wheels = ready.get("wheels", {})
    stale = sorted(n for n, v in wheels.items() if locked_packages.get(n, {}).get("version") != v)
    if stale or not set(WHEEL_ROOTS) <= set(wheels):
        return f"uv.lock changed ({', '.join(stale) or 'roots'})"
    if not Path(ready.get("python", "")).exists() or not (directory / "site-aarch64").is_dir():
        return "the sysroot or site is gone"
    for arch, entry in ready.get("qemu", {}).items():
        version = qemu_version(entry.get("path", ""))
        if not version or version[0] < MIN_QEMU:
            return f"qemu-{arch} at {entry.get('path')} is gone or older than {MIN_QEMU}"
    return None


def install(directory: Path, lock: Path, uv: str | None) -> None:
    started = time.monotonic()
    state: dict[str, Any] = {}

    def qemu() -> None:
        state["qemu"] = ensure_qemu()
        for arch, (path, version) in state["qemu"].items():
            say(f"  qemu-{arch}: {path} {'.'.join(map(str, version))}")

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("qemu-user >= 8", qemu),
        ("arm64 sysroot", lambda: state.update(sysroot=build_sysroot(directory, state["qemu"]["aarch64"][0]))),
        ("aarch64 wheels", lambda: state.update(wheels=install_wheels(directory, lock, uv))),
        (
            f"self-check: import executorch.runtime under qemu-aarch64 -cpu {SELF_CHECK_CPU}",
            lambda: state.update(check_s=self_check(directory, state["qemu"]["aarch64"][0])),
        ),
    ]
    for number, (title, step) in enumerate(steps, 1):
        say(f"[{number}/{len(steps)}] {title}")
        step_started = time.monotonic()
        step()
        say(f"  ({time.monotonic() - step_started:.1f} s)")
    ready = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": str(directory / "sysroot" / "usr" / "bin" / f"python{PYTHON}"),
        "site": str(directory / "site-aarch64"),
        "sysroot_packages": state["sysroot"],
        "wheels": state["wheels"],
        "qemu": {arch: {"path": p, "version": ".".join(map(str, v))} for arch, (p, v) in state["qemu"].items()},
        "self_check": {"cpu": SELF_CHECK_CPU, "seconds": round(state["check_s"], 1)},
        "uv_platform": UV_PLATFORM,
    }
    partial = directory / "ready.json.partial"
    partial.write_text(json.dumps(ready, indent=1, sort_keys=True) + "\n")
    partial.rename(directory / "ready.json")
    say(
        f"emulated runtime ready in {directory}: {human(size_of(directory))}, "
        f"{time.monotonic() - started:.0f} s (executorch {state['wheels']['executorch']}, "
        f"torch {state['wheels']['torch']}, qemu {ready['qemu']['aarch64']['version']})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Settings().kernel_paths.runtime_dir)
    parser.add_argument("--lock", type=Path, default=REPO / "uv.lock", help="pins the wheel versions")
    parser.add_argument("--uv", help="the uv binary (default: $UV, uv on PATH, .tools/bin/uv; else pip)")
    parser.add_argument("--check", action="store_true", help="only say whether the runtime is ready (exit 0) or not")
    parser.add_argument("--verbose", action="store_true", help="show apt's, dpkg's and uv's output here, not in a log")
    args = parser.parse_args(argv)
    directory = args.dir.expanduser().resolve()
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        say(f"this host is {machine}: its native path is its own kernel path and nothing needs emulating")
        return 0
    try:
        problem = ready_problem(directory, args.lock)
        if problem is None:
            say(f"emulated runtime ready in {directory}")
            return 0
        if args.check:
            say(f"emulated runtime not ready in {directory}: {problem}")
            return 1
        global LOG
        if not args.verbose:
            directory.parent.mkdir(parents=True, exist_ok=True)
            LOG = directory.parent / "emulated-runtime-install.log"
        where = f"; the commands' output goes to {LOG}" if LOG else ""
        say(f"preparing the emulated runtime in {directory} ({problem}): about 3 GB, a few minutes{where}")
        with locked(directory):
            if ready_problem(directory, args.lock) is None:  # another installer finished meanwhile
                say(f"emulated runtime ready in {directory}")
                return 0
            (directory / "ready.json").unlink(missing_ok=True)
            install(directory, args.lock, args.uv)
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
