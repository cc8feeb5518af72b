"""Content hashes every wing agrees on, the one way edgeops replaces a file (atomically), and the one way
a name from outside (a manifest entry, an S3 key) becomes a local path (`inside`)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath, PurePosixPath
from typing import IO, Any, Literal

from edgeops.errors import InputError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_write(path: Path, mode: Literal["wb", "w"] = "wb") -> Iterator[IO[Any]]:
    """A file written under a fresh temporary name beside `path`, fsynced, and renamed onto `path` only
    when the `with` block succeeds; the rename is fsynced too.

    Readers, crashes and `kill -9` see the old file or the new one, never half of one; an exception
    inside the block leaves `path` as it was and no temporary file behind.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        handle: IO[Any] = temporary.open("xb") if mode == "wb" else temporary.open("x", newline="")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_dir(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """`mode`: the new file's permissions, set before any byte is written (0o600 for secrets)."""
    with atomic_write(path) as handle:
        if mode is not None:
            os.fchmod(handle.fileno(), mode)
        handle.write(data)


def generated_secret(path: Path, key: str) -> str:
    """A random secret made once into `path` (JSON, 0600 from its first byte) and read back from there after."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps({key: secrets.token_urlsafe(24)}).encode(), mode=0o600)
    return str(json.loads(path.read_text())[key])


def inside(base: Path, relative: str | PurePath, what: str = "path") -> Path:
    """`base / relative`, resolved, if it stays inside `base`; else an InputError naming `what`.

    For every name that comes from outside (a manifest entry, an S3 key) and becomes a local path:
    an absolute path, a `..` part, or a symlink out of `base` is refused, so nothing is ever
    read or written beside `base`.
    """
    text = str(relative)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    root = base.resolve()
    if not text or "\0" in text or PurePosixPath(text).is_absolute() or ".." in parts:
        raise InputError([f"{what} {text!r} must be a relative path inside {base}, without '..'"])
    path = (root / text).resolve()
    if path == root:
        raise InputError([f"{what} {text!r} names {base} itself, not a file inside it"])
    if not path.is_relative_to(root):
        raise InputError([f"{what} {text!r} leads outside {base} (through a symlink)"])
    return path
