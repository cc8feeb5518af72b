"""The TUF side of a poll: verified metadata, the newest release of our channel, verified downloads.

python-tuf's ngclient does the verification (root chain, timestamp -> snapshot -> targets, versions
that never go back, expiry, signatures, lengths and hashes); this module bounds it in time, counts
what it costs, and reads our release layout on top of it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import urllib3
from pydantic import ValidationError
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from edgeops.device.state import DeviceState
from edgeops.errors import EdgeopsError, InputError
from edgeops.ota.release import METADATA, Release
from edgeops.settings import check_sha256

CHUNK_BYTES = 64 * 1024


class AgentError(EdgeopsError):
    """A poll failed; the model that was running keeps running.

    `reason` is the shared refusal word (REFUSAL_REASONS) when the agent itself refused; None when the cause says it.
    """

    def __init__(self, message: str, reason: str | None = None, version: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.version = version  # the release refused, when the agent knew which


class NewestRelease(NamedTuple):
    """The newest release of a channel, as the signed targets metadata lists it."""

    version: int
    target: str  # the descriptor's target path
    track: str | None  # the dataset the release is for; None in releases published before tracks were signed
    rollout: int = 100  # the percentage of devices it is for (staged rollouts)


class MeteredFetcher(Urllib3Fetcher):
    """Counts what each poll costs and bounds the whole poll, not only the gaps between bytes."""

    def __init__(self, socket_timeout: float, deadline: float) -> None:
        super().__init__(socket_timeout=int(max(1, socket_timeout)), chunk_size=CHUNK_BYTES)
        self.deadline = deadline
        self.requests = self.metadata_bytes = self.target_bytes = 0
        self._metadata = False
        self.downloaded: dict[str, bytes] = {}  # metadata file name -> the bytes last fetched under it

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """ngclient fetches metadata through here; kept so an expired role can be shown with its expiry."""
        data = super().download_bytes(url, max_length)
        self.downloaded[url.rsplit("/", 1)[-1]] = data
        return data

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


# ngclient's messages: "Final root.json is expired", "timestamp.json is expired", "New targets is expired".
EXPIRED_ROLE = re.compile(r"\b(root|timestamp|snapshot|targets)\b")
HEARTBEAT = "the publisher must run `edgeops release heartbeat --all`"
# What the publisher must do about each expired role; the device can only wait for it.
EXPIRY_REMEDY = {
    "root": "the publisher must rotate/renew the root with `edgeops keys rotate-root` and publish it",
    "timestamp": (
        f"{HEARTBEAT} (and schedule it well inside the timestamp expiry); "
        "if it does, someone is serving a frozen copy of the repository"
    ),
    "snapshot": HEARTBEAT,
    "targets": HEARTBEAT,
}


def expired_role(error: tuf_errors.ExpiredMetadataError) -> str | None:
    """The top-level role python-tuf found expired, from its message."""
    found = EXPIRED_ROLE.search(str(error))
    return found.group(1) if found else None


def describe_expiry(role: str | None, expires: datetime | None = None) -> str:
    """What expired, when, and who must do what about it."""
    if role is None:
        return "expired metadata: the repository's metadata expired; the publisher must re-sign it"
    when = f" at {expires.isoformat(timespec='seconds').replace('+00:00', 'Z')}" if expires else ""
    return f"expired metadata: the repository's {role} metadata expired{when}: {EXPIRY_REMEDY[role]}"


FAILURE_KINDS: list[tuple[type[Exception], str]] = [
    (tuf_errors.BadVersionNumberError, "older metadata than the device has seen (rollback)"),
    (tuf_errors.UnsignedMetadataError, "metadata not signed by the trusted keys"),
    (tuf_errors.LengthOrHashMismatchError, "a file does not match its signed length and hash"),
    (tuf_errors.DownloadLengthMismatchError, "more data than the signed length (endless data)"),
    (tuf_errors.SlowRetrievalError, "the repository is too slow (poll deadline)"),
    (tuf_errors.DownloadHTTPError, "a signed file is missing from the repository"),
    (tuf_errors.RepositoryError, "the repository failed verification"),
    (tuf_errors.DownloadError, "download failed"),
]


# The refusal reasons both device clients (this agent, the Kotlin OTA client) report, one word each, so a
# fleet tool or the shared attack vectors can compare them. Most specific type first.
REFUSAL_REASONS: list[tuple[type[Exception], str]] = [
    (tuf_errors.ExpiredMetadataError, "expired"),
    (tuf_errors.BadVersionNumberError, "rollback"),
    (tuf_errors.UnsignedMetadataError, "signature"),
    (tuf_errors.LengthOrHashMismatchError, "hash"),
    (tuf_errors.DownloadLengthMismatchError, "length"),
    (tuf_errors.SlowRetrievalError, "deadline"),
    (tuf_errors.DownloadHTTPError, "missing"),
    (tuf_errors.RepositoryError, "metadata"),  # e.g. metadata that does not parse
    (ValidationError, "metadata"),  # a release descriptor that does not parse
]


def refusal_reason(error: BaseException) -> str:
    """One word for why a poll was refused (see REFUSAL_REASONS), from the error and the errors it came from."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__
    for link in chain:
        if isinstance(link, AgentError) and link.reason is not None:
            return link.reason
        for kind, reason in REFUSAL_REASONS:
            if isinstance(link, kind):
                return reason
    return "other"


def describe(error: Exception) -> str:
    """Name the class of failure first: that is what an operator acts on."""
    if isinstance(error, tuf_errors.ExpiredMetadataError):
        return f"{describe_expiry(expired_role(error))} ({type(error).__name__}: {error})"
    for kind, meaning in FAILURE_KINDS:
        if isinstance(error, kind):
            return f"{meaning}: {type(error).__name__}: {error}"
    return f"{type(error).__name__}: {error}"


def newest_trusted_root(metadata_dir: Path) -> bytes | None:
    """The newest root verified into `metadata_dir` (None: none yet).

    python-tuf keeps `root_history/N.root.json` and points `root.json` at the newest; a kill
    between its remove and symlink leaves only the history, which is just as trustworthy.
    """
    cached = metadata_dir / "root.json"
    if cached.exists():
        return cached.read_bytes()
    history = sorted(metadata_dir.glob("root_history/*.root.json"), key=lambda p: int(p.name.split(".")[0]))
    return history[-1].read_bytes() if history else None


def tuf_updater(
    metadata_dir: Path,
    metadata_url: str,
    fetcher: MeteredFetcher,
    bootstrap: bytes | None,
    target_url: str | None = None,
    prefix_targets_with_hash: bool = True,
) -> Updater:
    """The one ngclient Updater of this project: the agent's polls and the tuf-conformance client use it.

    `bootstrap` is the root to start from; None reads `root.json` in `metadata_dir`. With
    `prefix_targets_with_hash`, targets are fetched as `<hash>.<name>` under consistent snapshots.
    """
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=metadata_url,
        target_base_url=target_url,
        fetcher=fetcher,
        config=UpdaterConfig(prefix_targets_with_hash=prefix_targets_with_hash),
        bootstrap=bootstrap,
    )


class ReleaseUpdater:
    """One poll's view of one model's repository, verified by python-tuf, for one channel."""

    def __init__(
        self,
        state: DeviceState,
        repository_url: str,
        trusted_root: Path,
        model_name: str,
        channel: str,
        cohort: float = 0.0,
    ) -> None:
        """`cohort`: where this device sits in staged rollouts (edgeops.ota.release.cohort_position)."""
        self.cohort = cohort
        self.state = state
        self.repository_url = repository_url
        self.trusted_root = trusted_root
        self.model_name = model_name
        self.channel = channel

    def refresh(self, fetcher: MeteredFetcher, reference_time: datetime | None = None) -> tuple[Updater, NewestRelease]:
        """Verified top-level metadata, then the newest release of our channel.

        `reference_time` judges expiry at another time than now: `edgeops bench-freshness` replays years
        on a fake clock through this very code (python-tuf has no public knob for it).
        """
        updater = self._updater(fetcher)
        if reference_time is not None:
            updater._trusted_set.reference_time = reference_time
        try:
            updater.refresh()
        except tuf_errors.ExpiredMetadataError as error:
            role = expired_role(error)
            message = f"{describe_expiry(role, self._expiry(role, fetcher))} ({type(error).__name__}: {error})"
            raise AgentError(message) from error
        return updater, self._newest_release()

    def _expiry(self, role: str | None, fetcher: MeteredFetcher) -> datetime | None:
        """When `role` expired: from the copy this poll fetched (ngclient does not keep an expired one),
        else from the device's own copy (a root, or metadata it had verified before)."""
        if role is None:
            return None
        name = f"{role}.json"
        fetched = [data for file, data in fetcher.downloaded.items() if file == name or file.endswith("." + name)]
        local = self.state.metadata_dir / name
        for data in [*reversed(fetched), local.read_bytes() if local.is_file() else b""]:
            try:
                return Metadata.from_bytes(data).signed.expires
            except Exception:  # unreadable: the error itself still names the role
                continue
        return None

    def _trusted_root(self) -> bytes:
        """The newest root this device has verified, else the one it was provisioned with."""
        verified = newest_trusted_root(self.state.metadata_dir)
        if verified is not None:
            return verified
        if self.trusted_root.is_file():
            return self.trusted_root.read_bytes()
        raise AgentError(
            f"no trusted root: provision the device with --root (the publisher's root.json); "
            f"looked for {self.trusted_root}"
        )

    def _updater(self, fetcher: MeteredFetcher) -> Updater:
        for leftover in self.state.metadata_dir.glob("tmp*"):  # python-tuf's temporary files from a killed poll
            leftover.unlink(missing_ok=True)
        return tuf_updater(
            self.state.metadata_dir,
            self.repository_url + METADATA + "/",
            fetcher,
            bootstrap=self._trusted_root(),
            target_url=self.repository_url,
            prefix_targets_with_hash=False,  # our target names are content-addressed already
        )

    def _newest_release(self) -> NewestRelease:
        """Highest version in our channel that is for this device (its cohort is inside the release's rollout),
        from the targets metadata refresh() just verified."""
        targets = Metadata[Targets].from_bytes((self.state.metadata_dir / "targets.json").read_bytes()).signed
        releases = [
            NewestRelease(
                int(target.custom["version"]),
                path,
                target.custom.get("dataset"),
                int(target.custom.get("rollout", 100)),
            )
            for path, target in targets.targets.items()
            if path.startswith("releases/") and target.custom.get("channel") == self.channel
        ]
        if not releases:
            raise AgentError(f"{self.model_name} has no release in channel '{self.channel}'", "no-release")
        ours = [release for release in releases if self.cohort < release.rollout]
        if not ours:
            newest = max(releases, key=lambda release: release.version)
            raise AgentError(
                f"no release of {self.model_name} in channel '{self.channel}' is for this device yet: the newest, "
                f"v{newest.version}, reaches {newest.rollout} % of devices and this one sits at {self.cohort:.1f} %",
                "no-release",
            )
        return max(ours, key=lambda release: release.version)

    def fetch_release(self, updater: Updater, path: str, version: int) -> Release:
        info = updater.get_targetinfo(path)
        if info is None:  # listed a moment ago; only a broken repository gets here
            raise AgentError(f"{path} vanished from the signed targets", "missing")
        partial = self.state.downloads_dir / "release.json.part"
        updater.download_target(info, filepath=str(partial))
        release = Release.model_validate_json(partial.read_bytes())
        partial.unlink()
        try:
            check_sha256("sha256", release.sha256)  # it names the model's file on this device
        except InputError:
            raise AgentError(
                f"{path} (v{version}) was refused before its model was downloaded: its sha256 {release.sha256!r} "
                "is not 64 lowercase hex digits, and this device names model files by it; "
                "the publisher must re-publish the release with the model's real sha256",
                "metadata",
            ) from None
        if (release.model_name, release.channel, release.version) != (self.model_name, self.channel, version):
            raise AgentError(
                f"{path} describes {release.model_name} {release.channel} v{release.version}, but is signed as "
                f"{self.model_name} {self.channel} v{version} (mix-and-match)",
                "mix-and-match",
            )
        if not self.cohort < release.rollout_percent:  # the descriptor narrower than its signed entry
            raise AgentError(
                f"{path} (v{version}) is for {release.rollout_percent} % of devices, which leaves out this one "
                f"({self.cohort:.1f} %), but its signed entry says otherwise (mix-and-match)",
                "mix-and-match",
            )
        return release

    def fetch_model(self, updater: Updater, release: Release) -> Path:
        """A verified copy of the release's model: one already kept (e.g. on rollback), or a fresh download."""
        info = updater.get_targetinfo(release.model_target)
        if info is None:
            raise AgentError(f"{release.model_target} is not a signed target", "missing")
        if info.hashes.get("sha256") != release.sha256 or info.length != release.size:
            raise AgentError(
                f"{release.model_target} is signed with a different hash or size than its release says", "hash"
            )
        kept = self.state.model_file(release.sha256)
        if updater.find_cached_target(info, str(kept)):
            return kept
        candidate = self.state.download_file(release.sha256, ".pte")
        partial = self.state.download_file(release.sha256, ".part")
        updater.download_target(info, filepath=str(partial))  # verifies length and hash
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, candidate)
        return candidate
