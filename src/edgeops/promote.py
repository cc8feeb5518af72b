"""Promote: register the verified model and publish it to the OTA bucket devices poll.

Order matters. The content-addressed model object goes up first (never
overwritten), then the registry version and alias, and last the manifest
`<model>/latest.json`, the single write that makes a release live. The
manifest is written conditionally on the one we read at the start, so a
concurrent promotion cannot be silently overwritten, and a failure anywhere
before it leaves devices on the previous release.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from edgeops import tracking
from edgeops.errors import PromotionError
from edgeops.records import StageRecord
from edgeops.settings import Settings
from edgeops.storage import error_code, put_if_absent, s3_client, sha256_bytes
from edgeops.verify import VerifiedModel

INFO_FILE = "promotion.json"


class Promotion(StageRecord):
    record_file = INFO_FILE
    model_name: str
    version: int
    model_key: str
    manifest_key: str
    manifest_url: str
    manifest: dict[str, Any]


def manifest_key(model_name: str) -> str:
    return f"{model_name}/latest.json"


def model_key(model_name: str, sha256: str) -> str:
    return f"{model_name}/models/{sha256}.pte"


def build_manifest(verified: VerifiedModel, model_name: str, version: int, key: str) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "version": version,
        "model_key": key,
        "sha256": verified.sha256,
        "size": verified.size_bytes,
        "format": "executorch-pte",
        "backend": "xnnpack",
        "quantization": "int8 pt2e per-channel",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_run_id": verified.run_id,
        "dataset_version": verified.dataset_version,
        "metrics": verified.metrics,
        "labels": verified.spec.labels,
        "input": {
            "shape": verified.spec.input_shape,
            "dtype": "float32",
            "units": "Pa",
            "layout": "[batch, frame, chamber], oldest frame first",
        },
        "output": {"shape": verified.spec.output_shape, "dtype": "float32", "kind": "logits"},
    }


def _current_manifest_etag(s3: Any, bucket: str, key: str) -> str | None:
    try:
        return str(s3.head_object(Bucket=bucket, Key=key)["ETag"])
    except ClientError as error:
        if error_code(error) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


def _register(client: Any, alias: str, model_name: str, verified: VerifiedModel) -> tuple[int, str | None]:
    """Create a registry version; return it and the version the alias pointed at before."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Mat occupancy, INT8 ExecuTorch for XNNPACK")
    try:
        previous: str | None = client.get_model_version_by_alias(model_name, alias).version
    except MlflowException:
        previous = None
    version = client.create_model_version(
        model_name,
        source=f"runs:/{verified.run_id}/{verified.artifact_path}",
        run_id=verified.run_id,
        tags={"sha256": verified.sha256, "dataset_version": verified.dataset_version},
    )
    return int(version.version), previous


def promote(verified_dir: Path, out_dir: Path, settings: Settings, model_name: str | None = None) -> Promotion:
    model_name = model_name or settings.model_name
    verified = VerifiedModel.load(verified_dir)
    path = verified_dir / verified.file
    model_bytes = path.read_bytes()
    if sha256_bytes(model_bytes) != verified.sha256:
        raise PromotionError(f"{path} does not match the verified sha256 {verified.sha256}; refusing to publish")

    s3 = s3_client(settings)
    bucket = settings.ota_bucket
    latest = manifest_key(model_name)
    etag_before = _current_manifest_etag(s3, bucket, latest)

    key = model_key(model_name, verified.sha256)
    if not put_if_absent(s3, bucket, key, model_bytes, "application/octet-stream"):
        existing = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if existing != verified.size_bytes:
            raise PromotionError(f"s3://{bucket}/{key} exists with {existing} bytes, expected {verified.size_bytes}")

    client = tracking.client(settings)
    try:
        version, previous_alias = _register(client, settings.registry_alias, model_name, verified)
        client.set_registered_model_alias(model_name, settings.registry_alias, str(version))
    except Exception as error:  # MLflow raises several types; all mean the same here
        raise PromotionError(
            f"registering {model_name} in MLflow at {settings.tracking_uri} failed ({type(error).__name__}: {error}); "
            "the OTA manifest was not touched, the previous release stays live"
        ) from None
    manifest = build_manifest(verified, model_name, version, key)
    body = json.dumps(manifest, indent=2).encode()
    try:
        if etag_before:  # replace exactly the manifest we read, or fail
            s3.put_object(Bucket=bucket, Key=latest, Body=body, ContentType="application/json", IfMatch=etag_before)
        else:  # the first release: only if nobody else created one meanwhile
            s3.put_object(Bucket=bucket, Key=latest, Body=body, ContentType="application/json", IfNoneMatch="*")
    except ClientError as error:
        if previous_alias:
            client.set_registered_model_alias(model_name, settings.registry_alias, previous_alias)
        else:
            client.delete_registered_model_alias(model_name, settings.registry_alias)
        if error_code(error) in {"PreconditionFailed", "412"}:
            raise PromotionError(
                f"s3://{bucket}/{latest} changed while promoting version {version} (another promotion won); "
                "the manifest was left as the other promotion wrote it"
            ) from None
        raise PromotionError(
            f"writing s3://{bucket}/{latest} failed ({error}); the previous release stays live"
        ) from None

    import mlflow

    with tracking.resume_run(settings, verified.run_id):
        mlflow.set_tags({"promoted_version": str(version), "ota_manifest": f"s3://{bucket}/{latest}"})
    promotion = Promotion(
        model_name=model_name,
        version=version,
        model_key=key,
        manifest_key=latest,
        manifest_url=settings.ota_url(latest),
        manifest=manifest,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    promotion.save(out_dir)
    return promotion
