"""Installing a verified, smoke-tested model: an atomic swap that keeps the previous model as last-known-good."""

from __future__ import annotations

import os
from pathlib import Path

from edgeops.device.state import DeviceState, Installed, InstalledModel, now
from edgeops.files import fsync_dir
from edgeops.ota.release import Release


def install(state: DeviceState, installed: Installed, candidate: Path, release: Release, release_target: str) -> None:
    """Move the model into `models/`, then swap `installed.json`; the old current becomes last-known-good."""
    new = InstalledModel(
        version=release.version,
        channel=release.channel,
        sha256=release.sha256,
        size=release.size,
        release_target=release_target,
        labels=release.labels,
        input_shape=release.input["shape"],
        output_shape=release.output["shape"],
        installed_at=now(),
    )
    kept = state.model_file(release.sha256)
    if candidate != kept:
        os.replace(candidate, kept)
        fsync_dir(state.models_dir)
    current = installed.current
    previous = current if current is not None and current.sha256 != new.sha256 else installed.previous
    if previous is not None and not state.is_intact(previous):
        previous = None
    swapped = Installed(current=new, previous=previous, rejected=installed.rejected)
    state.save_installed(swapped)
    state.collect_garbage(swapped)


def reject(state: DeviceState, installed: Installed, candidate: Path, release_target: str) -> None:
    """Remember a release that failed its smoke test, so it is not fetched again; drop its download."""
    if candidate.parent == state.downloads_dir:
        candidate.unlink(missing_ok=True)
    state.save_installed(installed.model_copy(update={"rejected": [*installed.rejected, release_target]}))
