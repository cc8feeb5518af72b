"""Recording sessions in the raw bucket: what `edgeops record --upload` puts there, and ingest fetches back.

Layout: `s3://<raw>/sessions/<session dir>/session.json` beside the recordings it lists,
paths in the manifest relative to it.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from edgeops.datasets.mat import MANIFEST_FILE
from edgeops.errors import EdgeopsError, InputError
from edgeops.settings import Settings
from edgeops.stack.s3 import get_if_present, put_if_absent, s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SESSIONS_PREFIX = "sessions"


def upload_session(session_dir: Path, settings: Settings) -> str:
    """Put the session's recordings (once each) and its manifest under sessions/<dir>/ in the raw bucket;
    the manifest's s3:// URI, which `edgeops ingest --manifest` takes."""
    manifest = json.loads((session_dir / MANIFEST_FILE).read_text())
    prefix = f"{SESSIONS_PREFIX}/{session_dir.name}"
    bucket = settings.raw_bucket
    uri = f"s3://{bucket}/{prefix}/{MANIFEST_FILE}"
    try:
        s3 = s3_client(settings)
        for entry in manifest["recordings"]:
            local = session_dir / str(entry.get("file", ""))
            if local.is_file() and local.parent == session_dir:
                put_if_absent(s3, bucket, f"{prefix}/{local.name}", local.read_bytes(), "text/csv")
        s3.put_object(
            Bucket=bucket,
            Key=f"{prefix}/{MANIFEST_FILE}",
            Body=(session_dir / MANIFEST_FILE).read_bytes(),
            ContentType="application/json",
        )
    except (BotoCoreError, ClientError) as error:
        raise EdgeopsError(f"the upload of {session_dir} to {uri} failed: {error}") from error
    return uri


def fetch_session(uri: str, directory: Path, s3: S3Client) -> Path:
    """Download an `s3://bucket/.../session.json` and the recordings it lists into `directory`.

    The bucket's layout is mirrored, so file names stay relative to the manifest as they were.
    """
    bucket, _, key = uri.removeprefix("s3:").lstrip("/").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise InputError([f"{uri}: not the s3://bucket/key of a session manifest"])

    def fetch(key: str, listed: str = "") -> Path:
        found = get_if_present(s3, bucket, key)
        if found is None:
            raise InputError([f"s3://{bucket}/{key}: not found{listed}"])
        local = directory / key
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(found[0])
        return local

    manifest = fetch(key)
    try:
        entries = json.loads(manifest.read_text()).get("recordings", [])
    except (json.JSONDecodeError, AttributeError):
        entries = []  # read_manifest reports what is wrong with it
    problems = []
    for entry in entries if isinstance(entries, list) else []:
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str):
            continue
        target = posixpath.normpath(posixpath.join(posixpath.dirname(key), file))
        if posixpath.isabs(file) or target.startswith("../"):
            problems.append(f"{uri}: recording '{file}' must be a path relative to the manifest, inside the bucket")
            continue
        try:
            fetch(target, f" (listed by {uri})")
        except InputError as error:
            problems.extend(error.problems)
    if problems:
        raise InputError(problems)
    return manifest
