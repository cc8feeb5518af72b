"""Everything a device keeps, in one directory, and the only code that writes it.

    device.json      the repository this directory belongs to: model name and track, fixed at first use
    metadata/        TUF metadata (python-tuf keeps it; it is what makes rollback detectable)
    models/          <sha256>.pte, only ever models that passed verification and the smoke test
    downloads/       partial downloads; anything here is disposable
    installed.json   current and previous (last-known-good) model; replaced atomically = the swap
    status.json      what a human or a fleet tool wants to know
    predictions.jsonl
    agent.lock       flock'ed by the running agent (holds its pid): one agent per directory

A `kill -9` at any instant leaves `installed.json` either old or new, and both only
name model files that were complete and fsynced before the swap.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel

from edgeops.errors import EdgeopsError, InputError
from edgeops.files import sha256_file, write_atomically
from edgeops.ota.release import METADATA
from edgeops.settings import Dataset, check_sha256

DEVICE_FILE = "device.json"
IDENTITY_FILE = "device-id"  # the device's id for staged rollouts, when it is given none
INSTALLED_FILE = "installed.json"
STATUS_FILE = "status.json"
PREDICTIONS_FILE = "predictions.jsonl"
LOCK_FILE = "agent.lock"
MODELS, DOWNLOADS = "models", "downloads"

Report = Callable[[str], None]
Role = Literal["current", "previous"]


class StateDirError(EdgeopsError):
    """The state directory belongs to another repository (model name or track) than the agent follows."""


class StateDirBusyError(EdgeopsError):
    """Another agent holds the state directory's lock."""


class Binding(BaseModel):
    """Which repository a state directory follows: its TUF metadata and models mean nothing for another."""

    model_name: str
    track: Dataset


class InstalledModel(BaseModel):
    version: int
    channel: str
    sha256: str
    size: int
    release_target: str
    labels: list[str]
    input_shape: list[int]
    output_shape: list[int]
    installed_at: str


class Installed(BaseModel):
    current: InstalledModel | None = None
    previous: InstalledModel | None = None  # last-known-good
    rejected: list[str] = []  # release targets that failed their smoke test: not fetched again


class PollStats(BaseModel):
    outcome: str
    seconds: float
    requests: int
    metadata_bytes: int
    target_bytes: int


class Failure(BaseModel):
    """A failed poll, as an operator needs it: when, what kind of error, and what it said."""

    at: str
    type: str  # the exception's class, e.g. ExpiredMetadataError, NotADirectoryError, AgentError
    message: str
    reason: str | None = None  # the shared refusal word (edgeops.device.updater.REFUSAL_REASONS)


class Status(BaseModel):
    model_name: str
    track: str = ""
    channel: str
    repository: str
    installed: InstalledModel | None = None
    running: Role | None = None
    last_check: str | None = None
    last_success: str | None = None
    last_error: str | None = None  # the last poll's error; None once a poll succeeds
    last_failure: Failure | None = None  # the newest failed poll, kept after later successes
    failures_in_a_row: int = 0
    last_poll: PollStats | None = None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class DeviceState:
    """The state directory of one device following one model's channel."""

    def __init__(self, root: Path, model_name: str, track: Dataset, channel: str, repository: str) -> None:
        self.root = root
        self._bind(Binding(model_name=model_name, track=track))
        for directory in (root, self.metadata_dir, self.models_dir, self.downloads_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.status = self._load_status() or Status(
            model_name=model_name, track=track, channel=channel, repository=repository
        )

    def identity(self) -> str:
        """This device's id where it has no other: made once, kept in the state directory."""
        path = self.root / IDENTITY_FILE
        if not path.is_file():
            write_atomically(path, f"device-{secrets.token_hex(8)}\n".encode())
        return path.read_text().strip()

    def _bind(self, wanted: Binding) -> None:
        """Tie a new directory to one repository; refuse, before touching anything, one that follows another."""
        path = self.root / DEVICE_FILE
        if path.is_file():
            bound = Binding.model_validate_json(path.read_bytes())
            if bound != wanted:
                raise StateDirError(
                    f"{self.root} is the state of a device following {bound.model_name} ({bound.track} track), "
                    f"not {wanted.model_name} ({wanted.track} track): its verified metadata and models belong "
                    "to that repository; give this agent another --state-dir"
                )
            return
        earlier = self._load_status()  # a directory from before bindings: its status names its model
        if earlier is not None and earlier.model_name != wanted.model_name:
            raise StateDirError(
                f"{self.root} is the state of a device following {earlier.model_name}, not {wanted.model_name}; "
                "give this agent another --state-dir"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(path, wanted.model_dump_json(indent=2).encode())

    @property
    def metadata_dir(self) -> Path:
        return self.root / METADATA

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS

    @property
    def downloads_dir(self) -> Path:
        return self.root / DOWNLOADS

    def installed(self) -> Installed:
        path = self.root / INSTALLED_FILE
        if not path.exists():
            return Installed()
        try:
            return Installed.model_validate_json(path.read_bytes())
        except ValueError as error:  # written atomically by us: only a hand edit or a failing disk gets here
            raise StateDirError(
                f"{path} is unreadable ({' '.join(str(error).split())}); "
                "restore it, or delete it to have the next poll install the newest release again"
            ) from None

    def save_installed(self, installed: Installed) -> None:
        """The swap: one atomic replace of installed.json."""
        write_atomically(self.root / INSTALLED_FILE, installed.model_dump_json(indent=2).encode())

    def model_file(self, sha256: str) -> Path:
        """Where a verified model is kept: under its content hash (checked: it becomes a file name)."""
        return self.models_dir / f"{check_sha256('model sha256', sha256)}.pte"

    def download_file(self, sha256: str, suffix: str) -> Path:
        """Where a model is downloaded to before it is verified and kept."""
        return self.downloads_dir / f"{check_sha256('model sha256', sha256)}{suffix}"

    def model_path(self, model: InstalledModel) -> Path:
        return self.model_file(model.sha256)

    def is_intact(self, model: InstalledModel | None) -> bool:
        if model is None:
            return False
        try:
            path = self.model_path(model)
        except InputError:  # an installed.json edited by hand: nothing of ours to run
            return False
        return path.is_file() and path.stat().st_size == model.size and sha256_file(path) == model.sha256

    def running_model(self) -> tuple[InstalledModel, Role] | None:
        """The model to run: the current one if intact, else the last-known-good one."""
        installed = self.installed()
        if self.is_intact(installed.current):
            assert installed.current is not None
            return installed.current, "current"
        if self.is_intact(installed.previous):
            assert installed.previous is not None
            return installed.previous, "previous"
        return None

    def check_installed(self, report: Report) -> None:
        """At start: re-verify what is installed; a corrupted copy is removed so the next poll repairs it."""
        self.remove_temporaries()
        installed = self.installed()
        for role, model in (("current", installed.current), ("previous", installed.previous)):
            if model is not None and not self.is_intact(model):
                with contextlib.suppress(InputError):
                    self.model_path(model).unlink(missing_ok=True)
                report(f"[agent] {role} model v{model.version} ({model.sha256[:12]}) is corrupted; removed it")
        self.update_status()

    def remove_temporaries(self) -> None:
        """What a killed agent's atomic writes left beside the files they replace (`.<name>.<hex>.tmp`).
        Only at start, when no other agent writes here: `edgeops agent` holds the directory's lock by then."""
        for name in (DEVICE_FILE, INSTALLED_FILE, STATUS_FILE, IDENTITY_FILE):
            for path in self.root.glob(f".{name}.*.tmp"):
                path.unlink(missing_ok=True)

    def update_status(self, **changes: Any) -> None:
        try:
            running = self.running_model()
        except StateDirError:  # an unreadable installed.json: nothing verified to run, and the error says why
            running = None
        self.status = self.status.model_copy(
            update={
                **changes,
                "installed": running[0] if running else None,
                "running": running[1] if running else None,
            }
        )
        write_atomically(self.root / STATUS_FILE, self.status.model_dump_json(indent=2).encode())

    def collect_garbage(self, installed: Installed) -> None:
        """Keep the current and last-known-good models; everything else, and every download, goes."""
        keep = {self.model_path(m).name for m in (installed.current, installed.previous) if m is not None}
        for path in self.models_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
        for path in self.downloads_dir.iterdir():
            path.unlink(missing_ok=True)

    def _load_status(self) -> Status | None:
        path = self.root / STATUS_FILE
        if path.exists():
            try:
                return Status.model_validate_json(path.read_bytes())
            except ValueError:
                pass  # a status file is advisory; start a fresh one
        return None


class StateLock:
    """An exclusive, non-blocking `flock` on `agent.lock` in a state directory, held until `release()`.

    The kernel drops it when the process dies, however it dies, so a killed agent never leaves a stale lock.
    A second agent on the same directory is refused at once, naming the pid that holds it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        path = root / LOCK_FILE
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(self._fd)
            self.release()
            raise StateDirBusyError(
                f"{root} is in use by another edgeops agent ({f'pid {holder}' if holder else 'pid unknown'}, "
                f"holding {path}): two agents on one state directory would corrupt each other's downloads and "
                "installs; stop that agent first, or give this one another --state-dir"
            ) from error
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    """The pid the lock holder wrote, if it got that far."""
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
