"""`edgeops doctor`: what the README's commands need from this machine, each found ok or with the one command that
fixes it, so that `make demo` stops before its first stage rather than deep inside one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgeops.datasets import pmd
from edgeops.errors import InputError
from edgeops.settings import Dataset, Runner, Settings
from edgeops.stack import supervisor

GIB = 1024**3
# Free disk the default path needs: the virtualenv (torch, ExecuTorch, MLflow: about 6.5 GiB), the stack's data and
# the runs' outputs; the docker runner adds the component image and its build (about 8 GiB).
DISK_GIB = {Runner.subprocess: 10, Runner.docker: 18}
MIN_PYTHON = (3, 11)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # the one command (or setting) that fixes it
    required: bool = True  # False: only some commands need it; a miss is a warning


def run_checks(settings: Settings, dataset: Dataset, runner: Runner) -> list[Check]:
    return [
        python_version(),
        free_disk(settings, runner),
        *ports(settings),
        apt_usable(),
        pmd_data(settings, required=dataset == Dataset.pmd),
        docker_engine(required=runner == Runner.docker),
        java_and_maven(),
    ]


def python_version() -> Check:
    found = ".".join(map(str, sys.version_info[:3]))
    wanted = ".".join(map(str, MIN_PYTHON))
    ok = sys.version_info[:2] >= MIN_PYTHON
    return Check("python", ok, f"{found} ({sys.executable})", f"uv python install {wanted}")


def free_disk(settings: Settings, runner: Runner) -> Check:
    where = settings.state_dir.resolve()
    while not where.exists():
        where = where.parent
    free, need = shutil.disk_usage(where).free, DISK_GIB[runner]
    return Check(
        "disk",
        free >= need * GIB,
        f"{free / GIB:.1f} GiB free at {where}; about {need} GiB needed ({runner.value} runner)",
        f"free {need - free / GIB:.1f} GiB more on that disk, or set EDGEOPS_STATE_DIR and EDGEOPS_OUT_DIR to another"
        if free < need * GIB
        else "",
    )


def stack_ports(settings: Settings) -> list[tuple[str, str, int, str]]:
    """(service, what, port, the setting that moves it) for every port the local stack listens on."""
    seaweed = [
        ("seaweedfs", "S3", settings.s3_port, "EDGEOPS_S3_PORT"),
        ("seaweedfs", "SeaweedFS master", settings.seaweed_master_port, "EDGEOPS_SEAWEED_MASTER_PORT"),
        ("seaweedfs", "SeaweedFS volume", settings.seaweed_volume_port, "EDGEOPS_SEAWEED_VOLUME_PORT"),
        ("seaweedfs", "SeaweedFS filer", settings.seaweed_filer_port, "EDGEOPS_SEAWEED_FILER_PORT"),
    ]
    grpc = [(service, f"{what} gRPC", port + 10000, setting) for service, what, port, setting in seaweed[1:]]
    return [
        *seaweed,
        *grpc,
        ("mlflow", "MLflow", settings.mlflow_port, "EDGEOPS_MLFLOW_PORT"),
        ("mosquitto", "MQTT broker", settings.fleet.mqtt_port, "EDGEOPS_FLEET__MQTT_PORT"),
        ("fleet", "fleet service", settings.fleet.http_port, "EDGEOPS_FLEET__HTTP_PORT"),
    ]


def ports(settings: Settings) -> list[Check]:
    """Each port free, or held by this stack's own service (started before: fine)."""
    checks = []
    listeners: dict[int, int] | None = None  # from `ss`, once, when a port is taken
    for service, what, port, setting in stack_ports(settings):
        name = f"port {port}"
        if not supervisor.port_in_use(settings.host, port):
            checks.append(Check(name, True, f"free for the {what}"))
            continue
        listeners = _listeners() if listeners is None else listeners
        pid, holder_pid = supervisor.running_pid(settings, service), listeners.get(port)
        if pid is not None and holder_pid is not None and pid in (holder_pid, _parent(holder_pid)):
            checks.append(Check(name, True, f"the {what} of this stack is running (pid {pid})"))
            continue
        holder = _holder(holder_pid)
        checks.append(
            Check(
                name,
                False,
                f"needed by the {what}, but taken{f' by {holder}' if holder else ''}",
                f"stop what holds it, or move the {what}: {setting}=<free port> make demo",
            )
        )
    return checks


def _holder(pid: int | None) -> str:
    if pid is None:
        return ""
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        command = "?"
    return f"{command} (pid {pid})"


def _listeners() -> dict[int, int]:
    """Listening TCP port -> pid, as far as `ss` may show (other users' processes need root)."""
    if shutil.which("ss") is None:
        return {}
    done = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=10, check=False)
    found = {}
    for line in done.stdout.splitlines():
        port = re.search(r":(\d+)\s", line)
        pid = re.search(r"pid=(\d+)", line)
        if port and pid:
            found[int(port.group(1))] = int(pid.group(1))
    return found


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def apt_usable() -> Check:
    """The Makefile installs Debian packages (Mosquitto, Chromium, a JDK, qemu-user) with apt-get."""
    if shutil.which("apt-get") is None:
        return Check(
            "apt",
            False,
            "apt-get not found: the Makefile installs Mosquitto, qemu-user and a JDK with it",
            "install mosquitto, qemu-user, openjdk-17-jdk-headless and maven with this system's package manager",
        )
    if os.geteuid() == 0:
        return Check("apt", True, "apt-get, as root")
    sudo = shutil.which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=10, check=False).returncode == 0:
        return Check("apt", True, "apt-get through sudo")
    return Check("apt", False, "apt-get needs root, and sudo asks for a password", "sudo -v   (then run make again)")


def pmd_data(settings: Settings, required: bool) -> Check:
    config = settings.pmd.data
    if not pmd.on_disk(config):
        return Check(
            "PMD data",
            False,
            f"not found at {(config.root / config.experiment).resolve()} (the PMD track needs it)",
            f"{pmd.FETCH_COMMAND}   (or EDGEOPS_PMD__DATA__ROOT=<a copy>)",
            required,
        )
    try:
        checked = pmd.verify_checksums(config.root, config.experiment)
    except InputError as error:
        return Check("PMD data", False, f"{config.root}: {error.problems[0]}", pmd.FETCH_COMMAND, required)
    if not checked:
        return Check(
            "PMD data", False, f"{config.root} has no {pmd.SUMS_FILE} to verify it by", pmd.FETCH_COMMAND, required
        )
    return Check("PMD data", True, f"{checked} files verified against {config.root / pmd.SUMS_FILE}", "", required)


def docker_engine(required: bool) -> Check:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False).returncode == 0:
        return Check("docker", True, "an engine answers", required=required)
    if shutil.which("dockerd"):
        return Check("docker", True, "no engine answers; `make docker-engine` starts one", required=required)
    return Check("docker", False, "no engine (only the docker runner needs one)", "make docker-engine", required)


def java_and_maven() -> Check:
    """`make test` builds the Android side's JVM modules with Maven."""
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if not java or not mvn:
        missing = " and ".join(name for name, found in (("a JDK", java), ("Maven", mvn)) if not found)
        return Check("java", False, f"{missing} missing (`make test` builds the Android modules)", "make jvm", False)
    done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    version = re.search(r'version "(\d+)', done.stderr)
    major = int(version.group(1)) if version else 0
    if major < 17:
        return Check("java", False, f"Java {major or '?'} found; the Android modules need 17", "make jvm", False)
    return Check("java", True, f"Java {major} and Maven", required=False)
