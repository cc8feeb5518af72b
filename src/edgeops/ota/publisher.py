"""Signed releases: one TUF repository per model in the OTA bucket, written so devices never see a mix.

Every release adds a descriptor target whose `custom` names its channel and version,
then new targets, snapshot and timestamp metadata, in that order. Versioned metadata
goes to the first free version number; the timestamp is written conditionally on the
one read at the start, so of two racing publishers exactly one goes live. The layout
is in `edgeops.ota.release`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgeops.errors import EdgeopsError, PromotionError
from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring, SigningKeyError, expiry, utc_now
from edgeops.ota.release import LATEST, Release, latest_manifest, manifest_key, metadata_prefix, release_target
from edgeops.settings import ReleaseConfig, check_name, check_sha256
from edgeops.stack.s3 import get_if_present, put_conditionally, put_if_absent

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "no-cache"
FREE_VERSION_TRIES = 20  # free version numbers tried past orphans of failed publishes


class ReleaseError(EdgeopsError):
    """A release operation was refused; what is live did not change."""


class LatestManifestError(PromotionError):
    """The signed release went live, but `latest.json` could not be written."""

    def __init__(self, message: str, release: Release) -> None:
        super().__init__(message)
        self.release = release


# --- repository state ---------------------------------------------------------------------------

SIGNED_ROLES = ("targets", "snapshot", "timestamp")  # in the order they are written; the timestamp last


@dataclass
class RepositoryState:
    """What is live for one model, as signed metadata, with the timestamp's ETag to replace it."""

    timestamp: Metadata[Timestamp]
    timestamp_etag: str
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]
    # Roles signed only by keys an older root trusted: re-signed by the next heartbeat.
    stale_keys: set[str] = field(default_factory=set)

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

    def role(self, name: str) -> Metadata[Any]:
        roles: dict[str, Metadata[Any]] = {
            "targets": self.targets,
            "snapshot": self.snapshot,
            "timestamp": self.timestamp,
        }
        return roles[name]


def _verify(keyring: Keyring, role: str, metadata: Metadata[Any]) -> bool:
    """True if the newest root's key signed it, False if only an older root's did; raises if none did."""
    for root in reversed(keyring.roots):
        try:
            root.signed.verify_delegate(role, metadata.signed_bytes, metadata.signatures)
        except Exception:  # tuf raises several types for a bad signature
            continue
        return root is keyring.root
    raise ValueError(f"{role} metadata is not signed by any root in use (newest v{keyring.root.signed.version})")


def read_state(s3: S3Client, bucket: str, model_name: str, keyring: Keyring) -> RepositoryState | None:
    """The live repository, each file checked against our roots so we never build on a forgery."""
    prefix = metadata_prefix(model_name)
    found = get_if_present(s3, bucket, prefix + "timestamp.json")
    if found is None:
        return None
    timestamp_bytes, etag = found
    stale: set[str] = set()
    try:
        timestamp = Metadata[Timestamp].from_bytes(timestamp_bytes)
        if not _verify(keyring, "timestamp", timestamp):
            stale.add("timestamp")
        snapshot_version = timestamp.signed.snapshot_meta.version
        snapshot_bytes = get_if_present(s3, bucket, f"{prefix}{snapshot_version}.snapshot.json")
        if snapshot_bytes is None:
            raise ReleaseError(f"s3://{bucket}/{prefix}{snapshot_version}.snapshot.json is missing")
        snapshot = Metadata[Snapshot].from_bytes(snapshot_bytes[0])
        if not _verify(keyring, "snapshot", snapshot):
            stale.add("snapshot")
        targets_version = snapshot.signed.meta["targets.json"].version
        targets_bytes = get_if_present(s3, bucket, f"{prefix}{targets_version}.targets.json")
        if targets_bytes is None:
            raise ReleaseError(f"s3://{bucket}/{prefix}{targets_version}.targets.json is missing")
        targets = Metadata[Targets].from_bytes(targets_bytes[0])
        if not _verify(keyring, "targets", targets):
            stale.add("targets")
    except ReleaseError as error:
        raise ReleaseError(f"the repository at s3://{bucket}/{prefix}: {error}; refusing to build on it") from None
    except Exception as error:  # tuf raises several types for bad metadata
        raise ReleaseError(
            f"the repository at s3://{bucket}/{prefix} does not verify against the keys in use "
            f"({type(error).__name__}: {error}); refusing to publish on top of it"
        ) from None
    return RepositoryState(
        timestamp=timestamp, timestamp_etag=etag, snapshot=snapshot, targets=targets, stale_keys=stale
    )


def published_models(s3: S3Client, bucket: str, keyring: Keyring) -> tuple[list[str], list[str]]:
    """The models in the bucket whose repository grew from our first root, and the others (another trust root)."""
    first = keyring.roots[0].signed.version
    ours: list[str] = []
    foreign: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            name = common["Prefix"].rstrip("/")
            root = get_if_present(s3, bucket, _root_key(name, first))
            if root is None:
                continue
            (ours if root[0] == keyring.root_file(first) else foreign).append(name)
    return sorted(ours), sorted(foreign)


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


def _root_key(model_name: str, version: int) -> str:
    return f"{metadata_prefix(model_name)}{version}.root.json"


def _foreign_root(bucket: str, key: str) -> SigningKeyError:
    return SigningKeyError(
        f"s3://{bucket}/{key} holds a different root than the keys in use; "
        "publish with the keys that created this repository"
    )


def published_root_version(s3: S3Client, bucket: str, model_name: str, keyring: Keyring) -> int:
    """The newest of our roots the model's repository holds (0: none), refusing a root we did not sign."""
    newest = 0
    for root in keyring.roots:
        version = root.signed.version
        existing = get_if_present(s3, bucket, _root_key(model_name, version))
        if existing is None:
            continue
        if existing[0] != keyring.root_file(version):
            raise _foreign_root(bucket, _root_key(model_name, version))
        newest = version
    return newest


def _publish_roots(s3: S3Client, bucket: str, model_name: str, keyring: Keyring) -> None:
    """Every root in the chain, so a device provisioned with any of them can walk to the newest."""
    for root in keyring.roots:
        key, body = _root_key(model_name, root.signed.version), keyring.root_file(root.signed.version)
        if not put_if_absent(s3, bucket, key, body, "application/json", cache_control=IMMUTABLE):
            existing = get_if_present(s3, bucket, key)
            if existing is None or existing[0] != body:
                raise _foreign_root(bucket, key)


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
    now: datetime | None = None,
) -> Release:
    """Make `release` live as the next version of its channel; return it with that version.

    `model_bytes` is None when the model target is already signed (a rollback). Raises
    ReleaseError or PromotionError when nothing went live, LatestManifestError when the
    release is live but `latest.json` was not written.
    """
    model = check_name("model name", release.model_name)
    check_name("channel", release.channel)
    check_sha256("sha256", release.sha256)
    if release.channel not in config.channels:
        raise ReleaseError(f"unknown channel '{release.channel}' (channels: {', '.join(config.channels)})")
    prefix = f"{model}/"
    state = read_state(s3, bucket, model, keyring)
    tracks = state.tracks() if state else set()
    if tracks and release.dataset not in tracks:
        raise ReleaseError(
            f"{model} publishes {', '.join(sorted(tracks))} models; refusing a {release.dataset} model under its "
            "name, which devices of that track would be offered: publish it under a name of its own"
        )
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
        "rollout": release.rollout_percent,
    }

    targets = state.targets if state else Metadata(Targets(expires=expiry(config.targets_expiry_s, now)))
    targets.signed.targets[release.model_target] = model_file
    targets.signed.targets[descriptor_path] = descriptor_file
    latest = latest_manifest(release, descriptor_path) if with_latest else None
    if latest is not None:
        targets.signed.targets[LATEST] = TargetFile.from_data(LATEST, latest, ["sha256"])
    _commit(s3, bucket, model, keyring, config, state, targets, resign={"targets", "snapshot"}, now=now)
    if latest is not None:
        _write_latest(s3, bucket, prefix + LATEST, latest, latest_before, release)
    return release


def _commit(
    s3: S3Client,
    bucket: str,
    model: str,
    keyring: Keyring,
    config: ReleaseConfig,
    state: RepositoryState | None,
    targets: Metadata[Targets],
    resign: set[str],
    now: datetime | None = None,
) -> Metadata[Timestamp]:
    """Write the re-signed roles, every root of the chain, then the timestamp that makes them live."""
    meta_prefix = metadata_prefix(model)
    snapshot = state.snapshot if state else Metadata(Snapshot(expires=expiry(config.snapshot_expiry_s, now)))
    if "targets" in resign or state is None:
        targets.signed.version = targets.signed.version + 1 if state else 1
        targets.signed.expires = expiry(config.targets_expiry_s, now)
        _put_versioned(s3, bucket, meta_prefix, "targets", targets, keyring.signers["targets"])
    if "snapshot" in resign or state is None:  # new targets always come with a new snapshot (callers include it)
        snapshot.signed.version = snapshot.signed.version + 1 if state else 1
        snapshot.signed.expires = expiry(config.snapshot_expiry_s, now)
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        _put_versioned(s3, bucket, meta_prefix, "snapshot", snapshot, keyring.signers["snapshot"])
    _publish_roots(s3, bucket, model, keyring)
    return _write_timestamp(s3, bucket, model, keyring, config, state, snapshot, now)


def _write_timestamp(
    s3: S3Client,
    bucket: str,
    model: str,
    keyring: Keyring,
    config: ReleaseConfig,
    state: RepositoryState | None,
    snapshot: Metadata[Snapshot],
    now: datetime | None = None,
) -> Metadata[Timestamp]:
    """The single write that makes a release live, conditional on the timestamp we started from."""
    timestamp = Metadata(
        Timestamp(
            version=state.timestamp.signed.version + 1 if state else 1,
            expires=expiry(config.timestamp_expiry_s, now),
            snapshot_meta=MetaFile(version=snapshot.signed.version),
        )
    )
    timestamp.sign(keyring.signers["timestamp"])
    body = timestamp.to_bytes(JSONSerializer(compact=True))
    key = metadata_prefix(model) + "timestamp.json"
    if_match = state.timestamp_etag if state else None
    if put_conditionally(s3, bucket, key, body, "application/json", if_match=if_match, cache_control=MUTABLE):
        return timestamp
    # Refused: either another publisher got there first, or our own write landed and its
    # response was lost, so the retry found its own bytes. Only what is live can tell.
    live = get_if_present(s3, bucket, key)
    if live is not None and live[0] == body:
        return timestamp
    raise PromotionError(
        f"another release of {model} went live while this one was being published; "
        "nothing of this release is live (run it again to publish on top)"
    )


def _write_latest(
    s3: S3Client, bucket: str, key: str, body: bytes, before: tuple[bytes, str] | None, release: Release
) -> None:
    """After the commit point: whatever goes wrong here, the release is already live."""
    if_match = before[1] if before else None
    try:
        written = put_conditionally(s3, bucket, key, body, "application/json", if_match=if_match, cache_control=MUTABLE)
    except Exception as error:  # boto3 raises several types; all mean "not written"
        raise LatestManifestError(
            f"the signed release is live, but writing s3://{bucket}/{key} failed ({type(error).__name__}: {error}); "
            "`edgeops release reconcile` rewrites it from what is live",
            release,
        ) from None
    if written is None:
        raise LatestManifestError(
            f"the signed release is live, but s3://{bucket}/{key} was changed by someone else meanwhile "
            "and was left as they wrote it; `edgeops release reconcile` rewrites it from what is live",
            release,
        )


def repair_latest(s3: S3Client, bucket: str, model_name: str, state: RepositoryState, channel: str) -> bool:
    """Make `latest.json` the signed one of the live release of `channel`; True if it had to be rewritten."""
    signed = state.targets.signed.targets.get(LATEST)
    if signed is None:
        return False
    key = manifest_key(model_name)
    current = get_if_present(s3, bucket, key)
    if current is not None and sha256_bytes(current[0]) == signed.hashes["sha256"]:
        return False
    for _, path in reversed(state.releases(channel)):
        body = latest_manifest(read_release(s3, bucket, model_name, path), path)
        if sha256_bytes(body) == signed.hashes["sha256"]:
            if_match = current[1] if current else None
            written = put_conditionally(
                s3, bucket, key, body, "application/json", if_match=if_match, cache_control=MUTABLE
            )
            return written is not None  # None: someone wrote it meanwhile; the next reconcile looks again
    raise ReleaseError(f"no signed {channel} release of {model_name} produces the signed {LATEST}")


# --- freshness ----------------------------------------------------------------------------------


def lifetime_s(config: ReleaseConfig, role: str) -> int:
    return int(getattr(config, f"{role}_expiry_s"))


def remaining_s(metadata: Metadata[Any], now: datetime) -> float:
    expires: datetime = metadata.signed.expires
    return (expires - now).total_seconds()


def due_roles(state: RepositoryState, config: ReleaseConfig, now: datetime) -> set[str]:
    """Roles to re-sign now: signed by a retired key, or with less than `renew_remaining` of their life left.
    New targets need a new snapshot to list them, so targets bring the snapshot along."""
    due = set(state.stale_keys)
    for role in ("targets", "snapshot"):
        if remaining_s(state.role(role), now) < config.renew_remaining * lifetime_s(config, role):
            due.add(role)
    return due | {"snapshot"} if "targets" in due else due


@dataclass
class Renewal:
    """What one heartbeat did for one model."""

    model_name: str
    resigned: list[str]  # roles, in the order written
    timestamp: Timestamp


def heartbeat(
    s3: S3Client, bucket: str, model_name: str, keyring: Keyring, config: ReleaseConfig, now: datetime | None = None
) -> Renewal:
    """Re-sign the timestamp, and targets and snapshot when due or signed by a retired key, without a release.

    Also copies new roots into the repository, so devices follow a root rotation.
    """
    now = now or utc_now()
    state = read_state(s3, bucket, model_name, keyring)
    if state is None:
        raise ReleaseError(f"{model_name} has no signed releases in s3://{bucket}/")
    due = due_roles(state, config, now)
    timestamp = _commit(s3, bucket, model_name, keyring, config, state, state.targets, resign=due, now=now)
    resigned = [role for role in SIGNED_ROLES if role in due or role == "timestamp"]
    return Renewal(model_name=model_name, resigned=resigned, timestamp=timestamp.signed)


@dataclass
class RoleStatus:
    """One role of one model's repository, as `edgeops release status` reports it."""

    model_name: str
    role: str
    version: int
    expires: datetime
    remaining_s: float
    level: str  # ok | renew (the next heartbeat re-signs it) | warn | expired
    advice: str = ""


def repository_status(
    s3: S3Client, bucket: str, model_name: str, keyring: Keyring, config: ReleaseConfig, now: datetime | None = None
) -> list[RoleStatus]:
    now = now or utc_now()
    state = read_state(s3, bucket, model_name, keyring)
    if state is None:
        raise ReleaseError(f"{model_name} has no signed releases in s3://{bucket}/")
    rows = []
    root_version = published_root_version(s3, bucket, model_name, keyring)
    root = keyring.root_at(root_version) if root_version else keyring.root
    left = remaining_s(root, now)
    if left <= 0:
        level, advice = "expired", "devices refuse every update: run `edgeops keys rotate-root`, then a heartbeat"
    elif left < config.root_warn_s:
        level, advice = "warn", "renew it with `edgeops keys rotate-root` (offline root key), then a heartbeat"
    elif root_version < keyring.root.signed.version:
        level, advice = "renew", f"root v{keyring.root.signed.version} is not published yet: run a heartbeat"
    else:
        level, advice = "ok", ""
    rows.append(RoleStatus(model_name, "root", root.signed.version, root.signed.expires, left, level, advice))
    due = due_roles(state, config, now)
    for role in reversed(SIGNED_ROLES):
        metadata = state.role(role)
        left = remaining_s(metadata, now)
        if left <= 0:
            level, advice = "expired", "devices refuse updates: run `edgeops release heartbeat --all`"
        elif left < config.warn_remaining * lifetime_s(config, role):
            level, advice = "warn", "the heartbeat is late: is its schedule running?"
        elif role in state.stale_keys:
            level, advice = "renew", "signed by a retired key: the next heartbeat re-signs it"
        elif role in due:
            level, advice = "renew", "the next heartbeat re-signs it"
        else:
            level, advice = "ok", ""
        rows.append(RoleStatus(model_name, role, metadata.signed.version, metadata.signed.expires, left, level, advice))
    return rows


def newest_release(
    s3: S3Client, bucket: str, model_name: str, state: RepositoryState | None, channel: str
) -> Release | None:
    """The live release of `channel` (its newest), or None when the channel has none."""
    releases = state.releases(channel) if state else []
    return read_release(s3, bucket, model_name, releases[-1][1]) if releases else None


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
    release = target.model_copy(  # a rollback is for every device, whatever step the earlier release was
        update={
            "rollback_of": to_version,
            "rollout_percent": 100,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    return publish(s3, bucket, keyring, config, release, None)


def widen(
    s3: S3Client, bucket: str, model_name: str, channel: str, keyring: Keyring, config: ReleaseConfig, percent: int
) -> Release:
    """A staged rollout's next step: the channel's newest release re-published, as the next version, for
    `percent` % of devices. Devices already in the narrower step keep their model (the same sha256)."""
    state = read_state(s3, bucket, model_name, keyring)
    current = newest_release(s3, bucket, model_name, state, channel)
    if current is None:
        raise ReleaseError(f"{model_name} has no {channel} release to widen")
    if not current.rollout_percent < percent <= 100:
        raise ReleaseError(
            f"{model_name} {channel} v{current.version} is already for {current.rollout_percent} % of devices; "
            f"a next step must be wider, up to 100 % (asked: {percent} %)"
        )
    release = current.model_copy(
        update={"rollout_percent": percent, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    )
    return publish(s3, bucket, keyring, config, release, None)
