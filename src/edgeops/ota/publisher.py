"""Signed releases: one TUF repository per model in the OTA bucket, written so devices never see a mix.

Every release adds a descriptor target whose `custom` names its channel and version,
then new targets, snapshot and timestamp metadata, in that order. Versioned metadata
goes to the first free version number; the timestamp is written conditionally on the
one read at the start, so of two racing publishers exactly one goes live. The layout
is in `edgeops.ota.release`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgeops.errors import EdgeopsError, PromotionError
from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring, SigningKeyError, expiry
from edgeops.ota.release import LATEST, Release, latest_manifest, metadata_prefix, release_target
from edgeops.settings import ReleaseConfig
from edgeops.stack.s3 import get_if_present, put_conditionally, put_if_absent

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "no-cache"
FREE_VERSION_TRIES = 20  # free version numbers tried past orphans of failed publishes


class ReleaseError(EdgeopsError):
    """A release operation was refused; what is live did not change."""


class LatestManifestError(PromotionError):
    """The signed release went live, but `latest.json` had been changed by someone else and was left alone."""


# --- repository state ---------------------------------------------------------------------------


@dataclass
class RepositoryState:
    """What is live for one model, as signed metadata, with the timestamp's ETag to replace it."""

    timestamp: Metadata[Timestamp]
    timestamp_etag: str
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]

    def tracks(self) -> set[str]:
        """The tracks (datasets) of the releases signed so far, where the metadata names them."""
        return {
            str(target.custom["dataset"])
            for path, target in self.targets.signed.targets.items()
            if path.startswith("releases/") and "dataset" in target.custom
        }

    def releases(self, channel: str) -> list[tuple[int, str]]:
        """(version, target path) of every release in a channel, oldest first."""
        found = []
        for path, target in self.targets.signed.targets.items():
            custom = target.custom
            if path.startswith("releases/") and custom.get("channel") == channel:
                found.append((int(custom["version"]), path))
        return sorted(found)


def read_state(s3: S3Client, bucket: str, model_name: str, keyring: Keyring) -> RepositoryState | None:
    """The live repository, each file checked against our keys so we never build on a forgery."""
    prefix = metadata_prefix(model_name)
    found = get_if_present(s3, bucket, prefix + "timestamp.json")
    if found is None:
        return None
    timestamp_bytes, etag = found
    root = keyring.root.signed
    try:
        timestamp = Metadata[Timestamp].from_bytes(timestamp_bytes)
        root.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
        snapshot_version = timestamp.signed.snapshot_meta.version
        snapshot_bytes = get_if_present(s3, bucket, f"{prefix}{snapshot_version}.snapshot.json")
        if snapshot_bytes is None:
            raise ReleaseError(f"s3://{bucket}/{prefix}{snapshot_version}.snapshot.json is missing")
        snapshot = Metadata[Snapshot].from_bytes(snapshot_bytes[0])
        root.verify_delegate("snapshot", snapshot.signed_bytes, snapshot.signatures)
        targets_version = snapshot.signed.meta["targets.json"].version
        targets_bytes = get_if_present(s3, bucket, f"{prefix}{targets_version}.targets.json")
        if targets_bytes is None:
            raise ReleaseError(f"s3://{bucket}/{prefix}{targets_version}.targets.json is missing")
        targets = Metadata[Targets].from_bytes(targets_bytes[0])
        root.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    except ReleaseError:
        raise
    except Exception as error:  # tuf raises several types for bad metadata
        raise ReleaseError(
            f"the repository at s3://{bucket}/{prefix} does not verify against the keys in use "
            f"({type(error).__name__}: {error}); refusing to publish on top of it"
        ) from None
    return RepositoryState(timestamp=timestamp, timestamp_etag=etag, snapshot=snapshot, targets=targets)


def _put_versioned(s3: S3Client, bucket: str, prefix: str, role: str, metadata: Metadata[Any], signer: Signer) -> None:
    """Sign and write `N.<role>.json` at the first free N at or above the metadata's version."""
    for _ in range(FREE_VERSION_TRIES):
        metadata.signatures.clear()
        metadata.sign(signer)
        body = metadata.to_bytes(JSONSerializer(compact=True))
        key = f"{prefix}{metadata.signed.version}.{role}.json"
        if put_if_absent(s3, bucket, key, body, "application/json", cache_control=IMMUTABLE):
            return
        metadata.signed.version += 1  # taken by a racing or failed publish; the timestamp decides who wins
    raise ReleaseError(f"no free version for {role} metadata under s3://{bucket}/{prefix}")


def _ensure_root(s3: S3Client, bucket: str, model_name: str, keyring: Keyring) -> None:
    key = f"{metadata_prefix(model_name)}{keyring.root.signed.version}.root.json"
    if put_if_absent(s3, bucket, key, keyring.root_bytes, "application/json", cache_control=IMMUTABLE):
        return
    existing = get_if_present(s3, bucket, key)
    if existing is None or sha256_bytes(existing[0]) != sha256_bytes(keyring.root_bytes):
        raise SigningKeyError(
            f"s3://{bucket}/{key} holds a different root than the keys in use; "
            "publish with the keys that created this repository"
        )


def _upload_target(s3: S3Client, bucket: str, key: str, body: bytes, content_type: str) -> None:
    """Content-addressed targets are written once; an existing one must hold exactly these bytes."""
    if put_if_absent(s3, bucket, key, body, content_type, cache_control=IMMUTABLE):
        return
    existing = get_if_present(s3, bucket, key)
    if existing is None or existing[0] != body:
        raise ReleaseError(
            f"s3://{bucket}/{key} exists with different content than this release: the bucket was modified "
            "outside edgeops; delete the object after investigating, then publish again"
        )


def publish(
    s3: S3Client,
    bucket: str,
    keyring: Keyring,
    config: ReleaseConfig,
    release: Release,
    model_bytes: bytes | None,
) -> Release:
    """Make `release` live as the next version of its channel; return it with that version.

    `model_bytes` is None when the model target is already signed (a rollback).
    """
    if release.channel not in config.channels:
        raise ReleaseError(f"unknown channel '{release.channel}' (channels: {', '.join(config.channels)})")
    model = release.model_name
    prefix = f"{model}/"
    state = read_state(s3, bucket, model, keyring)
    tracks = state.tracks() if state else set()
    if tracks and release.dataset not in tracks:
        raise ReleaseError(
            f"{model} publishes {', '.join(sorted(tracks))} models; refusing a {release.dataset} model under its "
            "name, which devices of that track would be offered: publish it under a name of its own"
        )
    if state is None:
        _ensure_root(s3, bucket, model, keyring)
    releases = state.releases(release.channel) if state else []
    release = release.model_copy(update={"version": releases[-1][0] + 1 if releases else 1})
    with_latest = release.channel == config.channel
    latest_before = get_if_present(s3, bucket, prefix + LATEST) if with_latest else None

    signed_targets = state.targets.signed.targets if state else {}
    if model_bytes is not None:
        _upload_target(s3, bucket, prefix + release.model_target, model_bytes, "application/octet-stream")
        model_file = TargetFile.from_data(release.model_target, model_bytes, ["sha256"])
    elif release.model_target in signed_targets:
        model_file = signed_targets[release.model_target]
    else:
        raise ReleaseError(f"{release.model_target} is not a signed target of {model}; cannot re-publish it")
    if model_file.hashes["sha256"] != release.sha256 or model_file.length != release.size:
        raise ReleaseError(f"{release.model_target} does not match the release's sha256 and size")

    descriptor = release.model_dump_json(indent=2).encode()
    descriptor_path = release_target(release.channel, release.version, sha256_bytes(descriptor))
    _upload_target(s3, bucket, prefix + descriptor_path, descriptor, "application/json")
    descriptor_file = TargetFile.from_data(descriptor_path, descriptor, ["sha256"])
    # Signed in the targets metadata, so a device can refuse another track's release before downloading anything.
    descriptor_file.unrecognized_fields["custom"] = {
        "channel": release.channel,
        "version": release.version,
        "dataset": release.dataset,
    }

    targets = state.targets if state else Metadata(Targets(expires=expiry(config.targets_expiry_s)))
    targets.signed.version = targets.signed.version + 1 if state else 1
    targets.signed.expires = expiry(config.targets_expiry_s)
    targets.signed.targets[release.model_target] = model_file
    targets.signed.targets[descriptor_path] = descriptor_file
    latest = latest_manifest(release, descriptor_path) if with_latest else None
    if latest is not None:
        targets.signed.targets[LATEST] = TargetFile.from_data(LATEST, latest, ["sha256"])
    meta_prefix = metadata_prefix(model)
    _put_versioned(s3, bucket, meta_prefix, "targets", targets, keyring.signers["targets"])

    snapshot = state.snapshot if state else Metadata(Snapshot(expires=expiry(config.snapshot_expiry_s)))
    snapshot.signed.version = snapshot.signed.version + 1 if state else 1
    snapshot.signed.expires = expiry(config.snapshot_expiry_s)
    snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
    _put_versioned(s3, bucket, meta_prefix, "snapshot", snapshot, keyring.signers["snapshot"])

    _write_timestamp(s3, bucket, model, keyring, config, state, snapshot, targets)
    if latest is not None:
        _write_latest(s3, bucket, prefix + LATEST, latest, latest_before)
    return release


def _write_timestamp(
    s3: S3Client,
    bucket: str,
    model: str,
    keyring: Keyring,
    config: ReleaseConfig,
    state: RepositoryState | None,
    snapshot: Metadata[Snapshot],
    targets: Metadata[Targets],
) -> RepositoryState:
    """The single write that makes a release live, conditional on the timestamp we started from."""
    timestamp = Metadata(
        Timestamp(
            version=state.timestamp.signed.version + 1 if state else 1,
            expires=expiry(config.timestamp_expiry_s),
            snapshot_meta=MetaFile(version=snapshot.signed.version),
        )
    )
    timestamp.sign(keyring.signers["timestamp"])
    body = timestamp.to_bytes(JSONSerializer(compact=True))
    key = metadata_prefix(model) + "timestamp.json"
    if_match = state.timestamp_etag if state else None
    etag = put_conditionally(s3, bucket, key, body, "application/json", if_match=if_match, cache_control=MUTABLE)
    if etag is None:
        raise PromotionError(
            f"another release of {model} went live while this one was being published; "
            "nothing of this release is live (run it again to publish on top)"
        )
    return RepositoryState(timestamp=timestamp, timestamp_etag=etag, snapshot=snapshot, targets=targets)


def _write_latest(s3: S3Client, bucket: str, key: str, body: bytes, before: tuple[bytes, str] | None) -> None:
    if_match = before[1] if before else None
    if put_conditionally(s3, bucket, key, body, "application/json", if_match=if_match, cache_control=MUTABLE) is None:
        raise LatestManifestError(
            f"the signed release is live, but s3://{bucket}/{key} was changed by someone else meanwhile "
            "and was left as they wrote it"
        )


def heartbeat(s3: S3Client, bucket: str, model_name: str, keyring: Keyring, config: ReleaseConfig) -> Timestamp:
    """Re-sign the timestamp with a fresh expiry, so devices can tell a live repository from a frozen one."""
    state = read_state(s3, bucket, model_name, keyring)
    if state is None:
        raise ReleaseError(f"{model_name} has no signed releases in s3://{bucket}/")
    new = _write_timestamp(s3, bucket, model_name, keyring, config, state, state.snapshot, state.targets)
    return new.timestamp.signed


def read_release(s3: S3Client, bucket: str, model_name: str, path: str) -> Release:
    found = get_if_present(s3, bucket, f"{model_name}/{path}")
    if found is None:
        raise ReleaseError(f"s3://{bucket}/{model_name}/{path} is missing")
    return Release.model_validate_json(found[0])


def rollback(
    s3: S3Client,
    bucket: str,
    model_name: str,
    channel: str,
    keyring: Keyring,
    config: ReleaseConfig,
    to_version: int | None = None,
) -> Release:
    """Re-publish an earlier release's model under the next version, so devices move forward onto it."""
    state = read_state(s3, bucket, model_name, keyring)
    releases = state.releases(channel) if state else []
    if not state or not releases:
        raise ReleaseError(f"{model_name} has no {channel} releases to roll back")
    current_version, current_path = releases[-1]
    current = read_release(s3, bucket, model_name, current_path)
    if to_version is None:  # the newest earlier release with a different model
        for version, path in reversed(releases[:-1]):
            target = read_release(s3, bucket, model_name, path)
            if target.sha256 != current.sha256:
                to_version = version
                break
        else:
            raise ReleaseError(f"{model_name} {channel} has no earlier model than version {current_version}")
    else:
        matches = [p for v, p in releases if v == to_version]
        if not matches or to_version >= current_version:
            known = ", ".join(str(v) for v, _ in releases[:-1]) or "none"
            raise ReleaseError(f"{channel} version {to_version} is not an earlier release (earlier: {known})")
        target = read_release(s3, bucket, model_name, matches[0])
    release = target.model_copy(
        update={"rollback_of": to_version, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    )
    return publish(s3, bucket, keyring, config, release, None)
