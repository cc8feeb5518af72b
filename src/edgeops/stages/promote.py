"""Promote: register the verified model and publish it as a signed release devices poll.

One commit point. The conditional write of the model's `timestamp.json` (inside
`ota.publisher.publish`) is what makes a release live; everything else follows from
what is live. So: keys are loaded first (no keys, nothing happens), `reconcile` repairs
whatever an earlier crash left behind, a registry version is created (invisible until
an alias names it), the release is published, and `reconcile` then points the registry
alias at the live release and rewrites `latest.json` from it. A crash at any point
leaves the alias on a release that is live, or behind it until the next `promote` or
`edgeops release reconcile`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edgeops import progress
from edgeops.errors import EdgeopsError, PromotionError
from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import LatestManifestError, ReleaseError, newest_release, publish, read_state, repair_latest
from edgeops.ota.release import Release, manifest_key, model_key, model_target
from edgeops.records import StageRecord
from edgeops.settings import Settings, check_name, check_sha256
from edgeops.stack import tracking
from edgeops.stack.s3 import s3_client
from edgeops.stages.verify import VerifiedModel

INFO_FILE = "promotion.json"


class Promotion(StageRecord):
    record_file = INFO_FILE
    model_name: str
    version: int  # registry version
    channel: str
    # "requested" when the release signer publishes it (settings.release.signed_by); then nothing below is known yet.
    state: Literal["published", "requested"] = "published"
    release_version: int | None = None
    model_key: str = ""
    manifest_key: str
    manifest_url: str
    release: Release | None = None

    def describe(self) -> str:
        if self.state == "requested":
            return (
                f"{self.model_name} registry version {self.version}: {self.channel} release requested from the signer"
            )
        return f"{self.model_name} registry version {self.version} as {self.channel} v{self.release_version}"


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


@dataclass
class Reconciled:
    """What `reconcile` found live and what it had to repair."""

    model_name: str
    live_version: int | None  # the default channel's newest release
    registry_version: int | None  # the registry version that release carries
    alias_before: int | None
    alias_moved: bool
    latest_rewritten: bool


def _alias_version(client: Any, model_name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def reconcile(settings: Settings, model_name: str, keyring: Keyring, client: Any | None = None) -> Reconciled:
    """Make the registry alias and `latest.json` follow the live release of the default channel."""
    check_name("model name", model_name)
    s3, bucket, channel = s3_client(settings), settings.ota_bucket, settings.release.channel
    state = read_state(s3, bucket, model_name, keyring)
    live = newest_release(s3, bucket, model_name, state, channel)
    latest_rewritten = repair_latest(s3, bucket, model_name, state, channel) if state else False
    client = client or tracking.client(settings)
    alias = settings.registry_alias
    before = _alias_version(client, model_name, alias)
    wanted = live.registry_version if live else None
    moved = False
    if wanted is not None and before != wanted:
        client.set_registered_model_alias(model_name, alias, str(wanted))
        moved = True
    elif live is None and before is not None:
        client.delete_registered_model_alias(model_name, alias)  # nothing is live: nothing is in production
        moved = True
    return Reconciled(
        model_name=model_name,
        live_version=live.version if live else None,
        registry_version=wanted,
        alias_before=before,
        alias_moved=moved,
        latest_rewritten=latest_rewritten,
    )


REQUEST_DIR = "release"  # where a release request keeps the model and its record in the MLflow run
STATE_TAG = "release_state"  # on a registry version: requested | published | refused
ROLLOUT_TAG = "release_rollout_percent"  # on a request: the share of the channel's devices it is for


def _register(
    client: Any, model_name: str, verified: VerifiedModel, source: str, tags: dict[str, str] | None = None
) -> int:
    """Create a registry version: no alias names it until its release is live."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name, description=f"{verified.spec.architecture}, INT8 ExecuTorch for XNNPACK"
        )
    version = client.create_model_version(
        model_name,
        source=source,
        run_id=verified.run_id,
        tags={"sha256": verified.sha256, "dataset_version": verified.dataset_version, **(tags or {})},
    )
    return int(version.version)


def checked_release(
    settings: Settings, verified: VerifiedModel, model_path: Path, model_name: str | None, channel: str | None
) -> tuple[str, str, bytes]:
    """The model name, channel and bytes to release, or an error naming what is wrong: before anything is written."""
    channel = check_name("channel", channel or settings.release.channel)
    if channel not in settings.release.channels:
        raise PromotionError(f"unknown channel '{channel}' (channels: {', '.join(settings.release.channels)})")
    model_name = check_name(
        "model name", model_name or verified.model_name or settings.track(verified.spec.dataset).model_name
    )
    owner = settings.track_of(model_name)
    if owner is not None and owner != verified.spec.dataset:
        raise PromotionError(
            f"{model_name} is the {owner} track's model name; refusing to publish a {verified.spec.dataset} model "
            "under it (its devices could not run it); nothing was registered or published"
        )
    check_sha256("verified sha256", verified.sha256)
    model_bytes = model_path.read_bytes()
    if sha256_bytes(model_bytes) != verified.sha256:
        raise PromotionError(f"{model_path} does not match the verified sha256 {verified.sha256}; refusing to publish")
    return model_name, channel, model_bytes


def publish_registered(
    settings: Settings,
    keyring: Keyring,
    client: Any,
    verified: VerifiedModel,
    model_bytes: bytes,
    model_name: str,
    channel: str,
    version: int,
    rollout_percent: int,
) -> Release:
    """Publish registry version `version` as a signed release for `rollout_percent` % of the channel's devices,
    then let the alias follow what is live."""
    bucket = settings.ota_bucket
    progress.report(f"signing and uploading {model_name} ({len(model_bytes):,} bytes) to s3://{bucket}")
    after_commit: PromotionError | None = None
    try:
        release = publish(
            s3_client(settings),
            bucket,
            keyring,
            settings.release,
            build_release(verified, model_name, channel, version).model_copy(
                update={"rollout_percent": rollout_percent}
            ),
            model_bytes,
        )
    except LatestManifestError as error:  # live; reconcile below rewrites latest.json
        after_commit, release = error, error.release
    except (PromotionError, ReleaseError) as error:
        raise PromotionError(f"{error}; registry version {version} stays unaliased") from None
    except Exception as error:  # unknown whether the timestamp landed: what is live decides
        failure = f"publishing {model_name} to s3://{bucket}/ failed ({type(error).__name__}: {error})"
        try:
            went_live = reconcile(settings, model_name, keyring, client).registry_version == version
        except Exception:  # the store is unreachable: say what to run once it is back
            raise PromotionError(f"{failure}; run `edgeops release reconcile` once it answers") from None
        outcome = "it went live nonetheless; the registry alias follows it" if went_live else "nothing went live"
        raise PromotionError(f"{failure}; {outcome}") from None
    reconciled = reconcile(settings, model_name, keyring, client)
    if after_commit is not None and not reconciled.latest_rewritten:
        raise after_commit

    import mlflow

    with tracking.resume_run(settings, verified.run_id):
        mlflow.set_tags(
            {
                "promoted_version": str(version),
                "release": f"{channel} v{release.version}",
                "ota_manifest": f"s3://{bucket}/{manifest_key(model_name)}",
            }
        )
    return release


def promote(
    verified_dir: Path,
    out_dir: Path,
    settings: Settings,
    model_name: str | None = None,
    channel: str | None = None,
) -> Promotion:
    verified = VerifiedModel.load(verified_dir)
    model_name, channel, model_bytes = checked_release(
        settings, verified, verified_dir / verified.file, model_name, channel
    )
    if settings.release.signed_by == "signer":
        return _request(settings, verified_dir, verified, out_dir, model_name, channel)
    keyring = Keyring.load(settings.release)
    client = tracking.client(settings)
    try:
        reconcile(settings, model_name, keyring, client)  # repair what a crashed promote left behind
        source = f"runs:/{verified.run_id}/{verified.artifact_path}"
        version = _register(client, model_name, verified, source)
    except EdgeopsError:
        raise
    except Exception as error:  # MLflow raises several types; all mean the same here
        raise PromotionError(
            f"registering {model_name} in MLflow at {settings.tracking_uri} failed ({type(error).__name__}: {error}); "
            "nothing was published, the previous release stays live"
        ) from None
    release = publish_registered(
        settings, keyring, client, verified, model_bytes, model_name, channel, version, settings.release.rollout_percent
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


def _request(
    settings: Settings, verified_dir: Path, verified: VerifiedModel, out_dir: Path, model_name: str, channel: str
) -> Promotion:
    """Leave the release to the signer: the model and its record in the run, a registry version marked requested."""
    import mlflow

    try:
        with tracking.resume_run(settings, verified.run_id):
            mlflow.log_artifact(str(verified_dir / verified.file), REQUEST_DIR)
            mlflow.log_artifact(str(verified_dir / verified.record_file), REQUEST_DIR)
        client = tracking.client(settings)
        source = f"runs:/{verified.run_id}/{REQUEST_DIR}/{verified.file}"
        tags = {
            STATE_TAG: "requested",
            "release_channel": channel,
            ROLLOUT_TAG: str(settings.release.rollout_percent),
        }
        version = _register(client, model_name, verified, source, tags)
    except Exception as error:  # MLflow raises several types; all mean the same here
        raise PromotionError(
            f"requesting a release of {model_name} in MLflow at {settings.tracking_uri} failed "
            f"({type(error).__name__}: {error}); nothing was requested"
        ) from None
    promotion = Promotion(
        model_name=model_name,
        version=version,
        channel=channel,
        state="requested",
        manifest_key=manifest_key(model_name),
        manifest_url=settings.ota_url(manifest_key(model_name)),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    promotion.save(out_dir)
    return promotion
