"""Releases stay trustworthy through heartbeats alone, across a root rotation: 400 days on a fake clock."""

from __future__ import annotations

from pathlib import Path

from edgeops.bench.freshness import simulate
from edgeops.settings import Settings


def test_devices_keep_updating_for_400_days_through_heartbeats_and_a_root_rotation(
    stack_settings: Settings, tmp_path: Path
) -> None:
    # Daily heartbeats and polls keep the test short; the timestamp lives two days so one late run is survivable.
    release = stack_settings.release.model_copy(update={"timestamp_expiry_s": 2 * 86_400})
    settings = stack_settings.model_copy(update={"release": release})
    report = simulate(settings, days=400, step_hours=24, models=2, release_every_days=120, work_dir=tmp_path)
    assert report.failures == []
    assert report.failed_polls == 0 and report.polls == 2 * 400
    # The root expires after 365 days; the operator rotated it once, when status warned.
    assert len(report.rotations) == 1 and 300 <= report.rotations[0] < 365
    assert report.device_root_versions == [2, 2]
    # Snapshot (30 days) and targets (90 days) were kept fresh by heartbeats, not by releases.
    assert report.resigned["snapshot"] >= 400 // 15 and report.resigned["targets"] >= 400 // 45
    assert report.device_release_versions == [4, 1]  # releases on days 120, 240 and 360 reached the device


def test_a_root_nobody_renews_stops_every_device_and_the_failure_names_it(
    stack_settings: Settings, tmp_path: Path
) -> None:
    release = stack_settings.release.model_copy(update={"timestamp_expiry_s": 5 * 86_400})
    settings = stack_settings.model_copy(update={"release": release})
    report = simulate(
        settings, days=372, step_hours=96, models=1, release_every_days=1000, operator_rotates=False, work_dir=tmp_path
    )
    # Polls on days 368 and 372, after root v1 expired on day 365: both fail, for expiry of the root.
    assert report.rotations == [] and report.failed_polls == report.expiry_failures == 2
    assert all("root.json is expired" in failure for failure in report.failures)
    assert report.failures[0].startswith("day 368.00")
