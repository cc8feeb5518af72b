"""A release as devices see it: the signed descriptor and the names of things in a model's OTA repository.

Layout under `s3://<ota>/<model>/`:

    metadata/1.root.json, N.targets.json, N.snapshot.json   written once, cacheable forever
    metadata/timestamp.json                                  the one mutable file; its PUT makes a release live
    models/<sha256>.pte                                      content-addressed model targets
    releases/<channel>/<version>-<sha12>.json                release descriptors (what the agent installs)
    latest.json                                              for simple clients; also a signed target

Devices import only this module of `ota`: it needs neither keys nor S3.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field

METADATA = "metadata"
LATEST = "latest.json"


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
    # A staged rollout: the share of the channel's devices this release is for (`cohort_position`). Signed with
    # the rest of the descriptor and in the targets metadata, so nothing unsigned can widen it.
    rollout_percent: int = Field(100, ge=1, le=100)
    # The smoke test: logits the program gave on this input when it was released.
    reference_input: list[Any]
    reference_output: list[Any]


def cohort_position(device_id: str, model_name: str) -> float:
    """Where a device sits in a model's rollouts, in [0, 100): a release at p % is for the devices below p.

    A hash of the device's id, so a device places itself, the same way on every poll, and a wider step keeps
    every device of the narrower one.
    """
    digest = hashlib.sha256(f"{model_name}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def model_target(sha256: str) -> str:
    return f"models/{sha256}.pte"


def release_target(channel: str, version: int, descriptor_sha256: str) -> str:
    """Unique per content, so racing publishers never collide on a name; the timestamp picks the winner."""
    return f"releases/{channel}/{version}-{descriptor_sha256[:12]}.json"


def metadata_prefix(model_name: str) -> str:
    return f"{model_name}/{METADATA}/"


def manifest_key(model_name: str) -> str:
    """Bucket key of a model's `latest.json`."""
    return f"{model_name}/{LATEST}"


def model_key(model_name: str, sha256: str) -> str:
    """Bucket key of a model file, for clients that skip TUF."""
    return f"{model_name}/{model_target(sha256)}"


def latest_manifest(release: Release, descriptor_path: str) -> bytes:
    """`latest.json` for simple clients: the descriptor without the bulky smoke-test tensors."""
    body = release.model_dump(exclude={"reference_input", "reference_output"})
    body["release_target"] = descriptor_path
    return json.dumps(body, indent=2).encode()
