"""`edgeops doctor`: on this machine as it is, and on one with a port taken by someone else and no PMD data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, free_ports


def doctor(tmp_path: Path, *arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    s3, mlflow, master, volume, filer, mqtt, fleet = free_ports(7)
    ports = {
        "EDGEOPS_S3_PORT": str(s3),
        "EDGEOPS_MLFLOW_PORT": str(mlflow),
        "EDGEOPS_SEAWEED_MASTER_PORT": str(master),
        "EDGEOPS_SEAWEED_VOLUME_PORT": str(volume),
        "EDGEOPS_SEAWEED_FILER_PORT": str(filer),
        "EDGEOPS_FLEET__MQTT_PORT": str(mqtt),
        "EDGEOPS_FLEET__HTTP_PORT": str(fleet),
        "EDGEOPS_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "edgeops", "doctor", *arguments],
        cwd=REPO, env={**os.environ, **ports, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_doctor_passes_where_the_demo_can_run(tmp_path: Path) -> None:
    done = doctor(tmp_path)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("ports", "python", "disk", "apt", "PMD data", "docker", "java"):
        assert any(line[2:].startswith(name) for line in done.stdout.splitlines()), name
    brief = doctor(tmp_path, "--brief")
    assert brief.returncode == 0 and brief.stdout.startswith("✓ doctor:") and len(brief.stdout.splitlines()) == 1


def test_doctor_names_a_taken_port_and_missing_pmd_data_with_their_fixes(tmp_path: Path) -> None:
    (held,) = free_ports(1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", held))
        squatter.listen()
        done = doctor(
            tmp_path, "--dataset", "pmd", EDGEOPS_MLFLOW_PORT=str(held), EDGEOPS_PMD__DATA__ROOT=str(tmp_path / "none")
        )
    print(done.stdout)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    port = next(index for index, line in enumerate(lines) if line.startswith(f"✗ port {held}"))
    assert lines[port].endswith(f"needed by the MLflow, but taken by {process_name()} (pid {os.getpid()})"), lines[port]
    assert lines[port + 1] == "  fix: stop what holds it, or move the MLflow: EDGEOPS_MLFLOW_PORT=<free port> make demo"
    pmd = next(index for index, line in enumerate(lines) if line.startswith("✗ PMD data"))
    assert str(tmp_path / "none") in lines[pmd] and lines[pmd + 1].startswith("  fix: edgeops data fetch pmd")
    assert lines[-1] == "2 problem(s) to fix first (pmd demo, subprocess runner)"
    mat = doctor(tmp_path, "--dataset", "mat", EDGEOPS_PMD__DATA__ROOT=str(tmp_path / "none"))
    assert mat.returncode == 0 and "! PMD data" in mat.stdout  # the mat demo does not need it


def process_name() -> str:
    return Path("/proc/self/comm").read_text().strip()
