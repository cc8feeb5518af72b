"""Recording sessions in the raw bucket: what `edgeops record --upload` puts there, and ingest fetches back.

Layout: `s3://<raw>/sessions/<session dir>/session.json` beside the recordings it lists,
paths in the manifest relative to it and inside its directory. Keys and manifest entries become
local paths only through `edgeops.files.inside`, and uploads never overwrite another session.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from edgeops.datasets.mat import MANIFEST_FILE
from edgeops.errors import EdgeopsError, InputError
from edgeops.files import inside
from edgeops.settings import Settings, check_name
from edgeops.stack.s3 import get_if_present, put_conditionally, put_if_absent, s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SESSIONS_PREFIX = "sessions"
SESSION_PARAM = "dataset.session"  # the MLflow run parameter ingest records a fetched session's s3:// URI in


def is_session_uri(manifest: Path | str) -> bool:
    """Whether `manifest` names a manifest in a bucket rather than on this machine (`Path` folds "s3://" to "s3:/")."""
    return str(manifest).startswith("s3:/")


def session_location(uri: Path | str) -> tuple[str, str]:
    """(bucket, key) of a session manifest's URI, or an InputError when it names none."""
    bucket, _, key = str(uri).removeprefix("s3:").lstrip("/").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise InputError([f"{uri}: not the s3://bucket/key of a session manifest"])
    return bucket, key


def session_key(session: str, file: str) -> str:
    """The raw-bucket key of a file of the uploaded session `session`."""
    return f"{SESSIONS_PREFIX}/{session}/{file}"


def session_name(session_dir: Path) -> str:
    """The name a session directory is uploaded under (its last part), refused now if it cannot be a key."""
    return check_name("session directory name", session_dir.resolve().name)


class SessionConflictError(EdgeopsError):
    """The bucket holds another session under this session's name; nothing of it was overwritten."""


def upload_session(session_dir: Path, settings: Settings) -> str:
    """Put the session's recordings (once each) and its manifest under sessions/<dir>/ in the raw bucket;
    the manifest's s3:// URI, which `edgeops ingest --manifest` takes.

    Every write is conditional, so nothing in the bucket is ever overwritten by another session: the
    manifest is created only if absent, or replaced (if its ETag still matches) only by a manifest that
    keeps all it listed and adds recordings, as `edgeops record --upload` into the same directory does.
    A session of the same name with other recordings, or a recording of the same name with other bytes,
    is a SessionConflictError, raised before anything is written.
    """
    name = session_name(session_dir)
    manifest_path = session_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError([f"{manifest_path}: session manifest not found"])
    body = manifest_path.read_bytes()
    manifest = _manifest_json(body, str(manifest_path))
    files: dict[str, Path] = {}  # key -> local file, checked before anything is written
    problems: list[str] = []
    for number, entry in enumerate(manifest["recordings"], start=1):
        file = entry.get("file") if isinstance(entry, dict) else None
        try:
            local = inside(session_dir, file if isinstance(file, str) else "", f"recording {number}")
        except InputError as error:
            problems.extend(f"{manifest_path}: {problem}" for problem in error.problems)
            continue
        if not local.is_file():
            problems.append(f"{manifest_path}: recording {number} '{file}' not found at {local}")
            continue
        files[session_key(name, local.relative_to(session_dir.resolve()).as_posix())] = local
    if problems:
        raise InputError(problems)
    bucket, key = settings.raw_bucket, session_key(name, MANIFEST_FILE)
    uri = f"s3://{bucket}/{key}"
    try:
        s3 = s3_client(settings)
        for _ in range(5):  # another writer may change the manifest between our read and our write
            found = get_if_present(s3, bucket, key)
            if found is not None:
                if found[0] == body:
                    return uri  # uploaded before, unchanged since
                _check_extends(_manifest_json(found[0], uri), manifest, uri, session_dir)
            absent: dict[str, bytes] = {}
            for recording, local in files.items():  # every clash found before the first write
                data, stored = local.read_bytes(), get_if_present(s3, bucket, recording)
                if stored is None:
                    absent[recording] = data
                elif stored[0] != data:
                    raise _clash(bucket, recording, name, session_dir)
            for recording, data in absent.items():
                if not put_if_absent(s3, bucket, recording, data, "text/csv"):
                    stored = get_if_present(s3, bucket, recording)  # another writer got there meanwhile
                    if stored is not None and stored[0] != data:
                        raise _clash(bucket, recording, name, session_dir)
            if found is None:
                written = put_if_absent(s3, bucket, key, body, "application/json")
            else:
                written = put_conditionally(s3, bucket, key, body, "application/json", if_match=found[1]) is not None
            if written:
                return uri
    except (BotoCoreError, ClientError) as error:
        raise EdgeopsError(f"the upload of {session_dir} to {uri} failed: {error}") from error
    raise SessionConflictError(f"{uri} kept changing while {session_dir} was uploaded; upload again")


def _clash(bucket: str, key: str, name: str, session_dir: Path) -> SessionConflictError:
    return SessionConflictError(
        f"s3://{bucket}/{key} already holds a different recording of that name: another session named "
        f"'{name}' was uploaded, and it is not overwritten; rename {session_dir} and upload again"
    )


def _manifest_json(body: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError([f"{where}: not a session manifest: {error}"]) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("recordings"), list):
        raise InputError([f'{where}: not a session manifest ({{"recordings": [...]}})'])
    return manifest


def _check_extends(stored: dict[str, Any], local: dict[str, Any], uri: str, session_dir: Path) -> None:
    """Refuse to replace `stored` unless `local` keeps everything it says and only adds recordings."""
    listed = stored["recordings"]
    same_rest = {k: v for k, v in stored.items() if k != "recordings"} == {
        k: v for k, v in local.items() if k != "recordings"
    }
    if not same_rest or local["recordings"][: len(listed)] != listed:
        raise SessionConflictError(
            f"{uri} already lists recordings that {session_dir / MANIFEST_FILE} does not: another session of the "
            f"same name was uploaded, and it is not overwritten; rename {session_dir} and upload again"
        )


def fetch_session(uri: str, directory: Path, s3: S3Client) -> Path:
    """Download an `s3://bucket/.../session.json` and the recordings it lists into `directory`.

    The bucket's layout is mirrored, so file names stay relative to the manifest as they were. A key
    that is not a plain relative path (`s3://raw//abs`, `..`), or a listed recording outside the
    manifest's directory, is an InputError before anything is written.
    """
    bucket, key = session_location(uri)
    manifest = local_path(directory, key, uri)
    found = get_if_present(s3, bucket, key)
    if found is None:
        raise InputError([f"s3://{bucket}/{key}: not found"])
    try:
        entries = json.loads(found[0]).get("recordings", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        entries = []  # read_manifest reports what is wrong with it
    targets: list[tuple[str, Path]] = []
    problems: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str):
            continue  # read_manifest reports it
        try:
            inside(manifest.parent, file)
        except InputError:
            problems.append(f"{uri}: recording {file!r} must be a path relative to the manifest, inside its directory")
            continue
        target = posixpath.normpath(posixpath.join(posixpath.dirname(key), file))
        targets.append((target, local_path(directory, target, uri)))
    if problems:
        raise InputError(problems)
    fetched = [(manifest, found[0])]
    for target, local in targets:
        recording = get_if_present(s3, bucket, target)
        if recording is None:
            problems.append(f"s3://{bucket}/{target}: not found (listed by {uri})")
        else:
            fetched.append((local, recording[0]))
    if problems:
        raise InputError(problems)
    for local, data in fetched:
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
    return manifest


def local_path(directory: Path, key: str, uri: str) -> Path:
    """Where the object `key` is mirrored under `directory`: refused unless a plain relative key inside it."""
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InputError([f"{uri}: key {key!r} must be a relative path without empty, '.' or '..' parts"])
    try:
        return inside(directory, key, "key")
    except InputError as error:
        raise InputError([f"{uri}: {problem}" for problem in error.problems]) from None
