"""`edgeops record`: a session from the mat over BLE, saved as CSVs and a session.json that ingest reads unchanged."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from contextlib import aclosing, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from bleak.backends.client import BaseBleakClient
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from edgeops.datasets.mat import MANIFEST_FILE
from edgeops.device.ble import MatError, MatSession, describe_bad
from edgeops.errors import EdgeopsError
from edgeops.files import atomic_write
from edgeops.settings import MatDataConfig, Settings

# Not a bad payload: a valid frame arriving in the same millisecond as the previous one,
# which the CSV's millisecond timestamps cannot tell apart.
SAME_MILLISECOND = "same_millisecond"
DEFAULT_DESCRIPTION = "BLE recordings of the Seroton haptic mat made with `edgeops record`"


class RecordError(EdgeopsError):
    """A recording that cannot start or cannot be kept."""


class RecordedFile(BaseModel):
    """One recording's entry in session.json: what ingest needs (file, label) and how it was made."""

    file: str
    label: str
    address: str
    started_at: datetime
    duration_s: float
    frames: int
    bad_frames: dict[str, int]


class RecordResult(BaseModel):
    csv: Path
    manifest: Path
    recording: RecordedFile


def record(
    address: str,
    label: str,
    duration_s: float,
    session_dir: Path,
    settings: Settings,
    backend: type[BaseBleakClient] | None = None,
) -> RecordResult:
    """Record `duration_s` seconds from the mat into `session_dir` as `<label>-<time>.csv` plus session.json.

    The CSV appears only when complete; an error or Ctrl-C leaves the directory as it was.
    """
    return asyncio.run(record_session(address, label, duration_s, session_dir, settings, backend))


async def record_session(
    address: str,
    label: str,
    duration_s: float,
    session_dir: Path,
    settings: Settings,
    backend: type[BaseBleakClient] | None = None,
) -> RecordResult:
    """`record` for callers that already run an event loop."""
    config = settings.mat.data
    if label not in config.labels:
        raise RecordError(f"unknown label '{label}' (known labels: {', '.join(config.labels)})")
    if duration_s <= 0:
        raise RecordError(f"duration must be positive, not {duration_s:g} s")
    manifest_path = session_dir / MANIFEST_FILE
    _read_manifest(manifest_path)  # a broken manifest fails now, not after the recording
    csv_path = session_dir / f"{label}-{datetime.now():%Y%m%dT%H%M%S}.csv"
    if csv_path.exists():
        raise RecordError(f"{csv_path} already exists; wait a second and record again")
    created = not session_dir.exists()
    session_dir.mkdir(parents=True, exist_ok=True)
    session = MatSession(address, settings, backend)
    try:
        frames, bad = await _capture(session, csv_path, label, duration_s, config)
    except BaseException:
        if created:
            with suppress(OSError):
                session_dir.rmdir()  # only if still empty
        raise

    entry = RecordedFile(
        file=csv_path.name,
        label=label,
        address=address,
        started_at=session.polling_since or datetime.now(),
        duration_s=duration_s,
        frames=frames,
        bad_frames=dict(sorted(bad.items())),
    )
    manifest = _read_manifest(manifest_path)  # afresh: another recording may have joined meanwhile
    manifest["recordings"].append(entry.model_dump(mode="json"))
    with atomic_write(manifest_path, "w") as handle:
        handle.write(json.dumps(manifest, indent=2) + "\n")
    return RecordResult(csv=csv_path, manifest=manifest_path, recording=entry)


async def _capture(
    session: MatSession, csv_path: Path, label: str, duration_s: float, config: MatDataConfig
) -> tuple[int, Counter[str]]:
    """Stream the session's frames into the CSV; return the rows written and the frames dropped, by reason."""
    dropped: Counter[str] = Counter()
    frames = 0
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.fields[label]}[/]"),
        BarColumn(),
        TextColumn("{task.fields[frames]} frames, bad: {task.fields[bad]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with atomic_write(csv_path, "w") as out, progress:
        task = progress.add_task("record", total=duration_s, label=label, frames=0, bad="none")
        out.write(",".join([config.timestamp_column, *config.channel_columns]) + "\n")
        previous: datetime | None = None
        async with aclosing(session.frames(duration_s)) as stream:
            async for frame in stream:
                arrival = frame.arrival.replace(microsecond=frame.arrival.microsecond // 1000 * 1000)
                if previous is not None and arrival <= previous:  # the CSV's timestamps must strictly increase
                    dropped[SAME_MILLISECOND] += 1
                    continue
                previous = arrival
                stamp = arrival.strftime(config.timestamp_format)[:-3]  # microseconds -> milliseconds
                out.write(",".join([stamp, *map(repr, frame.pressures)]) + "\n")
                frames += 1
                progress.update(
                    task,
                    completed=(frame.arrival - (session.polling_since or frame.arrival)).total_seconds(),
                    frames=frames,
                    bad=describe_bad(session.bad + dropped),
                )
        bad = session.bad + dropped
        if frames == 0:
            raise MatError(
                f"no valid frame from the mat at {session.address} in {duration_s:g} s "
                f"(bad frames: {describe_bad(bad)})"
            )
    return frames, bad


def _read_manifest(path: Path) -> dict[str, Any]:
    """The session's manifest so far, or a fresh one; a malformed one is an error, never overwritten."""
    if not path.exists():
        return {"description": DEFAULT_DESCRIPTION, "recordings": []}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RecordError(f"{path}: cannot read the session manifest: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("recordings"), list):
        raise RecordError(f'{path}: not a session manifest ({{"recordings": [...]}}); fix or move it first')
    return manifest
