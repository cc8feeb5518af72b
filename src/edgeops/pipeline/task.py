"""Inside a KFP component: time the stage and record the outcome where the runner (and the KFP UI) can read it.

On success the time goes into the output artifact's metadata; on failure the error goes into a file
beside the output, from which the local runner reports the stage that failed and why.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from edgeops import progress

STARTED_AT, SECONDS = "stage_started_at", "stage_seconds"  # artifact metadata keys
FAILURE_FILE = "edgeops-failure.json"  # beside a failed task's output
EXECUTOR_OUTPUT = "executor_output.json"  # what KFP's executor leaves in a task's directory on success
SUCCESS, FAILURE = "SUCCESS", "FAILURE"


class OutputArtifact(Protocol):
    path: str
    metadata: dict[str, Any]


def process_started_at() -> float:
    """Wall-clock time this process started, so a stage's time includes its interpreter start-up (Linux;
    elsewhere, now)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


@contextmanager
def stage_task(output: OutputArtifact) -> Iterator[None]:
    """Wrap a component's call to its stage: record its wall time, or its error, for whoever runs the pipeline."""
    started = process_started_at()
    try:
        with progress.recorded_in(Path(output.path).parent / progress.PROGRESS_FILE):
            yield
    except BaseException as error:
        failure = {STARTED_AT: started, SECONDS: time.time() - started, "error": f"{type(error).__name__}: {error}"}
        with suppress(OSError):  # reporting must never hide the error itself
            Path(output.path).parent.joinpath(FAILURE_FILE).write_text(json.dumps(failure))
        raise
    output.metadata.update({STARTED_AT: started, SECONDS: round(time.time() - started, 3)})


def recorded_metadata(executor_output: Path) -> dict[str, Any] | None:
    """The metadata of the output artifact a successful task recorded its stage time in."""
    if not executor_output.is_file():
        return None
    for listed in json.loads(executor_output.read_text()).get("artifacts", {}).values():
        for artifact in listed.get("artifacts", []):
            metadata: dict[str, Any] = artifact.get("metadata", {})
            if SECONDS in metadata:
                return metadata
    return None


class StageOutcome(BaseModel):
    name: str
    status: str
    started_at: float
    seconds: float
    error: str = ""


def stage_outcomes(run_dir: Path) -> list[StageOutcome]:
    """What each task of one local run recorded about itself, in the order they started."""
    outcomes = []
    for task_dir in (path for path in run_dir.iterdir() if path.is_dir()):
        failure = task_dir / FAILURE_FILE
        if failure.is_file():
            record = json.loads(failure.read_text())
            status, error = FAILURE, record["error"]
        elif (record := recorded_metadata(task_dir / EXECUTOR_OUTPUT)) is not None:
            status, error = SUCCESS, ""
        else:
            continue  # not started, or died before its stage began
        outcomes.append(
            StageOutcome(
                name=task_dir.name, status=status, started_at=record[STARTED_AT], seconds=record[SECONDS], error=error
            )
        )
    return sorted(outcomes, key=lambda outcome: outcome.started_at)


def new_run_dirs(pipeline_root: Path, earlier: set[Path]) -> list[Path]:
    """The run directories created since `earlier` (KFP names each `<pipeline>-<timestamp>`)."""
    return sorted(path for path in pipeline_root.iterdir() if path not in earlier and path.is_dir())


def run_outcomes(pipeline_root: Path, earlier: set[Path]) -> list[StageOutcome]:
    """The stage outcomes of the runs created since `earlier`."""
    return [outcome for run_dir in new_run_dirs(pipeline_root, earlier) for outcome in stage_outcomes(run_dir)]
