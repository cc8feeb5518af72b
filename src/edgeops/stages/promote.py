"""Promote: register the verified model and publish it as a signed release devices poll.

Order matters. Keys are loaded first (no keys, nothing happens), then the registry
version and alias, then the signed release (`ota.publisher.publish`), whose timestamp
write is the single step that makes it live. If publishing fails the alias is put
back, so registry and devices agree on what is in production.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeops.errors import PromotionError
from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import LatestManifestError, ReleaseError, publish
from edgeops.ota.release import Release, manifest_key, model_key, model_target
from edgeops.records import StageRecord
from edgeops.settings import Settings
from edgeops.stack import tracking
from edgeops.stack.s3 import s3_client
from edgeops.stages.verify import VerifiedModel

INFO_FILE = "promotion.json"


class Promotion(StageRecord):
    record_file = INFO_FILE
    model_name: str
    version: int  # registry version
    channel: str
    release_version: int
    model_key: str
    manifest_key: str
    manifest_url: str
    release: Release


def build_release(verified: VerifiedModel, model_name: str, channel: str, registry_version: int) -> Release:
    return Release(
        model_name=model_name,
        channel=channel,
        model_target=model_target(verified.sha256),
        model_key=model_key(model_name, verified.sha256),
        sha256=verified.sha256,
        size=verified.size_bytes,
        registry_version=registry_version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source_run_id=verified.run_id,
        dataset=verified.spec.dataset,
        dataset_version=verified.dataset_version,
        quantization=verified.quantization,
        labels=verified.spec.labels,
        input={
            "shape": verified.spec.input_shape,
            "dtype": "float32",
            "units": verified.spec.input_units,
            "layout": verified.spec.input_layout,
        },
        output={"shape": verified.spec.output_shape, "dtype": "float32", "kind": "logits"},
        metrics=verified.metrics,
        reference_input=verified.reference_input,
        reference_output=verified.reference_output,
    )


def _register(client: Any, alias: str, model_name: str, verified: VerifiedModel) -> tuple[int, str | None]:
    """Create a registry version; return it and the version the alias pointed at before."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name, description=f"{verified.spec.architecture}, INT8 ExecuTorch for XNNPACK"
        )
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


def promote(
    verified_dir: Path,
    out_dir: Path,
    settings: Settings,
    model_name: str | None = None,
    channel: str | None = None,
) -> Promotion:
    channel = channel or settings.release.channel
    if channel not in settings.release.channels:
        raise PromotionError(f"unknown channel '{channel}' (channels: {', '.join(settings.release.channels)})")
    verified = VerifiedModel.load(verified_dir)
    model_name = model_name or verified.model_name or settings.track(verified.spec.dataset).model_name
    owner = settings.track_of(model_name)
    if owner is not None and owner != verified.spec.dataset:
        raise PromotionError(
            f"{model_name} is the {owner} track's model name; refusing to publish a {verified.spec.dataset} model "
            "under it (its devices could not run it); nothing was registered or published"
        )
    path = verified_dir / verified.file
    model_bytes = path.read_bytes()
    if sha256_bytes(model_bytes) != verified.sha256:
        raise PromotionError(f"{path} does not match the verified sha256 {verified.sha256}; refusing to publish")
    keyring = Keyring.load(settings.release)

    client = tracking.client(settings)
    try:
        version, previous_alias = _register(client, settings.registry_alias, model_name, verified)
        client.set_registered_model_alias(model_name, settings.registry_alias, str(version))
    except Exception as error:  # MLflow raises several types; all mean the same here
        raise PromotionError(
            f"registering {model_name} in MLflow at {settings.tracking_uri} failed ({type(error).__name__}: {error}); "
            "nothing was published, the previous release stays live"
        ) from None
    bucket = settings.ota_bucket
    try:
        release = publish(
            s3_client(settings),
            bucket,
            keyring,
            settings.release,
            build_release(verified, model_name, channel, version),
            model_bytes,
        )
    except LatestManifestError:
        raise  # the signed release is live, so the alias rightly points at it
    except Exception as error:  # whatever went wrong, the alias must follow what is live
        if previous_alias:
            client.set_registered_model_alias(model_name, settings.registry_alias, previous_alias)
        else:
            client.delete_registered_model_alias(model_name, settings.registry_alias)
        if isinstance(error, PromotionError | ReleaseError):
            raise PromotionError(f"{error} (registry alias '{settings.registry_alias}' restored)") from None
        raise PromotionError(
            f"publishing {model_name} to s3://{bucket}/ failed ({type(error).__name__}: {error}); "
            "the previous release stays live"
        ) from None

    import mlflow

    with tracking.resume_run(settings, verified.run_id):
        mlflow.set_tags(
            {
                "promoted_version": str(version),
                "release": f"{channel} v{release.version}",
                "ota_manifest": f"s3://{bucket}/{manifest_key(model_name)}",
            }
        )
    promotion = Promotion(
        model_name=model_name,
        version=version,
        channel=channel,
        release_version=release.version,
        model_key=release.model_key,
        manifest_key=manifest_key(model_name),
        manifest_url=settings.ota_url(manifest_key(model_name)),
        release=release,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    promotion.save(out_dir)
    return promotion
