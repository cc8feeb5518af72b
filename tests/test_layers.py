"""The architecture holds: import-linter's contracts (pyproject.toml) pass on the package, and fail on a copy
of it with one forbidden import added, naming that import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter with the project's contracts, on the `edgeops` package found under `package_root`."""
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    command = [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=package_root, timeout=120)


def test_the_package_keeps_every_contract() -> None:
    done = lint_imports(REPO / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("device/state.py", "edgeops.stack.s3", "The device never imports the training side"),
        ("datasets/base.py", "edgeops.stages.train", "Wings are layered"),
        ("stack/s3.py", "edgeops.stages.ingest", "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, forbidden: str, contract: str) -> None:
    shutil.copytree(REPO / "src" / "edgeops", tmp_path / "edgeops")
    path = tmp_path / "edgeops" / module
    path.write_text(path.read_text() + f"\nimport {forbidden}  # added by the test\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and forbidden in broken, done.stdout
