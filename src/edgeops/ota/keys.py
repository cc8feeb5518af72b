"""TUF signing keys: an offline root key, one online key per other role, and the chain of signed roots.

Two directories, on purpose:

    keys_dir/        what a publisher (promote, the heartbeat) needs: the online keys
                     `<role>-<keyid16>.pem` for targets, snapshot and timestamp, every root
                     this repository has trusted (`N.root.json`) and `root.json`, the newest,
                     to provision devices with.
    root_key_dir/    the root key alone. Move it offline after `keys init`; it is needed
                     again only to rotate or renew the root (`edgeops keys rotate-root`).

Devices trust the root they were provisioned with and follow the chain `N.root.json`
-> `N+1.root.json` (each new root signed by the old root key and the new one), which
every publish and heartbeat copies into each model's repository.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from edgeops.errors import EdgeopsError
from edgeops.files import write_atomically
from edgeops.settings import ReleaseConfig

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
ROLES = ("root", *ONLINE_ROLES)
ROOT_FILE = "root.json"


class SigningKeyError(EdgeopsError):
    """Signing keys are missing, misplaced or do not match the repository."""


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def expiry(seconds: int, now: datetime | None = None) -> datetime:
    return (now or utc_now()).replace(microsecond=0) + timedelta(seconds=seconds)


def _inside_git_work_tree(path: Path) -> bool:
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    result = subprocess.run(
        ["git", "-C", str(probe), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.strip() == "true"


def _private_dir(path: Path) -> Path:
    path = path.expanduser().resolve()
    if _inside_git_work_tree(path):
        raise SigningKeyError(f"{path} is inside a git work tree; signing keys must never be committed")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _key_file(directory: Path, role: str, signer: CryptoSigner) -> Path:
    return directory / f"{role}-{signer.public_key.keyid[:16]}.pem"


def _write_private_key(path: Path, signer: CryptoSigner) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(signer.private_bytes)
        os.fsync(handle.fileno())


def _find_signer(directory: Path, role: str, key: Key) -> CryptoSigner | None:
    """The key file in `directory` whose public half is `key` (`<role>.pem` is the layout before rotation)."""
    for path in sorted(directory.glob(f"{role}*.pem")):
        try:
            private = load_pem_private_key(path.read_bytes(), None)
        except (OSError, ValueError, TypeError):
            continue
        signer = CryptoSigner(private)
        if signer.public_key.keyval == key.keyval and isinstance(key, SSlibKey):
            return CryptoSigner(private, key)
    return None


def _write_root(keys_dir: Path, root: Metadata[Root]) -> None:
    """History first, then the newest copy: a kill between the two leaves the history, which is what counts."""
    body = root.to_bytes(JSONSerializer(compact=False))
    write_atomically(keys_dir / f"{root.signed.version}.root.json", body)
    write_atomically(keys_dir / ROOT_FILE, body)


def init_keys(config: ReleaseConfig, keys_dir: Path | None = None, root_key_dir: Path | None = None) -> Path:
    """Generate the root key (in its own directory) and the online keys; return the signed root's path."""
    keys_dir = (keys_dir or config.keys_dir).expanduser().resolve()
    root_key_dir = (root_key_dir or config.root_key_dir).expanduser().resolve()
    if (keys_dir / ROOT_FILE).exists():
        raise SigningKeyError(f"{keys_dir} already holds keys; remove it deliberately to start a new trust root")
    if keys_dir == root_key_dir:
        raise SigningKeyError("the root key must not live beside the online keys: pick another --root-key-dir")
    keys_dir, root_key_dir = _private_dir(keys_dir), _private_dir(root_key_dir)
    root = Root(expires=expiry(config.root_expiry_s), consistent_snapshot=True)
    signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
        _write_private_key(_key_file(root_key_dir if role == "root" else keys_dir, role, signer), signer)
    metadata = Metadata(root)
    metadata.sign(signers["root"])
    _write_root(keys_dir, metadata)
    return keys_dir / ROOT_FILE


def root_history(keys_dir: Path) -> list[Metadata[Root]]:
    """Every root this keys directory has trusted, oldest first (just `root.json` before any rotation)."""
    numbered = sorted(
        (p for p in keys_dir.glob("*.root.json") if p.name.split(".")[0].isdigit()),
        key=lambda p: int(p.name.split(".")[0]),
    )
    paths = numbered or [keys_dir / ROOT_FILE]
    return [Metadata[Root].from_bytes(path.read_bytes()) for path in paths]


@dataclass
class Keyring:
    """The roots trusted so far (newest last) and a signer for each online role of the newest."""

    roots: list[Metadata[Root]]
    signers: dict[str, Signer]

    @property
    def root(self) -> Metadata[Root]:
        return self.roots[-1]

    def root_at(self, version: int) -> Metadata[Root]:
        return self.roots[version - self.roots[0].signed.version]

    def root_file(self, version: int) -> bytes:
        """The bytes of root `version` as devices fetch it (`N.root.json`)."""
        return self.root_at(version).to_bytes(JSONSerializer(compact=False))

    @classmethod
    def public(cls, config: ReleaseConfig, keys_dir: Path | None = None) -> Keyring:
        """The roots alone: enough to verify a repository, not to sign anything."""
        keys_dir = (keys_dir or config.keys_dir).expanduser()
        if not (keys_dir / ROOT_FILE).is_file():
            raise SigningKeyError(
                f"no signing keys in {keys_dir}: run `edgeops keys init` (or set EDGEOPS_RELEASE__KEYS_DIR)"
            )
        return cls(roots=root_history(keys_dir), signers={})

    @classmethod
    def load(cls, config: ReleaseConfig, keys_dir: Path | None = None) -> Keyring:
        keys_dir = (keys_dir or config.keys_dir).expanduser()
        roots = cls.public(config, keys_dir).roots
        newest = roots[-1].signed
        signers: dict[str, Signer] = {}
        for role in ONLINE_ROLES:
            key = newest.get_key(newest.roles[role].keyids[0])
            signer = _find_signer(keys_dir, role, key)
            if signer is None:
                raise SigningKeyError(
                    f"no {role} key in {keys_dir} matches root v{newest.version} ({key.keyid[:16]}): "
                    "the keys there are incomplete or from another root"
                )
            signers[role] = signer
        return cls(roots=roots, signers=signers)


def rotate_root(
    config: ReleaseConfig,
    rotate: set[str],
    keys_dir: Path | None = None,
    root_key_dir: Path | None = None,
    now: datetime | None = None,
) -> Metadata[Root]:
    """Sign root v+1 with fresh keys for the `rotate` roles (possibly none: a renewal) and a fresh expiry.

    The new root is signed by the old root key and, when it changes, the new one, so devices
    can verify the step. New key files are written before the new root, old ones removed after it.
    """
    keys_dir = (keys_dir or config.keys_dir).expanduser().resolve()
    root_key_dir = (root_key_dir or config.root_key_dir).expanduser().resolve()
    unknown = rotate - set(ROLES)
    if unknown:
        raise SigningKeyError(f"unknown role(s) {', '.join(sorted(unknown))} (roles: {', '.join(ROLES)})")
    current = Keyring.load(config, keys_dir).root
    signed = current.signed
    old_root_key = signed.get_key(signed.roles["root"].keyids[0])
    old_root_signer = _find_signer(root_key_dir, "root", old_root_key)
    if old_root_signer is None:
        raise SigningKeyError(
            f"the root key of root v{signed.version} ({old_root_key.keyid[:16]}) is not in {root_key_dir}: "
            "bring the offline root key back (--root-key-dir), or for keys made before the root key had its own "
            "directory, pass --root-key-dir set to the keys directory"
        )
    if not (keys_dir / f"{signed.version}.root.json").exists():  # keys made before roots were numbered
        _write_root(keys_dir, current)
    new = Metadata[Root].from_bytes(current.to_bytes())
    new.signed.version += 1
    new.signed.expires = expiry(config.root_expiry_s, now)
    retired: list[Path] = []
    root_signers: list[Signer] = [old_root_signer]
    for role in ROLES:
        if role not in rotate:
            continue
        directory = root_key_dir if role == "root" else keys_dir
        old_key = signed.get_key(signed.roles[role].keyids[0])
        fresh = CryptoSigner.generate_ed25519()
        _write_private_key(_key_file(directory, role, fresh), fresh)
        new.signed.revoke_key(old_key.keyid, role)
        new.signed.add_key(fresh.public_key, role)
        if role == "root":
            root_signers.append(fresh)
        retired += [p for p in directory.glob(f"{role}*.pem") if p != _key_file(directory, role, fresh)]
    new.signatures.clear()
    for signer in root_signers:
        new.sign(signer, append=True)
    _write_root(keys_dir, new)
    for path in retired:  # only now does nothing need them
        path.unlink(missing_ok=True)
    return new


def ensure_keys(config: ReleaseConfig) -> Path | None:
    """Create the keys on first use (outside the repository); the new root's path, or None if they existed."""
    if (config.keys_dir / ROOT_FILE).exists():
        return None
    return init_keys(config)
