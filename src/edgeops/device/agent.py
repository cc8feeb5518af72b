"""The edge agent: poll signed releases, install only verified models, never end up without one.

One poll: python-tuf verifies the repository (`updater`), the newest release of our channel is
fetched and its model downloaded and verified, the model must pass its smoke test (`smoke`), and
only then is it swapped in (`installer`). Everything the device keeps is in its state directory
(`state`); a failed poll changes nothing that runs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edgeops.device.installer import install, reject
from edgeops.device.smoke import smoke_test
from edgeops.device.state import DeviceState, PollStats, Report, now
from edgeops.device.updater import AgentError, MeteredFetcher, ReleaseUpdater, describe
from edgeops.settings import Settings

__all__ = ["Agent", "AgentError"]


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
        self.config = settings.agent
        self.model_name = model_name or settings.mat.model_name
        self.channel = channel or settings.release.channel
        self.repository_url = (repository_url or settings.ota_url(self.model_name)).rstrip("/") + "/"
        self.report = report or (lambda _message: None)
        self.state = DeviceState(state_dir or self.config.state_dir, self.model_name, self.channel, self.repository_url)
        self.updater = ReleaseUpdater(
            self.state,
            self.repository_url,
            trusted_root or settings.release.keys_dir / "root.json",
            self.model_name,
            self.channel,
        )
        self._lock = threading.Lock()

    def check_installed(self) -> None:
        self.state.check_installed(self.report)

    def poll(self) -> PollStats:
        """One cycle. Raises AgentError on any failure; what was running keeps running."""
        with self._lock:
            started = time.monotonic()
            fetcher = MeteredFetcher(self.config.socket_timeout_s, started + self.config.cycle_deadline_s)
            try:
                outcome = self._poll(fetcher)
            except Exception as error:
                stats = _stats("error", started, fetcher)
                message = error.args[0] if isinstance(error, AgentError) else describe(error)
                self.state.update_status(last_check=now(), last_error=message, last_poll=stats)
                raise AgentError(message) from error
            stats = _stats(outcome, started, fetcher)
            checked = now()
            self.state.update_status(last_check=checked, last_success=checked, last_error=None, last_poll=stats)
            return stats

    def _poll(self, fetcher: MeteredFetcher) -> str:
        updater, version, release_target = self.updater.refresh(fetcher)
        installed = self.state.installed()
        current = installed.current
        if current is not None and version < current.version:
            raise AgentError(
                f"the repository's newest {self.channel} release is version {version}, but version "
                f"{current.version} is installed: refusing to go back (rollback attack or a reset repository)"
            )
        if current is not None and current.release_target == release_target and self.state.is_intact(current):
            return f"up to date at v{version}"
        if release_target in installed.rejected:
            return f"v{version} was rejected earlier; staying on v{current.version if current else '-'}"

        release = self.updater.fetch_release(updater, release_target, version)
        candidate = self.updater.fetch_model(updater, release)
        try:
            smoke_test(candidate, release, self.config.smoke_tolerance)
        except Exception as error:
            reject(self.state, installed, candidate, release_target)
            raise AgentError(
                f"release v{version} ({release.sha256[:12]}) failed its smoke test and was not installed: {error}"
            ) from None
        install(self.state, installed, candidate, release, release_target)
        return f"installed v{version}"


def _stats(outcome: str, started: float, fetcher: MeteredFetcher) -> PollStats:
    return PollStats(
        outcome=outcome,
        seconds=round(time.monotonic() - started, 4),
        requests=fetcher.requests,
        metadata_bytes=fetcher.metadata_bytes,
        target_bytes=fetcher.target_bytes,
    )
