"""Do releases stay trustworthy for years? A stretch of operation replayed on a fake clock.

Real parts: the publisher signs into the local S3 server and python-tuf's ngclient
verifies over HTTP, exactly as `edgeops agent` does. Only the clock is simulated: every
signing call gets the simulated time, and each device poll checks expiry against it
(ngclient's reference time). Each step an operator's schedule runs the heartbeat for
every model; when `release status` warns that a root is running out, the operator
rotates it (a new root key and a new timestamp key); now and then a new release goes
out. Devices poll every step and must follow all of it without one failure.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater, UpdaterConfig

from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring, init_keys, rotate_root, utc_now
from edgeops.ota.publisher import heartbeat, publish, repository_status
from edgeops.ota.release import METADATA, Release, model_key, model_target
from edgeops.settings import Settings
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
    """A device's TUF client for one model, polling at the simulated time."""

    def __init__(self, settings: Settings, model_name: str, trusted_root: bytes, state_dir: Path) -> None:
        self.settings, self.model_name, self.state_dir = settings, model_name, state_dir
        state_dir.mkdir(parents=True)
        self.provisioned_root = trusted_root
        self.version = 0

    def poll(self, now: datetime) -> int:
        cached = self.state_dir / "root.json"
        updater = Updater(
            metadata_dir=str(self.state_dir),
            metadata_base_url=self.settings.ota_url(f"{self.model_name}/{METADATA}/"),
            target_base_url=self.settings.ota_url(f"{self.model_name}/"),
            target_dir=str(self.state_dir),
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=cached.read_bytes() if cached.exists() else self.provisioned_root,
        )
        updater._trusted_set.reference_time = now  # the fake clock: the only thing simulated
        updater.refresh()
        targets = Metadata[Targets].from_bytes((self.state_dir / "targets.json").read_bytes()).signed
        channel = self.settings.release.channel
        newest = max(
            (int(t.custom["version"]), path)
            for path, t in targets.targets.items()
            if path.startswith("releases/") and t.custom.get("channel") == channel
        )
        info = updater.get_targetinfo(newest[1])
        if info is None:
            raise tuf_errors.RepositoryError(f"{newest[1]} is not signed")
        updater.download_target(info, str(self.state_dir / "release.json"))  # verifies length and hash
        self.version = newest[0]
        return self.version

    @property
    def root_version(self) -> int:
        return int(Metadata.from_bytes((self.state_dir / "root.json").read_bytes()).signed.version)


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
        report.expiry_failures += isinstance(error, tuf_errors.ExpiredMetadataError)
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
        trusted_root = init_keys(config, keys_dir, root_key_dir).read_bytes()
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
