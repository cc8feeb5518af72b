"""Run the compiled pipeline YAML with KFP's local subprocess runner, timing each task.

KFP's local runner announces each task on stdout ("Executing task 'x'" ...
"Task 'x' finished with status"); a line-timestamping stream catches those
announcements, so each stage's wall time includes its process start-up.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from edgeops.errors import EdgeopsError
from edgeops.settings import DatasetName, Settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([\w-]+)'")
FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
EXCEPTION = re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception): ")


class PipelineRun(BaseModel):
    seconds: float
    stage_seconds: dict[str, float]
    stage_status: dict[str, str]
    promotion_dir: Path | None


class _TaskClock:
    """A stdout stand-in that passes text through, notes when tasks start and finish,
    and keeps the exception a failed task ended with."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self.error: dict[str, str] = {}
        self._exception: list[str] = []

    def write(self, text: str) -> int:
        for line in ANSI.sub("", text).splitlines():
            if match := STARTED.search(line):
                self.started[match[1]] = time.perf_counter()
                self._exception = []
            elif match := FINISHED.search(line):
                if match[1] in self.started:
                    self.seconds[match[1]] = time.perf_counter() - self.started[match[1]]
                self.status[match[1]] = match[2]
                if self._exception:
                    self.error[match[1]] = "\n".join(self._exception)
            elif EXCEPTION.match(line):
                self._exception = [line.strip()]
            elif self._exception and line.strip():
                self._exception.append(line.rstrip())
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def task_environment(settings: Settings) -> Iterator[None]:
    """Tasks inherit this process's environment, as pods get theirs from Secrets on a cluster."""
    access_key, secret_key = settings.credentials
    task_env = {
        "EDGEOPS_S3_ACCESS_KEY": access_key,
        "EDGEOPS_S3_SECRET_KEY": secret_key,
        "EDGEOPS_S3_ENDPOINT": settings.s3_url,
        "EDGEOPS_MLFLOW_TRACKING_URI": settings.tracking_uri,
        "EDGEOPS_STATE_DIR": str(settings.state_dir.resolve()),
        "EDGEOPS_RELEASE__KEYS_DIR": str(settings.release.keys_dir.expanduser().resolve()),
        "EDGEOPS_PMD__DATA_DIR": str(settings.pmd.data_dir.resolve()),
        "PYTHONWARNINGS": "ignore::FutureWarning",
    }
    saved = {name: os.environ.get(name) for name in task_env}
    os.environ.update(task_env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pipeline_arguments(
    settings: Settings,
    manifest: Path | None = None,
    model_name: str | None = None,
    dataset: DatasetName = "mat",
    model: str | None = None,
) -> dict[str, Any]:
    """Pipeline parameters for one track from settings, so EDGEOPS_* overrides reach the compiled pipeline too."""
    return {
        "dataset": dataset,
        "model": model or settings.architecture_for(dataset),
        "session_manifest": str(manifest or settings.session_manifest),
        "model_name": model_name or settings.model_name_for(dataset),
        "channel": settings.release.channel,
        **settings.gates_for(dataset).model_dump(),
    }


def run_local(settings: Settings, arguments: dict[str, Any], pipeline_root: Path) -> PipelineRun:
    """Run `settings.pipeline_package` end to end; raise naming the failed task if one fails."""
    from kfp import components, local

    package = settings.pipeline_package
    if not package.is_file():
        raise EdgeopsError(f"compiled pipeline {package} not found; run `make compile`")
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root.resolve()))
    pipeline = components.load_component_from_file(str(package))
    # Local tasks read the manifest from this machine; on a cluster the path is inside the image.
    arguments = {**arguments, "session_manifest": str(Path(arguments["session_manifest"]).resolve())}
    clock = _TaskClock(sys.stdout)
    started = time.perf_counter()
    try:
        with task_environment(settings), contextlib.redirect_stdout(clock), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            task = pipeline(**arguments)
    except RuntimeError:
        failed = next((name for name, status in clock.status.items() if status != "SUCCESS"), "?")
        cause = clock.error.get(failed, "see the task's log above")
        raise EdgeopsError(f"pipeline failed at task {failed}:\n{cause}") from None
    promotion = task.outputs if not isinstance(task.outputs, dict) else next(iter(task.outputs.values()), None)
    return PipelineRun(
        seconds=time.perf_counter() - started,
        stage_seconds=clock.seconds,
        stage_status=clock.status,
        promotion_dir=Path(promotion.path) if promotion is not None else None,
    )
