"""What the stack's S3 holds, to show that a refused input wrote nothing there."""

from __future__ import annotations

from edgeops.settings import Settings
from edgeops.stack.s3 import s3_client


def objects(settings: Settings) -> dict[str, str]:
    """Every object in every bucket, as `bucket/key` -> ETag."""
    s3 = s3_client(settings)
    found = {}
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                found[f"{name}/{item['Key']}"] = str(item["ETag"])
    return found
