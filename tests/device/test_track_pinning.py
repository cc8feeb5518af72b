"""A device installs only models of the track it serves, and its state directory belongs to one repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeops.device.agent import Agent, AgentError
from edgeops.device.state import StateDirError
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import ReleaseError, read_state
from edgeops.settings import Dataset, Settings
from edgeops.stack.s3 import s3_client
from tests.support.releases import release, tiny_model, unique_model_name


def poll(agent: Agent) -> str:
    try:
        return agent.poll().outcome
    except AgentError as error:
        return str(error)


def test_every_pairing_of_model_and_device_tracks_installs_only_matching_ones(
    stack_settings: Settings, tmp_path: Path
) -> None:
    names = {track: unique_model_name(f"pin-{track}") for track in Dataset}
    for track, name in names.items():
        release(stack_settings, name, tiny_model(1, track))
    for published, name in names.items():
        for serves in Dataset:
            agent = Agent(stack_settings, state_dir=tmp_path / f"{name}-{serves}", model_name=name, track=serves)
            outcome = poll(agent)
            assert agent.state.status.last_poll is not None
            if published == serves:
                assert outcome == "installed v1"
                assert agent.state.running_model() is not None
            else:  # refused from the signed targets metadata: not even the descriptor is downloaded
                assert outcome.startswith(f"release v1 of {name} does not fit this {serves} device")
                assert f"is signed for the {published} track" in outcome
                assert agent.state.running_model() is None
                assert agent.state.status.last_poll.target_bytes == 0


def test_a_release_whose_signature_differs_is_refused_before_its_model_is_downloaded(
    stack_settings: Settings, tmp_path: Path
) -> None:
    name = unique_model_name("pin-labels")
    model = tiny_model(2)
    release(stack_settings, name, model, labels=["empty", "cat", "person"])
    agent = Agent(stack_settings, state_dir=tmp_path / "device", model_name=name)
    outcome = poll(agent)
    assert "labels ['empty', 'cat', 'person'] (this device: ['empty_or_cat', 'occupied'])" in outcome
    assert agent.state.status.last_poll is not None
    assert 0 < agent.state.status.last_poll.target_bytes < len(model.data)  # the descriptor, not the model


def test_the_publisher_refuses_another_tracks_model_under_a_name(stack_settings: Settings) -> None:
    name = unique_model_name("pin-owner")
    release(stack_settings, name, tiny_model(1, Dataset.mat))
    keyring = Keyring.load(stack_settings.release)
    before = read_state(s3_client(stack_settings), stack_settings.ota_bucket, name, keyring)
    with pytest.raises(ReleaseError, match=f"{name} publishes mat models; refusing a pmd model under its name"):
        release(stack_settings, name, tiny_model(1, Dataset.pmd))
    after = read_state(s3_client(stack_settings), stack_settings.ota_bucket, name, keyring)
    assert before is not None and after is not None
    assert after.timestamp.signed.version == before.timestamp.signed.version  # nothing went live


def test_a_state_directory_belongs_to_one_repository(tmp_path: Path) -> None:
    settings = Settings()
    Agent(settings, state_dir=tmp_path, model_name="first")
    Agent(settings, state_dir=tmp_path, model_name="first")  # the same device, restarted
    with pytest.raises(StateDirError, match=r"following first \(mat track\), not second \(mat track\)"):
        Agent(settings, state_dir=tmp_path, model_name="second")
    with pytest.raises(StateDirError, match=r"following first \(mat track\), not first \(pmd track\)"):
        Agent(settings, state_dir=tmp_path, model_name="first", track=Dataset.pmd)


def test_the_agent_serves_the_track_its_model_name_belongs_to(tmp_path: Path) -> None:
    settings = Settings()
    assert Agent(settings, state_dir=tmp_path / "a", model_name=settings.pmd.model_name).track == Dataset.pmd
    assert Agent(settings, state_dir=tmp_path / "b", model_name=settings.mat.model_name).track == Dataset.mat
    assert Agent(settings, state_dir=tmp_path / "c", model_name="unlisted").track == Dataset.mat
