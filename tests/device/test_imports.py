"""The agent installs and starts light: nothing of the training side, the pipeline or the stack's libraries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from edgeops.settings import Settings
from tests.conftest import REPO
from tests.support.releases import release, tiny_model, unique_model_name

# Loaded by none of the device code, ever (the forbidden contract in pyproject.toml checks the imports).
TRAINING_SIDE = [
    "mlflow",
    "kfp",
    "boto3",
    "botocore",
    "torchvision",
    "onnx",
    "onnxruntime",
    "matplotlib",
    "edgeops.stages",
    "edgeops.bench",
    "edgeops.pipeline",
    "edgeops.quantize",
    "edgeops.models",
    "edgeops.stack.s3",
]
LOADED = "import json, sys; print(json.dumps(sorted(m for m in {modules} if m in sys.modules)))"


def loaded_after(python: str | Path, code: str, *args: str) -> list[str]:
    """Which of TRAINING_SIDE (plus torch) a fresh interpreter has loaded after running `code`."""
    report = LOADED.format(modules=[*TRAINING_SIDE, "torch"])
    done = subprocess.run(
        [str(python), "-c", f"{code}\n{report}", *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_the_agent_command_imports_no_training_side_and_not_even_torch() -> None:
    """The CLI with every command group, and all the agent runs, imported: torch waits for the first model."""
    code = "import edgeops.cli, edgeops.device.agent, edgeops.device.loop, edgeops.device.sources"
    loaded = loaded_after(sys.executable, code)
    # securesystemslib (under python-tuf) imports boto3 for its AWS signer when boto3 is installed, as it is
    # in this development environment; an `edgeops[agent]` install has no boto3 (the next test).
    assert [module for module in loaded if module not in ("boto3", "botocore")] == []


def uv() -> str:
    found = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv not found: `make install` bootstraps it into .tools/"
    return found


def test_an_agent_only_install_polls_installs_and_runs_without_the_training_side(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """`pip install edgeops[agent]` into a fresh virtualenv (from uv.lock), then a real poll there: verify,
    download, smoke-test in the ExecuTorch runtime, install. Nothing of the training side is even installed."""
    requirements = tmp_path / "agent-requirements.txt"
    export = [uv(), "export", "--frozen", "--no-dev", "--extra", "agent", "--no-emit-project", "--no-header"]
    requirements.write_text(subprocess.run(export, cwd=REPO, capture_output=True, text=True, check=True).stdout)
    venv = tmp_path / "agent-venv"
    subprocess.run([uv(), "venv", "-q", str(venv), "--python", sys.executable], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [uv(), "pip", "install", "-q", "--python", str(python)]
    subprocess.run([*install, "--require-hashes", "-r", str(requirements)], check=True, timeout=900)
    subprocess.run([*install, "--no-deps", str(REPO)], check=True, timeout=300)
    missing = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('mlflow', 'kfp', 'boto3')))"
    assert subprocess.run([str(python), "-c", missing], check=False).returncode == 0, "training side installed"

    name = unique_model_name("agent-only")
    release(stack_settings, name, tiny_model(1))
    device = tmp_path / "device"
    run_agent = (
        "import sys; from edgeops.cli import main; sys.argv = ['edgeops', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code"
    )
    args = ["agent", "--once", "--model", name, "--state-dir", str(device)]
    loaded = loaded_after(python, run_agent, *args)
    assert json.loads((device / "status.json").read_text())["installed"]["version"] == 1
    assert loaded == ["torch"]  # the ExecuTorch runtime's own dependency, loaded for the smoke test
