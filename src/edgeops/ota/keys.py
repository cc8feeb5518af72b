"""TUF signing keys: one Ed25519 key per role and the signed root that trusts them, kept outside the repository."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from edgeops.errors import EdgeopsError
from edgeops.settings import ReleaseConfig

ROLES = ("root", "targets", "snapshot", "timestamp")
ROOT_FILE = "root.json"


class SigningKeyError(EdgeopsError):
    """Signing keys are missing, misplaced or do not match the repository."""


def expiry(seconds: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)


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
    root = Root(expires=expiry(config.root_expiry_s), consistent_snapshot=True)
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


def ensure_keys(config: ReleaseConfig) -> Path | None:
    """Create the keys on first use (outside the repository); the new root's path, or None if they existed."""
    if (config.keys_dir / ROOT_FILE).exists():
        return None
    return init_keys(config)
