"""Do releases stay trustworthy for years? A stretch of operation replayed on a fake clock.

Real parts: the publisher signs into the local S3 server and each device polls with
the agent's own TUF code (`device.updater`, python-tuf's ngclient over HTTP). Only the
clock is simulated: every signing call gets the simulated time, and each poll judges
expiry at it. Each step an operator's schedule runs the heartbeat for
every model; when `release status` warns that a root is running out, the operator
rotates it (a new root key and a new timestamp key); now and then a new release goes
out. Devices poll every step and must follow all of it without one failure.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata

from edgeops.device.state import DeviceState
from edgeops.device.updater import MeteredFetcher, ReleaseUpdater
from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring, init_keys, rotate_root, utc_now
from edgeops.ota.publisher import heartbeat, publish, repository_status
from edgeops.ota.release import Release, model_key, model_target
from edgeops.settings import Dataset, Settings
from edgeops.stack.s3 import s3_client


@dataclass
class FreshnessReport:
    days: float
    step_hours: float
    models: int
    polls: int = 0
    failed_polls: int = 0
    expiry_failures: int = 0
    releases: int = 0
    heartbeats: int = 0
    resigned: Counter[str] = field(default_factory=Counter)
    rotations: list[float] = field(default_factory=list)  # days on which the root was rotated
    device_root_versions: list[int] = field(default_factory=list)
    device_release_versions: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # the first few, with day and cause
    seconds: float = 0.0


class SimulatedDevice:
    """A device's TUF side for one model (`device.updater`, as `edgeops agent` polls), at the simulated time."""

    def __init__(self, settings: Settings, model_name: str, trusted_root: Path, state_dir: Path) -> None:
        self.settings, self.model_name = settings, model_name
        repository = settings.ota_url(f"{model_name}/")
        state = DeviceState(state_dir, model_name, Dataset.mat, settings.release.channel, repository)
        self.updater = ReleaseUpdater(state, repository, trusted_root, model_name, settings.release.channel)
        self.version = 0

    def poll(self, now: datetime) -> int:
        """Verify the metadata at `now`, then fetch and check the newest release's descriptor."""
        config = self.settings.agent
        fetcher = MeteredFetcher(config.socket_timeout_s, time.monotonic() + config.cycle_deadline_s)
        updater, newest = self.updater.refresh(fetcher, reference_time=now)
        self.version = self.updater.fetch_release(updater, newest.target, newest.version).version
        return self.version

    @property
    def root_version(self) -> int:
        root = self.updater.state.metadata_dir / "root.json"
        return int(Metadata.from_bytes(root.read_bytes()).signed.version)


def _release(model_name: str, serial: int, now: datetime) -> tuple[Release, bytes]:
    body = f"simulated model {model_name} #{serial}".encode()  # freshness is about metadata, not the program
    sha256 = sha256_bytes(body)
    release = Release(
        model_name=model_name,
        channel="stable",
        model_target=model_target(sha256),
        model_key=model_key(model_name, sha256),
        sha256=sha256,
        size=len(body),
        created_at=now.isoformat(),
        labels=["empty", "occupied"],
        input={"shape": [1, 1], "dtype": "float32"},
        output={"shape": [1, 2], "dtype": "float32"},
        reference_input=[[0.0]],
        reference_output=[[0.0, 0.0]],
    )
    return release, body


def _poll(device: SimulatedDevice, now: datetime, day: float, report: FreshnessReport) -> None:
    report.polls += 1
    try:
        device.poll(now)
    except Exception as error:  # every kind counts as a failed poll
        report.failed_polls += 1
        report.expiry_failures += isinstance(error.__cause__ or error, tuf_errors.ExpiredMetadataError)
        if len(report.failures) < 10:
            report.failures.append(f"day {day:.2f} {device.model_name}: {type(error).__name__}: {error}")


def simulate(
    settings: Settings,
    days: float = 400,
    step_hours: float = 6,
    models: int = 2,
    release_every_days: float = 120,
    operator_rotates: bool = True,
    work_dir: Path | None = None,
    on_step: Callable[[float], object] | None = None,
) -> FreshnessReport:
    """Replay `days` of operation at `step_hours` per step with fresh keys; the bucket objects are removed after.

    With `operator_rotates` False nobody acts on the root warning: the root expires on day 365.
    """
    report = FreshnessReport(days=days, step_hours=step_hours, models=models)
    started = time.monotonic()
    config = settings.release
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        keys_dir, root_key_dir = Path(scratch) / "keys", Path(scratch) / "root-key"
        trusted_root = Path(scratch) / "provisioned-root.json"  # what devices ship with: root v1, for good
        shutil.copy(init_keys(config, keys_dir, root_key_dir), trusted_root)
        keyring = Keyring.load(config, keys_dir)
        s3, bucket = s3_client(settings), settings.ota_bucket
        run = uuid.uuid4().hex[:8]
        names = [f"freshness-{run}-{index}" for index in range(models)]
        devices = [SimulatedDevice(settings, name, trusted_root, Path(scratch) / "devices" / name) for name in names]
        start = now = utc_now()
        try:
            for name in names:
                publish(s3, bucket, keyring, config, *_release(name, 0, now), now=now)
                report.releases += 1
            next_release = release_every_days
            while (now - start) < timedelta(days=days):
                now += timedelta(hours=step_hours)
                day = (now - start).total_seconds() / 86_400
                root_row = repository_status(s3, bucket, names[0], keyring, config, now)[0]
                if operator_rotates and root_row.level in ("warn", "expired"):  # the operator acts on the warning
                    rotate_root(config, {"root", "timestamp"}, keys_dir, root_key_dir, now=now)
                    keyring = Keyring.load(config, keys_dir)
                    report.rotations.append(round(day, 2))
                for name in names:
                    renewal = heartbeat(s3, bucket, name, keyring, config, now)
                    report.heartbeats += 1
                    report.resigned.update(renewal.resigned)
                if day >= next_release:
                    publish(s3, bucket, keyring, config, *_release(names[0], report.releases, now), now=now)
                    report.releases += 1
                    next_release += release_every_days
                for device in devices:
                    _poll(device, now, day, report)
                if on_step is not None:
                    on_step(day)
            report.device_root_versions = [device.root_version for device in devices]
            report.device_release_versions = [device.version for device in devices]
        finally:
            for name in names:
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{name}/"):
                    for item in page.get("Contents", []):
                        s3.delete_object(Bucket=bucket, Key=item["Key"])
    report.seconds = time.monotonic() - started
    return report
