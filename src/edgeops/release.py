"""Signed releases: a TUF repository per model in the OTA bucket, written so devices never see a mix.

Layout under `s3://<ota>/<model>/`:

    metadata/1.root.json, N.targets.json, N.snapshot.json   written once, cacheable forever
    metadata/timestamp.json                                  the one mutable file; its PUT makes a release live
    models/<sha256>.pte                                      content-addressed model targets
    releases/<channel>/<version>-<sha12>.json                release descriptors (what the agent installs)
    latest.json                                              for simple clients; also a signed target

Every release adds a descriptor target whose `custom` names its channel and version,
then new targets, snapshot and timestamp metadata, in that order. Versioned metadata
goes to the first free version number; the timestamp is written conditionally on the
one read at the start, so of two racing publishers exactly one goes live.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgeops.errors import EdgeopsError, PromotionError
from edgeops.settings import ReleaseConfig
from edgeops.storage import get_if_present, put_conditionally, put_if_absent, sha256_bytes

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ROLES = ("root", "targets", "snapshot", "timestamp")
ROOT_FILE = "root.json"
METADATA = "metadata"
LATEST = "latest.json"
IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "no-cache"
FREE_VERSION_TRIES = 20  # free version numbers tried past orphans of failed publishes


class SigningKeyError(EdgeopsError):
    """Signing keys are missing, misplaced or do not match the repository."""


class ReleaseError(EdgeopsError):
    """A release operation was refused; what is live did not change."""


class LatestManifestError(PromotionError):
    """The signed release went live, but `latest.json` had been changed by someone else and was left alone."""


class Release(BaseModel):
    """A release descriptor: everything a device needs to install and smoke-test one model."""

    model_name: str
    channel: str
    version: int = 0  # assigned by publish: the channel's next version
    model_target: str
    model_key: str  # bucket key, for clients that skip TUF
    sha256: str
    size: int
    registry_version: int | None = None
    rollback_of: int | None = None
    created_at: str
    source_run_id: str = ""
    dataset: str = "mat"  # the track: which sensor the model reads
    dataset_version: str = ""
    format: str = "executorch-pte"
    backend: str = "xnnpack"
    quantization: str = ""
    labels: list[str]
    input: dict[str, Any]
    output: dict[str, Any]
    metrics: dict[str, float] = {}
    # The smoke test: logits the program gave on this input when it was released.
    reference_input: list[Any]
    reference_output: list[Any]


def model_target(sha256: str) -> str:
    return f"models/{sha256}.pte"


def release_target(channel: str, version: int, descriptor_sha256: str) -> str:
    """Unique per content, so racing publishers never collide on a name; the timestamp picks the winner."""
    return f"releases/{channel}/{version}-{descriptor_sha256[:12]}.json"


def metadata_prefix(model_name: str) -> str:
    return f"{model_name}/{METADATA}/"


def _expiry(seconds: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)


# --- keys -------------------------------------------------------------------------------------


def _inside_git_work_tree(path: Path) -> bool:
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    result = subprocess.run(
        ["git", "-C", str(probe), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.strip() == "true"


def init_keys(config: ReleaseConfig, keys_dir: Path | None = None) -> Path:
    """Generate one Ed25519 key per TUF role and the signed root that trusts them; return the root's path."""
    keys_dir = (keys_dir or config.keys_dir).expanduser().resolve()
    if (keys_dir / ROOT_FILE).exists():
        raise SigningKeyError(f"{keys_dir} already holds keys; remove it deliberately to start a new trust root")
    if _inside_git_work_tree(keys_dir):
        raise SigningKeyError(f"{keys_dir} is inside a git work tree; signing keys must never be committed")
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    root = Root(expires=_expiry(config.root_expiry_s), consistent_snapshot=True)
    signers = {}
    for role in ROLES:
        signer = CryptoSigner.generate_ed25519()
        root.add_key(signer.public_key, role)
        descriptor = os.open(keys_dir / f"{role}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(signer.private_bytes)
        signers[role] = signer
    metadata = Metadata(root)
    metadata.sign(signers["root"])
    (keys_dir / ROOT_FILE).write_bytes(metadata.to_bytes(JSONSerializer(compact=False)))
    return keys_dir / ROOT_FILE


@dataclass
class Keyring:
    """The trusted root and a signer for each online role."""

    root: Metadata[Root]
    root_bytes: bytes
    signers: dict[str, Signer]

    @classmethod
    def load(cls, config: ReleaseConfig, keys_dir: Path | None = None) -> Keyring:
        keys_dir = (keys_dir or config.keys_dir).expanduser()
        root_path = keys_dir / ROOT_FILE
        if not root_path.is_file():
            raise SigningKeyError(
                f"no signing keys in {keys_dir}: run `edgeops keys init` (or set EDGEOPS_RELEASE__KEYS_DIR)"
            )
        root_bytes = root_path.read_bytes()
        root = Metadata[Root].from_bytes(root_bytes)
        signers: dict[str, Signer] = {}
        for role in ("targets", "snapshot", "timestamp"):
            key = root.signed.get_key(root.signed.roles[role].keyids[0])
            pem = keys_dir / f"{role}.pem"
            if not pem.is_file():
                raise SigningKeyError(f"{pem} is missing; the keys in {keys_dir} are incomplete")
            try:
                signers[role] = CryptoSigner.from_priv_key_uri(f"file2:{pem.resolve()}", key)
            except Exception as error:  # mismatched or unreadable key file
                raise SigningKeyError(f"{pem} does not match the {role} key in {root_path}: {error}") from None
        return cls(root=root, root_bytes=root_bytes, signers=signers)


# --- repository state ---------------------------------------------------------------------------


@dataclass
class RepositoryState:
    """What is live for one model, as signed metadata, with the timestamp's ETag to replace it."""

    timestamp: Metadata[Timestamp]
    timestamp_etag: str
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]

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
    descriptor_file.unrecognized_fields["custom"] = {"channel": release.channel, "version": release.version}

    targets = state.targets if state else Metadata(Targets(expires=_expiry(config.targets_expiry_s)))
    targets.signed.version = targets.signed.version + 1 if state else 1
    targets.signed.expires = _expiry(config.targets_expiry_s)
    targets.signed.targets[release.model_target] = model_file
    targets.signed.targets[descriptor_path] = descriptor_file
    latest = latest_manifest(release, descriptor_path) if with_latest else None
    if latest is not None:
        targets.signed.targets[LATEST] = TargetFile.from_data(LATEST, latest, ["sha256"])
    meta_prefix = metadata_prefix(model)
    _put_versioned(s3, bucket, meta_prefix, "targets", targets, keyring.signers["targets"])

    snapshot = state.snapshot if state else Metadata(Snapshot(expires=_expiry(config.snapshot_expiry_s)))
    snapshot.signed.version = snapshot.signed.version + 1 if state else 1
    snapshot.signed.expires = _expiry(config.snapshot_expiry_s)
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
            expires=_expiry(config.timestamp_expiry_s),
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


def latest_manifest(release: Release, descriptor_path: str) -> bytes:
    """`latest.json` for simple clients: the descriptor without the bulky smoke-test tensors."""
    body = release.model_dump(exclude={"reference_input", "reference_output"})
    body["release_target"] = descriptor_path
    return json.dumps(body, indent=2).encode()
