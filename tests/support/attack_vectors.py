"""Attack vectors both device clients (the Python agent, the Kotlin OTA client) must answer alike.

Built with the real publisher on the real stack, then frozen on disk, so any client can replay them:

    <vector>/vector.json   {"name", "model_name", "channel", "track", "steps": [{"repository": "step-0",
                            "expect": "installed"|"unchanged"|"refused", "expect_reason": str|null,
                            "expect_version": int|null, "expect_sha256": str|null}, ...]}
    <vector>/root.json     the root the device is provisioned with
    <vector>/step-N/       the model's repository prefix as served at step N: metadata/, models/, releases/,
                           latest.json (downloaded from the OTA bucket after publishing, then tampered with)

One device state directory polls the steps in order, so stateful attacks work: step 0 installs from an
honest repository, a later step serves the attack. `expect_version`/`expect_sha256` are the installed
current model after the step; `expect_reason` is one word of the shared vocabulary
(`edgeops.device.updater.refusal_reason`). Attacks that need a signing key re-sign on disk with the
test keys: a compromised online key, or a compromised publisher.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring, init_keys, rotate_root, utc_now
from edgeops.ota.publisher import heartbeat, rollback
from edgeops.ota.release import METADATA, cohort_position
from edgeops.settings import Dataset, Settings
from edgeops.stack.s3 import s3_client
from tests.support.releases import TinyModel, draft, release, tiny_model, unique_model_name

VECTOR_FILE = "vector.json"
ROOT_FILE = "root.json"
Tamper = Callable[[Path], None]  # changes a step's repository copy in place


def download_repository(settings: Settings, model_name: str, destination: Path) -> None:
    """Every object under `s3://<ota>/<model>/`, as files under `destination`."""
    s3, prefix = s3_client(settings), f"{model_name}/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.ota_bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            path = destination / item["Key"].removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket=settings.ota_bucket, Key=item["Key"])["Body"].read())


@dataclass
class Vector:
    """A vector being recorded: each `step` snapshots the live repository (or an earlier step) and tampers with it."""

    settings: Settings  # whose keys publish this vector's model
    directory: Path
    model_name: str
    track: Dataset = Dataset.mat
    channel: str = "stable"
    device_id: str | None = None  # the device's id for staged rollouts; None: the one its state directory makes
    steps: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True)
        shutil.copyfile(self.settings.release.keys_dir / ROOT_FILE, self.directory / ROOT_FILE)  # provisioning

    def step(
        self,
        expect: str,
        installed: tuple[int, TinyModel] | None,
        reason: str | None = None,
        tamper: Tamper | None = None,
        base: Path | None = None,
    ) -> Path:
        """Record a step serving the live repository, or a copy of `base`, changed by `tamper`.

        `installed` is (version, model) of the current model the device must hold after the step."""
        repository = self.directory / f"step-{len(self.steps)}"
        if base is None:
            download_repository(self.settings, self.model_name, repository)
        else:
            shutil.copytree(base, repository)
        if tamper is not None:
            tamper(repository)
        self.steps.append(
            {
                "repository": repository.name,
                "expect": expect,
                "expect_reason": reason,
                "expect_version": installed[0] if installed else None,
                "expect_sha256": installed[1].sha256 if installed else None,
            }
        )
        return repository

    def save(self) -> Path:
        body = {
            "name": self.directory.name,
            "model_name": self.model_name,
            "channel": self.channel,
            "track": str(self.track),
            "device_id": self.device_id,
            "steps": self.steps,
        }
        (self.directory / VECTOR_FILE).write_text(json.dumps(body, indent=2) + "\n")
        return self.directory


# --- tampering with a step's copy of the repository --------------------------------------------


def model_file(model: TinyModel) -> Callable[[Path], Path]:
    return lambda repository: repository / "models" / f"{model.sha256}.pte"


def replace_bytes(path_of: Callable[[Path], Path], change: Callable[[bytes], bytes]) -> Tamper:
    def tamper(repository: Path) -> None:
        path = path_of(repository)
        path.write_bytes(change(path.read_bytes()))

    return tamper


def delete(path_of: Callable[[Path], Path]) -> Tamper:
    return lambda repository: path_of(repository).unlink()


def descriptor_file(version: int, channel: str = "stable") -> Callable[[Path], Path]:
    def path(repository: Path) -> Path:
        [found] = (repository / "releases" / channel).glob(f"{version}-*.json")
        return found

    return path


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _read(repository: Path, name: str) -> Metadata[Any]:
    return Metadata.from_bytes((repository / METADATA / name).read_bytes())


def _write(repository: Path, metadata: Metadata[Any], name: str | None = None) -> None:
    role, version = metadata.signed.type, metadata.signed.version
    path = repository / METADATA / (name or ("timestamp.json" if role == "timestamp" else f"{version}.{role}.json"))
    path.write_bytes(metadata.to_bytes(JSONSerializer(compact=True)))


def live_roles(repository: Path) -> tuple[Metadata[Timestamp], Metadata[Snapshot], Metadata[Targets]]:
    timestamp: Metadata[Timestamp] = _read(repository, "timestamp.json")
    snapshot: Metadata[Snapshot] = _read(repository, f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    targets: Metadata[Targets] = _read(repository, f"{snapshot.signed.meta['targets.json'].version}.targets.json")
    return timestamp, snapshot, targets


def resign_timestamp(keyring: Keyring, change: Callable[[Timestamp], None]) -> Tamper:
    """A new timestamp (version + 1) changed by `change`, signed with the timestamp key: a compromised online key."""

    def tamper(repository: Path) -> None:
        timestamp = live_roles(repository)[0]
        timestamp.signed.version += 1
        change(timestamp.signed)
        timestamp.signatures.clear()
        timestamp.sign(keyring.signers["timestamp"])
        _write(repository, timestamp)

    return tamper


def sign_release(keyring: Keyring, descriptor: bytes, version: int, channel: str = "stable") -> Tamper:
    """Make `descriptor` the channel's release `version`, signed with the publisher's online keys: a compromised
    or buggy publisher signing what the real one refuses. New targets, snapshot and timestamp versions."""

    def tamper(repository: Path) -> None:
        timestamp, snapshot, targets = live_roles(repository)
        path = f"releases/{channel}/{version}-{sha256_bytes(descriptor)[:12]}.json"
        (repository / path).parent.mkdir(parents=True, exist_ok=True)
        (repository / path).write_bytes(descriptor)
        target = TargetFile.from_data(path, descriptor, ["sha256"])
        target.unrecognized_fields["custom"] = {"channel": channel, "version": version, "dataset": "mat"}
        targets.signed.targets[path] = target
        targets.signed.version += 1
        snapshot.signed.version += 1
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        timestamp.signed.version += 1
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        for role, metadata in (("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)):
            metadata.signatures.clear()
            metadata.sign(keyring.signers[role])
            _write(repository, metadata)

    return tamper


# --- the vectors ---------------------------------------------------------------------------------


def build_vectors(settings: Settings, directory: Path) -> list[Path]:
    """Every vector, each under `directory/<name>/`; the root-rotation vector's keys go in `directory/keys/`."""
    keyring = Keyring.load(settings.release)
    one, two, three = tiny_model(1), tiny_model(2), tiny_model(3)

    def vector(name: str, **kwargs: Any) -> Vector:
        return Vector(settings, directory / name, unique_model_name(name), **kwargs)

    def on_v1_then_v2(name: str) -> Vector:
        """A device that installed v1 from an honest repository; v2 (model 2) is live for the attack to target."""
        found = vector(name)
        release(settings, found.model_name, one)
        found.step("installed", (1, one))
        release(settings, found.model_name, two)
        return found

    def honest_v2(found: Vector) -> Path:
        return found.step("installed", (2, two))

    vectors: list[Vector] = []

    good = vector("good-release")
    release(settings, good.model_name, one)
    good.step("installed", (1, one))
    good.step("unchanged", (1, one))
    release(settings, good.model_name, two)
    good.step("installed", (2, two))
    good.step("unchanged", (2, two))
    vectors.append(good)

    for name, inside in (("staged-rollout-inside", True), ("staged-rollout-outside", False)):
        staged = vector(name)
        staged.device_id = next(  # a device on the chosen side of a 30 % rollout of this model
            device
            for device in (f"device-{index}" for index in range(1000))
            if (cohort_position(device, staged.model_name) < 30) == inside
        )
        release(settings, staged.model_name, one)
        staged.step("installed", (1, one))
        release(settings, staged.model_name, two, rollout_percent=30)
        if inside:
            staged.step("installed", (2, two))
        else:
            staged.step("unchanged", (1, one))
        release(settings, staged.model_name, two)  # the next step: every device
        staged.step("installed", (3, two))
        vectors.append(staged)

    tampered = on_v1_then_v2("tampered-target")
    tampered.step("refused", (1, one), "hash", replace_bytes(model_file(two), flip_last_byte))
    tampered.step("refused", (1, one), "hash", replace_bytes(descriptor_file(2), flip_last_byte))
    honest_v2(tampered)
    vectors.append(tampered)

    old_targets = on_v1_then_v2("mix-and-match-older-targets")  # a validly signed older targets under the new name

    def older_targets(repository: Path) -> None:
        shutil.copyfile(repository / METADATA / "1.targets.json", repository / METADATA / "2.targets.json")

    old_targets.step("refused", (1, one), "rollback", older_targets)
    honest_v2(old_targets)
    vectors.append(old_targets)

    swapped = on_v1_then_v2("mix-and-match-other-model")  # another validly published model in place of ours
    elsewhere = unique_model_name("elsewhere")
    release(settings, elsewhere, three)
    swapped_in = (
        s3_client(settings)
        .get_object(Bucket=settings.ota_bucket, Key=f"{elsewhere}/models/{three.sha256}.pte")["Body"]
        .read()
    )
    swapped.step(
        "refused",
        (1, one),
        "length" if len(three.data) > len(two.data) else "hash",  # longer: cut at the signed length
        replace_bytes(model_file(two), lambda _: swapped_in),
    )
    honest_v2(swapped)
    vectors.append(swapped)

    descriptor = vector("mix-and-match-descriptor")
    release(settings, descriptor.model_name, one)
    first = descriptor.step("installed", (1, one))
    foreign = draft(unique_model_name("someone-else"), two, version=2).model_dump_json(indent=2).encode()
    second = descriptor.step("refused", (1, one), "mix-and-match", sign_release(keyring, foreign, 2), base=first)
    other_version = draft(descriptor.model_name, two, version=5).model_dump_json(indent=2).encode()
    descriptor.step("refused", (1, one), "mix-and-match", sign_release(keyring, other_version, 3), base=second)
    vectors.append(descriptor)

    not_hex = vector("descriptor-sha256-not-hex")
    release(settings, not_hex.model_name, one)
    base = not_hex.step("installed", (1, one))
    bad = draft(not_hex.model_name, two, version=2, sha256="A" * 64, model_target=f"models/{'A' * 64}.pte")
    not_hex.step("refused", (1, one), "metadata", sign_release(keyring, bad.model_dump_json().encode(), 2), base=base)
    vectors.append(not_hex)

    old_timestamp = vector("rollback-timestamp")
    release(settings, old_timestamp.model_name, one)
    earlier = directory / "earlier-timestamp"
    download_repository(settings, old_timestamp.model_name, earlier)
    release(settings, old_timestamp.model_name, two)
    old_timestamp.step("installed", (2, two))

    def serve_earlier_timestamp(repository: Path) -> None:
        shutil.copyfile(earlier / METADATA / "timestamp.json", repository / METADATA / "timestamp.json")

    old_timestamp.step("refused", (2, two), "rollback", serve_earlier_timestamp)
    old_timestamp.step("unchanged", (2, two))
    vectors.append(old_timestamp)
    shutil.rmtree(earlier)

    old_snapshot = on_v1_then_v2("rollback-snapshot")
    old_snapshot.step("installed", (2, two))

    def point_at_snapshot_1(timestamp: Timestamp) -> None:
        timestamp.snapshot_meta = MetaFile(version=1)

    old_snapshot.step("refused", (2, two), "rollback", resign_timestamp(keyring, point_at_snapshot_1))
    old_snapshot.step("unchanged", (2, two))
    vectors.append(old_snapshot)

    old_release_targets = on_v1_then_v2("rollback-targets")
    old_release_targets.step("installed", (2, two))

    def snapshot_of_targets_1(repository: Path) -> None:
        """A new snapshot listing targets v1 again, with the snapshot and timestamp keys (both compromised)."""
        timestamp, snapshot, _ = live_roles(repository)
        snapshot.signed.version += 1
        snapshot.signed.meta["targets.json"] = MetaFile(version=1)
        timestamp.signed.version += 1
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        for role, metadata in (("snapshot", snapshot), ("timestamp", timestamp)):
            metadata.signatures.clear()
            metadata.sign(keyring.signers[role])
            _write(repository, metadata)

    old_release_targets.step("refused", (2, two), "rollback", snapshot_of_targets_1)
    vectors.append(old_release_targets)

    frozen = vector("freeze")
    release(settings, frozen.model_name, one)
    frozen.step("installed", (1, one))

    def expired_yesterday(timestamp: Timestamp) -> None:
        timestamp.expires = utc_now() - timedelta(days=1)

    frozen.step("refused", (1, one), "expired", resign_timestamp(keyring, expired_yesterday))
    s3 = s3_client(settings)
    for _ in range(2):  # past the expired timestamp's version, which a client may have kept
        heartbeat(s3, settings.ota_bucket, frozen.model_name, keyring, settings.release)
    frozen.step("unchanged", (1, one))
    vectors.append(frozen)

    wrong_key = on_v1_then_v2("wrong-key")
    init_keys(settings.release, directory / "keys" / "attacker", directory / "keys" / "attacker-root")
    attacker = Keyring.load(settings.release, directory / "keys" / "attacker")
    wrong_key.step("refused", (1, one), "signature", resign_timestamp(attacker, lambda _: None))

    def edit_signed_targets(repository: Path) -> None:  # the signature no longer covers the contents
        path = repository / METADATA / "2.targets.json"
        body = json.loads(path.read_bytes())
        next(iter(body["signed"]["targets"].values()))["length"] += 1
        path.write_text(json.dumps(body, separators=(",", ":")))

    wrong_key.step("refused", (1, one), "signature", edit_signed_targets)
    honest_v2(wrong_key)
    vectors.append(wrong_key)

    endless = on_v1_then_v2("endless-data")

    def padded_timestamp(repository: Path) -> None:
        path = repository / METADATA / "timestamp.json"
        path.write_bytes(path.read_bytes() + b" " * (1 << 20))  # far past any timestamp's maximum length

    endless.step("refused", (1, one), "length", padded_timestamp)
    endless.step("refused", (1, one), "length", replace_bytes(model_file(two), lambda data: data + bytes(4 << 20)))
    honest_v2(endless)
    vectors.append(endless)

    truncated = on_v1_then_v2("truncated-target")
    truncated.step("refused", (1, one), "hash", replace_bytes(model_file(two), lambda data: data[: len(data) // 2]))
    honest_v2(truncated)
    vectors.append(truncated)

    missing = on_v1_then_v2("missing-object")
    missing.step("refused", (1, one), "missing", delete(model_file(two)))
    honest_v2(missing)
    vectors.append(missing)

    wrong_track = vector("wrong-track", track=Dataset.mat)
    release(settings, wrong_track.model_name, tiny_model(1, Dataset.pmd))
    wrong_track.step("refused", None, "wrong-track")
    vectors.append(wrong_track)

    no_release = vector("no-release-in-channel", channel="canary")
    release(settings, no_release.model_name, one)  # stable only
    no_release.step("refused", None, "no-release")
    vectors.append(no_release)

    back = vector("release-rollback")
    release(settings, back.model_name, one)
    back.step("installed", (1, one))
    release(settings, back.model_name, two)
    back.step("installed", (2, two))
    rollback(s3, settings.ota_bucket, back.model_name, "stable", keyring, settings.release)
    back.step("installed", (3, one))  # forward onto the earlier model, as v3
    vectors.append(back)

    vectors.append(root_rotation(settings, directory))
    return [found.save() for found in vectors]


def root_rotation(settings: Settings, directory: Path) -> Vector:
    """Root v1 -> v3 (new online keys, then a new root key) with keys of its own: the device walks the chain."""
    own = settings.release.model_copy(
        update={"keys_dir": directory / "keys" / "rotation", "root_key_dir": directory / "keys" / "rotation-root"}
    )
    init_keys(own)
    rotating = settings.model_copy(update={"release": own})
    found = Vector(rotating, directory / "root-rotation", unique_model_name("root-rotation"))
    one, two = tiny_model(1), tiny_model(2)
    release(rotating, found.model_name, one)
    found.step("installed", (1, one))
    rotate_root(own, {"targets", "snapshot", "timestamp"})
    rotate_root(own, {"root"})
    s3 = s3_client(rotating)
    heartbeat(s3, rotating.ota_bucket, found.model_name, Keyring.load(own), own)
    found.step("unchanged", (1, one))
    release(rotating, found.model_name, two)  # signed with the new online keys only
    found.step("installed", (2, two))
    return found
