"""S3 access through boto3: one client per caller, reads that tell "missing" apart, conditional writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


def get_if_present(s3: S3Client, bucket: str, key: str) -> tuple[bytes, str] | None:
    """An object's bytes and ETag, or None when there is no such object."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error_code(error) in MISSING:
            return None
        raise
    return response["Body"].read(), str(response["ETag"])


PRECONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


def put_conditionally(
    s3: S3Client,
    bucket: str,
    key: str,
    body: bytes,
    content_type: str,
    *,
    if_match: str | None = None,
    cache_control: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> str | None:
    """Write an object only if the key is free (or, with `if_match`, still holds that ETag).

    Returns the new ETag, or None when another writer got there first: a
    conditional write, so two writers racing for one key cannot both win.
    `metadata` becomes the object's user metadata (x-amz-meta-*).
    """
    condition: dict[str, Any] = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
    if cache_control:
        condition["CacheControl"] = cache_control
    if metadata:
        condition["Metadata"] = dict(metadata)
    try:
        response = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **condition)
    except ClientError as error:
        if error_code(error) in PRECONDITION_FAILED:
            return None
        raise
    return str(response["ETag"])


def put_if_absent(
    s3: S3Client,
    bucket: str,
    key: str,
    body: bytes,
    content_type: str,
    cache_control: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> bool:
    return (
        put_conditionally(s3, bucket, key, body, content_type, cache_control=cache_control, metadata=metadata)
        is not None
    )


def metadata_if_present(s3: S3Client, bucket: str, key: str) -> dict[str, str] | None:
    """An object's user metadata (x-amz-meta-*, keys lowercase), or None when there is no such object."""
    try:
        response = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error_code(error) in MISSING:
            return None
        raise
    return {name.lower(): value for name, value in response.get("Metadata", {}).items()}
