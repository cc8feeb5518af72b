"""The edge agent: poll signed releases, install only verified models, never end up without one.

Everything the device keeps lives in one state directory:

    metadata/        TUF metadata (python-tuf keeps it; it is what makes rollback detectable)
    models/          <sha256>.pte, only ever models that passed verification and the smoke test
    downloads/       partial downloads; anything here is disposable
    installed.json   current and previous (last-known-good) model; replaced atomically = the swap
    status.json      what a human or a fleet tool wants to know
    predictions.jsonl

A `kill -9` at any instant leaves `installed.json` either old or new, and both only
name model files that were complete and fsynced before the swap.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import urllib3
from pydantic import BaseModel
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from edgeops.errors import EdgeopsError
from edgeops.release import METADATA, Release
from edgeops.settings import Settings
from edgeops.storage import sha256_file

if TYPE_CHECKING:
    from edgeops.frames import Frame
    from edgeops.runtime import Program

INSTALLED_FILE = "installed.json"
STATUS_FILE = "status.json"
PREDICTIONS_FILE = "predictions.jsonl"
MODELS, DOWNLOADS = "models", "downloads"
CHUNK_BYTES = 64 * 1024

Report = Callable[[str], None]


class AgentError(EdgeopsError):
    """A poll failed; the model that was running keeps running."""


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


class Status(BaseModel):
    model_name: str
    channel: str
    repository: str
    installed: InstalledModel | None = None
    running: Literal["current", "previous"] | None = None
    last_check: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    last_poll: PollStats | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: readers and crashes see old or new, never half."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class MeteredFetcher(Urllib3Fetcher):
    """Counts what each poll costs and bounds the whole poll, not only the gaps between bytes."""

    def __init__(self, socket_timeout: float, deadline: float) -> None:
        super().__init__(socket_timeout=int(max(1, socket_timeout)), chunk_size=CHUNK_BYTES)
        self.deadline = deadline
        self.requests = self.metadata_bytes = self.target_bytes = 0
        self._metadata = False

    def _check_deadline(self, url: str) -> None:
        if time.monotonic() > self.deadline:
            raise tuf_errors.SlowRetrievalError(f"poll deadline passed while fetching {url}")

    def _fetch(self, url: str) -> Iterator[bytes]:
        self._check_deadline(url)
        self.requests += 1
        self._metadata = f"/{METADATA}/" in url
        return super()._fetch(url)

    def _chunks(self, response: urllib3.response.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            while chunk := response.read1(self.chunk_size):
                if self._metadata:
                    self.metadata_bytes += len(chunk)
                else:
                    self.target_bytes += len(chunk)
                yield chunk
                self._check_deadline(response.geturl() or "")
        except urllib3.exceptions.TimeoutError as error:
            raise tuf_errors.SlowRetrievalError("no data within the socket timeout") from error
        finally:
            response.release_conn()


def _describe(error: Exception) -> str:
    """Name the class of failure first: that is what an operator acts on."""
    kinds = [
        (tuf_errors.ExpiredMetadataError, "expired metadata (a frozen repository, or the timestamp was not re-signed)"),
        (tuf_errors.BadVersionNumberError, "older metadata than the device has seen (rollback)"),
        (tuf_errors.UnsignedMetadataError, "metadata not signed by the trusted keys"),
        (tuf_errors.LengthOrHashMismatchError, "a file does not match its signed length and hash"),
        (tuf_errors.DownloadLengthMismatchError, "more data than the signed length (endless data)"),
        (tuf_errors.SlowRetrievalError, "the repository is too slow (poll deadline)"),
        (tuf_errors.DownloadHTTPError, "a signed file is missing from the repository"),
        (tuf_errors.RepositoryError, "the repository failed verification"),
        (tuf_errors.DownloadError, "download failed"),
    ]
    for kind, meaning in kinds:
        if isinstance(error, kind):
            return f"{meaning}: {type(error).__name__}: {error}"
    return f"{type(error).__name__}: {error}"


class Agent:
    """One device's view of one model's releases in one channel."""

    def __init__(
        self,
        settings: Settings,
        state_dir: Path | None = None,
        model_name: str | None = None,
        channel: str | None = None,
        repository_url: str | None = None,
        trusted_root: Path | None = None,
        report: Report | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.agent
        self.state_dir = state_dir or self.config.state_dir
        self.model_name = model_name or settings.model_name
        self.channel = channel or settings.release.channel
        self.repository_url = (repository_url or settings.ota_url(self.model_name)).rstrip("/") + "/"
        self.trusted_root = trusted_root or settings.release.keys_dir / "root.json"
        self.report = report or (lambda _message: None)
        for directory in (self.state_dir, self.metadata_dir, self.models_dir, self.downloads_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.status = self._load_status()
        self._lock = threading.Lock()

    @property
    def metadata_dir(self) -> Path:
        return self.state_dir / METADATA

    @property
    def models_dir(self) -> Path:
        return self.state_dir / MODELS

    @property
    def downloads_dir(self) -> Path:
        return self.state_dir / DOWNLOADS

    # --- local state ---

    def installed(self) -> Installed:
        path = self.state_dir / INSTALLED_FILE
        return Installed.model_validate_json(path.read_bytes()) if path.exists() else Installed()

    def model_path(self, model: InstalledModel) -> Path:
        return self.models_dir / f"{model.sha256}.pte"

    def is_intact(self, model: InstalledModel | None) -> bool:
        if model is None:
            return False
        path = self.model_path(model)
        return path.is_file() and path.stat().st_size == model.size and sha256_file(path) == model.sha256

    def running_model(self) -> tuple[InstalledModel, Literal["current", "previous"]] | None:
        """The model to run: the current one if intact, else the last-known-good one."""
        installed = self.installed()
        if self.is_intact(installed.current):
            assert installed.current is not None
            return installed.current, "current"
        if self.is_intact(installed.previous):
            assert installed.previous is not None
            return installed.previous, "previous"
        return None

    def check_installed(self) -> None:
        """At start: re-verify what is installed; a corrupted copy is removed so the next poll repairs it."""
        installed = self.installed()
        for role, model in (("current", installed.current), ("previous", installed.previous)):
            if model is not None and not self.is_intact(model):
                self.model_path(model).unlink(missing_ok=True)
                self.report(f"[agent] {role} model v{model.version} ({model.sha256[:12]}) is corrupted; removed it")
        self._update_status()

    def _load_status(self) -> Status:
        path = self.state_dir / STATUS_FILE
        if path.exists():
            try:
                return Status.model_validate_json(path.read_bytes())
            except ValueError:
                pass  # a status file is advisory; start a fresh one
        return Status(model_name=self.model_name, channel=self.channel, repository=self.repository_url)

    def _update_status(self, **changes: Any) -> None:
        running = self.running_model()
        self.status = self.status.model_copy(
            update={
                **changes,
                "installed": running[0] if running else None,
                "running": running[1] if running else None,
            }
        )
        write_atomically(self.state_dir / STATUS_FILE, self.status.model_dump_json(indent=2).encode())

    # --- one poll ---

    def _trusted_root(self) -> bytes:
        """The newest root this device has verified, else the one it was provisioned with.

        python-tuf keeps `root_history/N.root.json` and points `root.json` at the newest; a kill
        between its remove and symlink leaves only the history, which is just as trustworthy.
        """
        cached = self.metadata_dir / "root.json"
        if cached.exists():
            return cached.read_bytes()
        history = sorted(self.metadata_dir.glob("root_history/*.root.json"), key=lambda p: int(p.name.split(".")[0]))
        if history:
            return history[-1].read_bytes()
        if self.trusted_root.is_file():
            return self.trusted_root.read_bytes()
        raise AgentError(
            f"no trusted root: provision the device with --root (the publisher's root.json); "
            f"looked for {self.trusted_root}"
        )

    def _updater(self, fetcher: MeteredFetcher) -> Updater:
        for leftover in self.metadata_dir.glob("tmp*"):  # python-tuf's temporary files from a killed poll
            leftover.unlink(missing_ok=True)
        bootstrap = self._trusted_root()
        return Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=self.repository_url + METADATA + "/",
            target_base_url=self.repository_url,
            fetcher=fetcher,
            # Our target names are content-addressed already.
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=bootstrap,
        )

    def _newest_release(self) -> tuple[int, str]:
        """Highest version in our channel, from the targets metadata refresh() just verified."""
        targets = Metadata[Targets].from_bytes((self.metadata_dir / "targets.json").read_bytes()).signed
        releases = [
            (int(target.custom["version"]), path)
            for path, target in targets.targets.items()
            if path.startswith("releases/") and target.custom.get("channel") == self.channel
        ]
        if not releases:
            raise AgentError(f"{self.model_name} has no release in channel '{self.channel}'")
        return max(releases)

    def poll(self) -> PollStats:
        """One cycle. Raises AgentError on any failure; what was running keeps running."""
        with self._lock:
            started = time.monotonic()
            fetcher = MeteredFetcher(self.config.socket_timeout_s, started + self.config.cycle_deadline_s)
            try:
                outcome = self._poll(fetcher)
            except Exception as error:
                stats = self._stats("error", started, fetcher)
                message = error.args[0] if isinstance(error, AgentError) else _describe(error)
                self._update_status(last_check=_now(), last_error=message, last_poll=stats)
                raise AgentError(message) from error
            stats = self._stats(outcome, started, fetcher)
            now = _now()
            self._update_status(last_check=now, last_success=now, last_error=None, last_poll=stats)
            return stats

    @staticmethod
    def _stats(outcome: str, started: float, fetcher: MeteredFetcher) -> PollStats:
        return PollStats(
            outcome=outcome,
            seconds=round(time.monotonic() - started, 4),
            requests=fetcher.requests,
            metadata_bytes=fetcher.metadata_bytes,
            target_bytes=fetcher.target_bytes,
        )

    def _poll(self, fetcher: MeteredFetcher) -> str:
        updater = self._updater(fetcher)
        updater.refresh()
        version, release_target = self._newest_release()
        installed = self.installed()
        current = installed.current
        if current is not None and version < current.version:
            raise AgentError(
                f"the repository's newest {self.channel} release is version {version}, but version "
                f"{current.version} is installed: refusing to go back (rollback attack or a reset repository)"
            )
        if current is not None and current.release_target == release_target and self.is_intact(current):
            return f"up to date at v{version}"
        if release_target in installed.rejected:
            return f"v{version} was rejected earlier; staying on v{current.version if current else '-'}"

        release = self._fetch_release(updater, release_target, version)
        candidate = self._fetch_model(updater, release)
        try:
            self._smoke_test(candidate, release)
        except Exception as error:
            if candidate.parent == self.downloads_dir:
                candidate.unlink(missing_ok=True)
            rejected = installed.model_copy(update={"rejected": [*installed.rejected, release_target]})
            write_atomically(self.state_dir / INSTALLED_FILE, rejected.model_dump_json(indent=2).encode())
            raise AgentError(
                f"release v{version} ({release.sha256[:12]}) failed its smoke test and was not installed: {error}"
            ) from None
        self._swap(installed, candidate, release, release_target)
        return f"installed v{version}"

    def _fetch_release(self, updater: Updater, path: str, version: int) -> Release:
        info = updater.get_targetinfo(path)
        if info is None:  # listed a moment ago; only a broken repository gets here
            raise AgentError(f"{path} vanished from the signed targets")
        partial = self.downloads_dir / "release.json.part"
        updater.download_target(info, filepath=str(partial))
        release = Release.model_validate_json(partial.read_bytes())
        partial.unlink()
        if (release.model_name, release.channel, release.version) != (self.model_name, self.channel, version):
            raise AgentError(
                f"{path} describes {release.model_name} {release.channel} v{release.version}, but is signed as "
                f"{self.model_name} {self.channel} v{version} (mix-and-match)"
            )
        return release

    def _fetch_model(self, updater: Updater, release: Release) -> Path:
        """A verified copy of the release's model: one already kept (e.g. on rollback), or a fresh download."""
        info = updater.get_targetinfo(release.model_target)
        if info is None:
            raise AgentError(f"{release.model_target} is not a signed target")
        if info.hashes.get("sha256") != release.sha256 or info.length != release.size:
            raise AgentError(f"{release.model_target} is signed with a different hash or size than its release says")
        kept = self.models_dir / f"{release.sha256}.pte"
        if updater.find_cached_target(info, str(kept)):
            return kept
        candidate = self.downloads_dir / f"{release.sha256}.pte"
        partial = self.downloads_dir / f"{release.sha256}.part"
        updater.download_target(info, filepath=str(partial))  # verifies length and hash
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, candidate)
        return candidate

    def _smoke_test(self, path: Path, release: Release) -> None:
        import torch

        from edgeops.runtime import Program

        program = Program(path)
        reference = torch.tensor(release.reference_input, dtype=torch.float32)
        program.check(release.input["shape"], release.output["shape"], reference)
        output = program(reference)
        expected = torch.tensor(release.reference_output, dtype=torch.float32)
        difference = float((output - expected).abs().max())
        if difference > self.config.smoke_tolerance:
            raise AgentError(
                f"output on the reference input differs from the released output by {difference:.4g} "
                f"(tolerance {self.config.smoke_tolerance})"
            )

    def _swap(self, installed: Installed, candidate: Path, release: Release, release_target: str) -> None:
        new = InstalledModel(
            version=release.version,
            channel=release.channel,
            sha256=release.sha256,
            size=release.size,
            release_target=release_target,
            labels=release.labels,
            input_shape=release.input["shape"],
            output_shape=release.output["shape"],
            installed_at=_now(),
        )
        kept = self.models_dir / f"{release.sha256}.pte"
        if candidate != kept:
            os.replace(candidate, kept)
            _fsync_dir(self.models_dir)
        current = installed.current
        previous = current if current is not None and current.sha256 != new.sha256 else installed.previous
        if previous is not None and not self.is_intact(previous):
            previous = None
        swapped = Installed(current=new, previous=previous, rejected=installed.rejected)
        write_atomically(self.state_dir / INSTALLED_FILE, swapped.model_dump_json(indent=2).encode())
        self._collect_garbage(swapped)

    def _collect_garbage(self, installed: Installed) -> None:
        keep = {f"{m.sha256}.pte" for m in (installed.current, installed.previous) if m is not None}
        for path in self.models_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
        for path in self.downloads_dir.iterdir():
            path.unlink(missing_ok=True)


class Predictor:
    """Runs the installed model on a sliding window of frames."""

    def __init__(self, agent: Agent, recent: deque[tuple[float, ...]] | None = None) -> None:
        from edgeops.runtime import Program

        running = agent.running_model()
        if running is None:
            raise AgentError("no verified model is installed")
        self.model, self.role = running
        self.program: Program = Program(agent.model_path(self.model))
        # Frames seen under the previous model carry over: a new model classifies from its first frame.
        self.window: deque[tuple[float, ...]] = deque(recent or (), maxlen=self.model.input_shape[1])

    def feed(self, frame: Frame) -> dict[str, Any] | None:
        import torch

        self.window.append(frame.pressures)
        if len(self.window) < (self.window.maxlen or 0):
            return None
        logits = self.program(torch.tensor([list(self.window)], dtype=torch.float32))[0]
        return {
            "at": _now(),
            "time": frame.arrival.isoformat(timespec="milliseconds"),
            "version": self.model.version,
            "label": self.model.labels[int(logits.argmax())],
            "logits": [round(float(v), 4) for v in logits],
        }


def run(
    agent: Agent,
    interval_s: float,
    frames: Iterator[Frame] | None,
    report: Report,
    stop: threading.Event | None = None,
) -> None:
    """Poll every `interval_s` in the background while classifying frames (if any) in the foreground."""
    stop = stop or threading.Event()
    changed = threading.Event()

    def poll_forever() -> None:
        while not stop.is_set():
            before = agent.installed().current
            try:
                stats = agent.poll()
                if agent.installed().current != before:
                    report(f"[agent] {stats.outcome} in {stats.seconds:.2f} s")
                    changed.set()
            except AgentError as error:
                report(f"[agent] poll failed, keeping the running model: {error}")
            stop.wait(interval_s)

    poller = threading.Thread(target=poll_forever, name="edgeops-poller", daemon=True)
    poller.start()
    try:
        if frames is None:
            while not stop.wait(3600):
                pass
            return
        predictor: Predictor | None = None
        with (agent.state_dir / PREDICTIONS_FILE).open("a") as log:
            for frame in frames:
                if stop.is_set():
                    break
                if predictor is None or changed.is_set():
                    changed.clear()
                    if agent.running_model() is None:
                        continue  # nothing verified to run yet; the poller is working on it
                    predictor = Predictor(agent, predictor.window if predictor else None)
                    report(f"[agent] running v{predictor.model.version} ({predictor.role})")
                prediction = predictor.feed(frame)
                if prediction is not None:
                    log.write(json.dumps(prediction) + "\n")
                    log.flush()
                    report(f"{prediction['time']}  v{prediction['version']}  {prediction['label']}")
    finally:
        stop.set()
        poller.join(timeout=agent.config.cycle_deadline_s + agent.config.socket_timeout_s)
