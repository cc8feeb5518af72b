"""Track data in the raw bucket: `edgeops data upload pmd` puts a copy of PhysioNet PMD there once, and
ingest fetches it back where the data is not on disk, as in a cluster pod (the component image has none).

Layout: `s3://<raw>/<pmd.data.bucket_prefix>/` mirrors the local PMD root: the experiment's files under
their relative paths, and `SHA256SUMS.txt`, written last, so its presence means an upload completed. Every
file is checked against that list before it leaves a machine and again when it arrives. Each object carries
its sha256 as metadata, so a repeated upload sends nothing again, and no write ever overwrites an object.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from edgeops.datasets.pmd import FETCH_COMMAND, SUMS_FILE, experiment_dir, read_sums
from edgeops.datasets.pmd_fetch import release_files
from edgeops.errors import EdgeopsError, InputError
from edgeops.files import inside, sha256_bytes, sha256_file
from edgeops.settings import PmdDataConfig, Settings
from edgeops.stack.s3 import get_if_present, metadata_if_present, put_if_absent, s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

UPLOAD_COMMAND = "edgeops data upload pmd"
SHA256_METADATA = "sha256"  # x-amz-meta-sha256: the object's content hash, compared instead of its bytes

Progress = Callable[[str, int, int, bool], None]  # (relative path, files done, files total, sent)


class SourceConflictError(EdgeopsError):
    """The bucket holds other bytes under a key of the upload; nothing of it was overwritten."""


def source_key(config: PmdDataConfig, name: str) -> str:
    """The raw-bucket key of `name`, a path relative to the PMD root."""
    return f"{config.bucket_prefix.strip('/')}/{name}"


def source_uri(config: PmdDataConfig, bucket: str) -> str:
    return f"s3://{bucket}/{source_key(config, '')}"


def upload_pmd(config: PmdDataConfig, settings: Settings, progress: Progress | None = None) -> str:
    """Copy the experiment under `config.root` into the raw bucket; the copy's s3:// URI.

    Every file SHA256SUMS.txt lists for the experiment is checked against it before anything is written,
    and all problems are reported at once. Files the bucket already holds with that sha256 are not sent
    again; other bytes under one of the keys are a SourceConflictError, never overwritten.
    """
    root, bucket = config.root, settings.raw_bucket
    experiment_dir(config)  # no data here: the error names the way out
    sums_path = root / SUMS_FILE
    if not sums_path.is_file():
        raise InputError(
            [f"{sums_path}: not found; the upload checks every file against it (`{FETCH_COMMAND}` downloads it)"]
        )
    sums_text = sums_path.read_text()
    sums = read_sums(sums_text, str(sums_path))
    names = release_files(sums, config.experiment)
    if not any(name.startswith(f"{config.experiment}/") for name in names):
        raise InputError([f"{sums_path}: lists no file under {config.experiment}/"])
    problems = []
    for name in names:
        path = inside(root, name, "file")
        if not path.is_file():
            problems.append(f"{path}: listed in {sums_path} but missing (`{FETCH_COMMAND}` downloads it)")
        elif (actual := sha256_file(path)) != sums[name]:
            problems.append(f"{path}: sha256 {actual} does not match {SUMS_FILE} ({sums[name]}); the file was changed")
    if problems:
        raise InputError(problems)

    uri = source_uri(config, bucket)
    try:
        s3 = s3_client(settings)
        for done, name in enumerate(names, start=1):
            data = inside(root, name, "file").read_bytes()
            if sha256_bytes(data) != sums[name]:
                raise InputError([f"{root / name}: changed while it was uploaded; upload again"])
            sent = put_once(s3, bucket, source_key(config, name), data, sums[name])
            if progress:
                progress(name, done, len(names), sent)
        put_once(s3, bucket, source_key(config, SUMS_FILE), sums_text.encode(), sha256_bytes(sums_text.encode()))
    except (BotoCoreError, ClientError) as error:
        raise EdgeopsError(f"the upload of {root} to {uri} failed: {error}") from error
    return uri


def put_once(s3: S3Client, bucket: str, key: str, data: bytes, sha256: str) -> bool:
    """Put `data` (whose sha256 is `sha256`) at `key` unless the bucket holds it already; whether it was sent."""
    for _ in range(3):  # another writer may put the key between our look and our write
        stored = stored_sha256(s3, bucket, key)
        if stored == sha256:
            return False
        if stored is not None:
            raise SourceConflictError(
                f"s3://{bucket}/{key} already holds other bytes (sha256 {stored}, not {sha256}): another copy was "
                "uploaded under this prefix, and it is not overwritten; set EDGEOPS_PMD__DATA__BUCKET_PREFIX "
                "to upload beside it"
            )
        if put_if_absent(s3, bucket, key, data, "text/plain", metadata={SHA256_METADATA: sha256}):
            return True
    raise SourceConflictError(f"s3://{bucket}/{key} kept changing while it was uploaded; upload again")


def stored_sha256(s3: S3Client, bucket: str, key: str) -> str | None:
    """The sha256 of the object at `key` (its metadata, else its bytes), or None when there is none."""
    metadata = metadata_if_present(s3, bucket, key)
    if metadata is None:
        return None
    if SHA256_METADATA in metadata:
        return metadata[SHA256_METADATA]
    found = get_if_present(s3, bucket, key)  # written by another tool, without our metadata
    return sha256_bytes(found[0]) if found else None


def fetch_pmd(config: PmdDataConfig, directory: Path, s3: S3Client, bucket: str) -> PmdDataConfig:
    """Download the bucket's copy of `config.subjects` and its SHA256SUMS.txt into `directory`, every file
    checked against the list as it arrives; `config` with `directory` as its root.

    No copy in the bucket is an InputError naming both places and how to fill either.
    """
    uri = source_uri(config, bucket)
    found = get_if_present(s3, bucket, source_key(config, SUMS_FILE))
    if found is None:
        raise InputError(
            [
                f"PMD data not found: not at {(config.root / config.experiment).resolve()} on this machine, and no "
                f"copy at {uri} (no {SUMS_FILE} there). Upload it once from a machine that has it: "
                f"`{UPLOAD_COMMAND}` (it reads EDGEOPS_PMD__DATA__ROOT, default {config.root})"
            ]
        )
    sums_text = found[0].decode("utf-8", errors="replace")
    sums = read_sums(sums_text, uri + SUMS_FILE)
    wanted = {subject: f"{config.experiment}/{subject}/" for subject in config.subjects}
    names = sorted(name for name in sums if any(name.startswith(prefix) for prefix in wanted.values()))
    problems = [
        f"{uri}{SUMS_FILE}: lists no file of subject {subject} ({prefix})"
        for subject, prefix in wanted.items()
        if not any(name.startswith(prefix) for name in names)
    ]
    for name in names:
        target = inside(directory, name, "file")
        stored = get_if_present(s3, bucket, source_key(config, name))
        if stored is None:
            problems.append(f"{uri}{name}: listed in {SUMS_FILE} but missing; upload again: `{UPLOAD_COMMAND}`")
        elif (actual := sha256_bytes(stored[0])) != sums[name]:
            problems.append(f"{uri}{name}: sha256 {actual} does not match {SUMS_FILE} ({sums[name]}); not used")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(stored[0])
    if problems:
        raise InputError(problems)
    (directory / SUMS_FILE).write_text(sums_text)
    return config.model_copy(update={"root": directory})
