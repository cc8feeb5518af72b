"""The release signer: it publishes what promote requested, so that no pipeline task holds a signing key.

With `settings.release.signed_by = "signer"` (a cluster), promote logs the verified model and its
record under `release/` in its MLflow run and registers a version tagged `release_state=requested`.
The signer runs apart, in a namespace of its own with the online keys (`edgeops release sign-requests`,
a CronJob), takes each request, checks it for itself, publishes it (for the share of the channel's devices
the request names, `release.rollout_percent` where promote ran) and tags the version `published`, or
`refused` with the reason.

It checks without trusting the pipeline's configuration: the model's sha256 against the record and
the registry; the model name against the track table; the values verify recorded against the
signer's own gates; and the program, run in the ExecuTorch runtime, reproducing its reference output.
Whoever can write to the registry can still forge that evidence; what they can no longer do is take
the keys, and every signed release traces back to a request.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops.errors import EdgeopsError
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import newest_release, read_state
from edgeops.runtime import reproduction_error
from edgeops.settings import Settings
from edgeops.stack import tracking
from edgeops.stack.s3 import s3_client
from edgeops.stages.promote import REQUEST_DIR, ROLLOUT_TAG, STATE_TAG, checked_release, publish_registered
from edgeops.stages.verify import VerifiedModel, gate_limits, passes


class RequestRefused(EdgeopsError):
    """A release request failed one of the signer's own checks; it is never retried."""


@dataclass
class SignedRequest:
    """What the signer did with one request."""

    model_name: str
    version: int  # registry version
    outcome: str
    state: str  # published | refused | requested (failed this time; retried next run)


def pending_requests(client: Any) -> list[Any]:
    """Registry versions waiting for a release, oldest first per model."""
    versions = client.search_model_versions(f"tags.{STATE_TAG} = 'requested'")
    return sorted(versions, key=lambda v: (v.name, int(v.version)))


def requested_rollout(version: Any) -> int:
    """The share of devices a request is for: 100 when it names none (a request from before staged rollouts)."""
    text = version.tags.get(ROLLOUT_TAG, "100")
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise RequestRefused(f"{ROLLOUT_TAG} is {text!r}, not a percentage from 1 to 100")
    return int(text)


def check_request(settings: Settings, version: Any, request_dir: Path) -> tuple[VerifiedModel, str, str, bytes]:
    """The request's record, model name, channel and model bytes, if it passes every check of the signer's own."""
    try:
        verified = VerifiedModel.load(request_dir)
    except (OSError, ValueError) as error:
        raise RequestRefused(f"the request's record in run {version.run_id} is unreadable: {error}") from None
    if verified.run_id != version.run_id or version.tags.get("sha256") != verified.sha256:
        raise RequestRefused(
            f"the registry version (run {version.run_id}, sha256 {version.tags.get('sha256')}) does not match the "
            f"record it points at (run {verified.run_id}, sha256 {verified.sha256})"
        )
    model_path = request_dir / verified.file
    model_name, channel, model_bytes = checked_release(
        settings, verified, model_path, version.name, version.tags.get("release_channel")
    )
    recorded = {gate.name: gate.value for gate in verified.gates}
    for gate, limit in gate_limits(settings.track(verified.spec.dataset).gates).items():
        if gate not in recorded:
            raise RequestRefused(f"verify recorded no value for gate {gate}")
        if not passes(gate, recorded[gate], limit):
            raise RequestRefused(f"{gate} is {recorded[gate]:.4g}, outside the signer's limit {limit:.4g}")
    spec = verified.spec
    try:
        distance = reproduction_error(
            model_path, spec.input_shape, spec.output_shape, verified.reference_input, verified.reference_output
        )
    except Exception as failure:  # the runtime raises several types for a program it cannot load or run
        raise RequestRefused(f"the program does not run: {type(failure).__name__}: {failure}") from None
    if distance > settings.agent.smoke_tolerance:
        raise RequestRefused(
            f"the program's output on its reference input is {distance:.4g} away from the recorded one "
            f"(tolerance {settings.agent.smoke_tolerance})"
        )
    return verified, model_name, channel, model_bytes


def _already_live(settings: Settings, keyring: Keyring, model_name: str, channel: str, version: int) -> int | None:
    """The release version serving registry `version` as the newest of `channel`, if a retry finds it live."""
    s3 = s3_client(settings)
    state = read_state(s3, settings.ota_bucket, model_name, keyring)
    live = newest_release(s3, settings.ota_bucket, model_name, state, channel)
    return live.version if live is not None and live.registry_version == version else None


def sign_request(settings: Settings, keyring: Keyring, client: Any, version: Any) -> SignedRequest:
    name, number = version.name, int(version.version)

    def tag(state: str, **more: str) -> None:
        client.set_model_version_tag(name, version.version, STATE_TAG, state)
        for key, value in more.items():
            client.set_model_version_tag(name, version.version, key, value)

    with tempfile.TemporaryDirectory() as scratch:
        try:
            request_dir = Path(client.download_artifacts(version.run_id, REQUEST_DIR, scratch))
            verified, model_name, channel, model_bytes = check_request(settings, version, request_dir)
            rollout_percent = requested_rollout(version)
        except EdgeopsError as error:  # the request itself is wrong: refuse it for good
            tag("refused", release_refusal=str(error)[:4000])
            return SignedRequest(name, number, f"refused: {error}", "refused")
        try:
            live = _already_live(settings, keyring, model_name, channel, number)
            if live is None:
                live = publish_registered(
                    settings, keyring, client, verified, model_bytes, model_name, channel, number, rollout_percent
                ).version
        except EdgeopsError as error:  # the store or the registry failed: the next run retries
            return SignedRequest(name, number, f"failed, retried next run: {error}", "requested")
    tag("published", release=f"{channel} v{live}")
    return SignedRequest(name, number, f"published as {channel} v{live}", "published")


def sign_requests(settings: Settings, keyring: Keyring, client: Any | None = None) -> list[SignedRequest]:
    """Handle every pending request, oldest first; one request's failure does not stop the others."""
    client = client or tracking.client(settings)
    return [sign_request(settings, keyring, client, version) for version in pending_requests(client)]
