"""The release signer: promote without keys asks for a release; only the signer, with its own checks, publishes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from edgeops.cli import app
from edgeops.device.agent import Agent
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import newest_release, read_state
from edgeops.settings import Settings
from edgeops.stack.s3 import s3_client
from edgeops.stages.promote import ROLLOUT_TAG, STATE_TAG, Promotion, promote
from edgeops.stages.signer import sign_requests
from tests.conftest import on_track
from tests.support.releases import tiny_model, unique_model_name
from tests.support.verified import verified_dir


def pipeline_side(settings: Settings, tmp_path: Path) -> Settings:
    """What a pipeline task on the cluster has: MLflow, the signer mode, and no keys at all."""
    release = settings.release.model_copy(update={"signed_by": "signer", "keys_dir": tmp_path / "no-keys-here"})
    return settings.model_copy(update={"release": release})


def request_release(settings: Settings, tmp_path: Path, **changes: Any) -> tuple[str, Promotion]:
    """Promote, as a pipeline task on the cluster does, a tiny verified model under a fresh name."""
    name = unique_model_name("signer")
    verified = verified_dir(settings, tmp_path / "verified", name, **changes)
    return name, promote(verified, tmp_path / "out", pipeline_side(settings, tmp_path))


def alias_of(settings: Settings, name: str) -> int | None:
    try:
        return int(
            MlflowClient(settings.tracking_uri).get_model_version_by_alias(name, settings.registry_alias).version
        )
    except MlflowException:
        return None


def tags_of(settings: Settings, name: str, version: int) -> dict[str, str]:
    return dict(MlflowClient(settings.tracking_uri).get_model_version(name, str(version)).tags)


def test_a_requested_release_is_published_only_by_the_signer(stack_settings: Settings, tmp_path: Path) -> None:
    name, requested = request_release(stack_settings, tmp_path)
    assert requested.state == "requested" and requested.release is None
    assert tags_of(stack_settings, name, requested.version)[STATE_TAG] == "requested"
    keyring = Keyring.load(stack_settings.release)
    assert read_state(s3_client(stack_settings), stack_settings.ota_bucket, name, keyring) is None  # nothing live
    assert alias_of(stack_settings, name) is None

    handled = [r for r in sign_requests(stack_settings, keyring) if r.model_name == name]
    published = (requested.version, "published", "published as stable v1")
    assert [(r.version, r.state, r.outcome) for r in handled] == [published]
    tags = tags_of(stack_settings, name, requested.version)
    assert (tags[STATE_TAG], tags["release"]) == ("published", "stable v1")
    assert alias_of(stack_settings, name) == requested.version
    agent = Agent(stack_settings, state_dir=tmp_path / "device", model_name=name)
    assert agent.poll().outcome == "installed v1"
    running = agent.state.running_model()
    assert running is not None and running[0].sha256 == tiny_model(3).sha256
    assert [r for r in sign_requests(stack_settings, keyring) if r.model_name == name] == []  # handled once


def test_the_signer_publishes_a_staged_request_for_the_share_it_asks(stack_settings: Settings, tmp_path: Path) -> None:
    """The pipeline's `release.rollout_percent` travels with the request: a cluster can start a staged rollout."""
    staged = stack_settings.model_copy(
        update={"release": stack_settings.release.model_copy(update={"rollout_percent": 5})}
    )
    name, requested = request_release(staged, tmp_path / "staged")
    assert tags_of(stack_settings, name, requested.version)[ROLLOUT_TAG] == "5"
    keyring = Keyring.load(stack_settings.release)
    (handled,) = [r for r in sign_requests(stack_settings, keyring) if r.model_name == name]  # signer's own: 100
    assert handled.state == "published"
    s3 = s3_client(stack_settings)
    state = read_state(s3, stack_settings.ota_bucket, name, keyring)
    live = newest_release(s3, stack_settings.ota_bucket, name, state, stack_settings.release.channel)
    assert live is not None and live.rollout_percent == 5

    other, forged = request_release(stack_settings, tmp_path / "forged")
    MlflowClient(stack_settings.tracking_uri).set_model_version_tag(other, str(forged.version), ROLLOUT_TAG, "250")
    (refused,) = [r for r in sign_requests(stack_settings, keyring) if r.model_name == other]
    assert (refused.state, refused.outcome) == (
        "refused",
        f"refused: {ROLLOUT_TAG} is '250', not a percentage from 1 to 100",
    )
    assert read_state(s3, stack_settings.ota_bucket, other, keyring) is None


def test_the_signer_refuses_a_request_its_own_gates_reject(stack_settings: Settings, tmp_path: Path) -> None:
    name, requested = request_release(stack_settings, tmp_path)
    # The pipeline's gates let 0.98 through; the signer's own demand more.
    strict = on_track(stack_settings, gates=stack_settings.mat.gates.model_copy(update={"min_int8_accuracy": 0.99}))
    keyring = Keyring.load(stack_settings.release)
    handled = [r for r in sign_requests(strict, keyring) if r.model_name == name]
    assert [(r.state, r.outcome) for r in handled] == [
        ("refused", "refused: min_int8_accuracy is 0.98, outside the signer's limit 0.99")
    ]
    tags = tags_of(stack_settings, name, requested.version)
    assert tags[STATE_TAG] == "refused" and "min_int8_accuracy" in tags["release_refusal"]
    assert read_state(s3_client(stack_settings), stack_settings.ota_bucket, name, keyring) is None
    assert alias_of(stack_settings, name) is None


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("registry sha256", "does not match the record it points at"),
        ("reference output", "away from the recorded one"),
    ],
)
def test_the_signer_refuses_a_request_whose_evidence_does_not_hold(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper: str, message: str
) -> None:
    changes = {"reference_output": [[100.0, -100.0]]} if tamper == "reference output" else {}
    name, requested = request_release(stack_settings, tmp_path, **changes)
    if tamper == "registry sha256":
        MlflowClient(stack_settings.tracking_uri).set_model_version_tag(
            name, str(requested.version), "sha256", "0" * 64
        )
    for variable, value in {
        "EDGEOPS_RELEASE__KEYS_DIR": str(stack_settings.release.keys_dir),
        "EDGEOPS_S3_PORT": str(stack_settings.s3_port),
        "EDGEOPS_MLFLOW_PORT": str(stack_settings.mlflow_port),
    }.items():
        monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(app, ["release", "sign-requests"])
    assert result.exit_code == 1, result.output
    assert f"{name} registry version {requested.version}: refused" in result.output and message in result.output
    assert tags_of(stack_settings, name, requested.version)[STATE_TAG] == "refused"
    keyring = Keyring.load(stack_settings.release)
    assert read_state(s3_client(stack_settings), stack_settings.ota_bucket, name, keyring) is None
