"""The edge agent: poll signed releases, install only verified models, never end up without one.

One poll: python-tuf verifies the repository (`updater`), the newest release of our channel is
fetched and its model downloaded and verified, the model must pass its smoke test (`smoke`), and
only then is it swapped in (`installer`). Everything the device keeps is in its state directory
(`state`); a failed poll changes nothing that runs. Whatever a poll raises, ours or not, is recorded
in `status.json` and the next poll starts afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edgeops.datasets import signature_for
from edgeops.device.installer import install, reject
from edgeops.device.smoke import smoke_test
from edgeops.device.state import DeviceState, Failure, PollStats, Report, now
from edgeops.device.updater import (
    FAILURE_KINDS,
    AgentError,
    MeteredFetcher,
    ReleaseUpdater,
    describe,
    refusal_reason,
)
from edgeops.errors import EdgeopsError
from edgeops.ota.release import Release, cohort_position
from edgeops.settings import Dataset, Settings

__all__ = ["Agent", "AgentError"]

logger = logging.getLogger(__name__)


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
        track: Dataset | None = None,
        device_id: str | None = None,
    ) -> None:
        """`track` is the kind of data this device feeds its model; by default the track whose row in the
        track table names `model_name`, else the mat's. `device_id` places the device in staged rollouts; by
        default an id made once for the state directory."""
        self.config = settings.agent
        self.model_name = model_name or settings.mat.model_name
        self.track = track or settings.track_of(self.model_name) or Dataset.mat
        self.signature = signature_for(self.track, settings)
        self.channel = channel or settings.release.channel
        self.repository_url = (repository_url or settings.ota_url(self.model_name)).rstrip("/") + "/"
        self.report = report or (lambda _message: None)
        self.state = DeviceState(
            state_dir or self.config.state_dir, self.model_name, self.track, self.channel, self.repository_url
        )
        self.device_id = device_id or self.state.identity()
        self.updater = ReleaseUpdater(
            self.state,
            self.repository_url,
            trusted_root or settings.release.keys_dir / "root.json",
            self.model_name,
            self.channel,
            cohort_position(self.device_id, self.model_name),
        )
        self._lock = threading.Lock()

    def check_installed(self) -> None:
        self.state.check_installed(self.report)

    def poll(self) -> PollStats:
        """One cycle. Raises AgentError on any failure (any Exception, recorded in status.json first);
        what was running keeps running."""
        with self._lock:
            started = time.monotonic()
            fetcher = MeteredFetcher(self.config.socket_timeout_s, started + self.config.cycle_deadline_s)
            try:
                outcome = self._poll(fetcher)
                stats = _stats(outcome, started, fetcher)
                checked = now()
                self.state.update_status(
                    last_check=checked, last_success=checked, last_error=None, failures_in_a_row=0, last_poll=stats
                )
                return stats
            except Exception as error:
                raise AgentError(self.record_failure(error, _stats("error", started, fetcher))) from error

    def record_failure(self, error: Exception, stats: PollStats | None = None) -> str:
        """Put a failed cycle in status.json and the log; return its message. Never raises (for Exceptions)."""
        message = error.args[0] if isinstance(error, AgentError) and error.args else describe(error)
        cause = error.__cause__ if isinstance(error, AgentError) and error.__cause__ is not None else error
        if _expected(cause):
            logger.info("poll of %s failed: %s", self.repository_url, message)  # the caller reports it
        else:  # a fault outside the protocol (disk, permissions, a bug): the traceback is worth keeping
            logger.error("poll of %s failed unexpectedly: %s", self.repository_url, message, exc_info=error)
        at = now()
        try:
            self.state.update_status(
                last_check=at,
                last_error=message,
                last_failure=Failure(at=at, type=type(cause).__name__, message=message, reason=refusal_reason(error)),
                failures_in_a_row=self.state.status.failures_in_a_row + 1,
                **({"last_poll": stats} if stats is not None else {}),
            )
        except Exception as status_error:
            logger.error("could not record the failure in %s: %s", self.state.root, describe(status_error))
            if str(status_error) != str(cause):
                message += f" (status.json could not be updated either: {describe(status_error)})"
        return message

    def _poll(self, fetcher: MeteredFetcher) -> str:
        updater, newest = self.updater.refresh(fetcher)
        version, release_target = newest.version, newest.target
        if newest.track is not None and newest.track != self.track:  # refused before any download
            raise AgentError(
                self._wrong_track(version, f"is signed for the {newest.track} track"), "wrong-track", version
            )
        installed = self.state.installed()
        current = installed.current
        if current is not None and version < current.version:
            raise AgentError(
                f"the repository's newest {self.channel} release is version {version}, but version "
                f"{current.version} is installed: refusing to go back (rollback attack or a reset repository)",
                "rollback",
                version,
            )
        if current is not None and current.release_target == release_target and self.state.is_intact(current):
            return f"up to date at v{version}"
        if release_target in installed.rejected:
            return f"v{version} was rejected earlier; staying on v{current.version if current else '-'}"

        release = self.updater.fetch_release(updater, release_target, version)
        mismatches = self._mismatches(release)
        if mismatches:  # refused before the model is downloaded
            raise AgentError(self._wrong_track(version, "; ".join(mismatches)), "wrong-track", version)
        candidate = self.updater.fetch_model(updater, release)
        try:
            smoke_test(candidate, release, self.config.smoke_tolerance)
        except Exception as error:
            reject(self.state, installed, candidate, release_target)
            raise AgentError(
                f"release v{version} ({release.sha256[:12]}) failed its smoke test and was not installed: {error}",
                "smoke-test",
                version,
            ) from None
        install(self.state, installed, candidate, release, release_target)
        return f"installed v{version}"

    def _mismatches(self, release: Release) -> list[str]:
        """How the release's signature differs from what this device can feed and read."""
        expected = self.signature
        found = [
            ("track", release.dataset, expected.dataset),
            ("input shape", release.input.get("shape"), expected.input_shape),
            ("input units", release.input.get("units"), expected.input_units),
            ("labels", release.labels, expected.labels),
            ("output shape", release.output.get("shape"), expected.output_shape),
        ]
        return [f"{what} {actual} (this device: {wanted})" for what, actual, wanted in found if actual != wanted]

    def _wrong_track(self, version: int, why: str) -> str:
        return (
            f"release v{version} of {self.model_name} does not fit this {self.track} device and was not installed: "
            f"{why}; publish the track's models under their own name, or give the agent the right --model/--track"
        )


def _expected(error: BaseException) -> bool:
    """A failure the protocol foresees (ours or python-tuf's), as opposed to a fault or a bug."""
    return isinstance(error, (EdgeopsError, *(kind for kind, _ in FAILURE_KINDS)))


def _stats(outcome: str, started: float, fetcher: MeteredFetcher) -> PollStats:
    return PollStats(
        outcome=outcome,
        seconds=round(time.monotonic() - started, 4),
        requests=fetcher.requests,
        metadata_bytes=fetcher.metadata_bytes,
        target_bytes=fetcher.target_bytes,
    )
