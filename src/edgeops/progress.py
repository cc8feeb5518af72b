"""How far along long work is, for whoever waits on it.

Stages, benchmarks and fetches call `report`. It prints the line, as the CLI always did, and inside a pipeline
task it also appends it to the task's progress file (`stage_task` names it), from which the live view of
`edgeops pipeline run` and `edgeops demo` shows the running stage's progress beneath its line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROGRESS_FILE = "edgeops-progress.jsonl"  # beside a pipeline task's output

_sink: Path | None = None


@contextmanager
def recorded_in(path: Path) -> Iterator[None]:
    """While inside, progress is also appended to `path` (one JSON object per line)."""
    global _sink
    previous, _sink = _sink, path
    try:
        yield
    finally:
        _sink = previous


def report(message: str, done: int | None = None, total: int | None = None) -> None:
    """One step of long work: `message`, and where countable, `done` of `total`."""
    print(message, flush=True)
    if _sink is not None:
        with _sink.open("a") as handle:
            handle.write(json.dumps({"at": time.time(), "message": message, "done": done, "total": total}) + "\n")


def latest(path: Path) -> dict[str, Any] | None:
    """The newest progress line in `path`, if any."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            found: dict[str, Any] = json.loads(line)
            return found
        except json.JSONDecodeError:
            continue  # a line being written
    return None
