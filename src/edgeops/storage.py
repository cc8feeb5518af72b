"""S3 access through boto3, and the content hashing every stage agrees on."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from edgeops.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def s3_client(settings: Settings) -> S3Client:
    access_key, secret_key = settings.credentials
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=settings.s3_region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def put_if_absent(s3: S3Client, bucket: str, key: str, body: bytes, content_type: str) -> bool:
    """Write an object only if the key is free; return False when it already exists.

    A conditional write, so two writers racing for one key cannot both win.
    """
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
    except ClientError as error:
        if error_code(error) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
            return False
        raise
    return True
