"""What the agent says when it refuses: the expired role and who must act, and a sha256 that is no file name."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import MetaFile, TargetFile
from tuf.api.serialization.json import JSONSerializer

from edgeops.device.agent import Agent, AgentError
from edgeops.device.state import InstalledModel
from edgeops.device.updater import describe
from edgeops.errors import InputError
from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring
from edgeops.ota.publisher import read_state
from edgeops.ota.release import metadata_prefix
from edgeops.settings import Settings
from edgeops.stack.s3 import s3_client
from tests.support.releases import draft, release, tiny_model, unique_model_name

HEARTBEAT = "the publisher must run `edgeops release heartbeat --all`"
EXPIRED_AT = re.compile(r"metadata expired at (\S+Z):")


def expiring(settings: Settings, role: str, seconds: int) -> Settings:
    return settings.model_copy(update={"release": settings.release.model_copy(update={f"{role}_expiry_s": seconds})})


def test_expired_metadata_names_its_role_when_it_expired_and_who_must_act(
    stack_settings: Settings, tmp_path: Path
) -> None:
    published = datetime.now(UTC).replace(microsecond=0)
    names = {role: unique_model_name(f"expiry-{role}") for role in ("timestamp", "snapshot", "targets")}
    for role, name in names.items():
        release(expiring(stack_settings, role, 1), name, tiny_model(1))
    time.sleep(2.5)
    for role, name in names.items():
        agent = Agent(stack_settings, state_dir=tmp_path / role, model_name=name)
        with pytest.raises(AgentError) as refused:
            agent.poll()
        message = str(refused.value)
        assert f"the repository's {role} metadata expired at " in message, message
        assert HEARTBEAT in message, message
        found = EXPIRED_AT.search(message)
        assert found is not None, message
        expired = datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))
        assert published <= expired <= published + timedelta(seconds=30), message
        for other in {"timestamp", "snapshot", "targets", "root"} - {role}:
            assert f"{other} metadata expired" not in message
        if role == "timestamp":
            assert "frozen copy" in message  # only a stale timestamp can also be a replay
        else:
            assert "frozen" not in message, "a stale snapshot or targets is the publisher's to renew, not a replay"
        status = json.loads((agent.state.root / "status.json").read_text())
        assert status["last_error"] == message
        assert status["last_failure"]["type"] == "ExpiredMetadataError"


def test_describe_tells_an_expired_root_from_a_rollback() -> None:
    root = describe(tuf_errors.ExpiredMetadataError("Final root.json is expired"))
    assert "the repository's root metadata expired" in root
    assert "`edgeops keys rotate-root`" in root and "heartbeat" not in root
    snapshot = describe(tuf_errors.ExpiredMetadataError("snapshot.json is expired"))
    assert "the repository's snapshot metadata expired" in snapshot and HEARTBEAT in snapshot
    targets = describe(tuf_errors.ExpiredMetadataError("New targets is expired"))
    assert "the repository's targets metadata expired" in targets
    rollback = describe(tuf_errors.BadVersionNumberError("New timestamp version 3 must be >= 4"))
    assert rollback.startswith("older metadata than the device has seen (rollback)")
    assert "expired" not in rollback


def sign_descriptor(settings: Settings, name: str, descriptor: bytes, version: int) -> None:
    """Sign and make live a descriptor that the publisher itself would refuse: a compromised or buggy publisher."""
    s3, bucket, prefix = s3_client(settings), settings.ota_bucket, metadata_prefix(name)
    keyring = Keyring.load(settings.release)
    state = read_state(s3, bucket, name, keyring)
    assert state is not None
    path = f"releases/stable/{version}-{sha256_bytes(descriptor)[:12]}.json"
    s3.put_object(Bucket=bucket, Key=f"{name}/{path}", Body=descriptor)
    target = TargetFile.from_data(path, descriptor, ["sha256"])
    target.unrecognized_fields["custom"] = {"channel": "stable", "version": version, "dataset": "mat"}
    targets, snapshot, timestamp = state.targets, state.snapshot, state.timestamp
    targets.signed.targets[path] = target
    targets.signed.version += 1
    snapshot.signed.version += 1
    snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
    for role, metadata in (("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)):
        metadata.sign(keyring.signers[role])
        body = metadata.to_bytes(JSONSerializer(compact=True))
        key = f"{prefix}timestamp.json" if role == "timestamp" else f"{prefix}{metadata.signed.version}.{role}.json"
        s3.put_object(Bucket=bucket, Key=key, Body=body)


@pytest.mark.parametrize("bad", ["A" * 64, "../../../../escaped", "0" * 63])
def test_a_signed_descriptor_whose_sha256_is_not_hex_is_refused_before_any_download(
    stack_settings: Settings, tmp_path: Path, bad: str
) -> None:
    name = unique_model_name("bad-sha")
    release(stack_settings, name, tiny_model(1))
    agent = Agent(stack_settings, state_dir=tmp_path / "device", model_name=name)
    assert agent.poll().outcome == "installed v1"
    descriptor = (
        draft(name, tiny_model(2), sha256=bad, model_target=f"models/{bad}.pte", version=2)
        .model_dump_json(indent=2)
        .encode()
    )
    sign_descriptor(stack_settings, name, descriptor, 2)

    with pytest.raises(AgentError) as refused:
        agent.poll()
    message = str(refused.value)
    assert "(v2) was refused before its model was downloaded" in message
    assert f"its sha256 {bad!r} is not 64 lowercase hex digits" in message
    assert agent.state.status.last_poll is not None
    assert agent.state.status.last_poll.target_bytes == len(descriptor), "the descriptor only, never the model"
    running = agent.state.running_model()
    assert running is not None and running[0].version == 1
    assert sorted(p.name for p in agent.state.downloads_dir.iterdir()) == []
    for suffix in (".pte", ".part"):  # nothing was written where the sha256 would have pointed
        assert not (agent.state.downloads_dir / f"{bad}{suffix}").resolve().exists()
        assert not (agent.state.models_dir / f"{bad}{suffix}").resolve().exists()


def test_the_state_never_turns_a_malformed_sha256_into_a_path(tmp_path: Path) -> None:
    agent = Agent(Settings(), state_dir=tmp_path / "device", model_name="paths")
    with pytest.raises(InputError, match="is not a sha256"):
        agent.state.model_file("../../etc/passwd")
    with pytest.raises(InputError, match="is not a sha256"):
        agent.state.download_file("AB" * 32, ".part")
    assert agent.state.model_file("ab" * 32).parent == agent.state.models_dir
    hand_edited = InstalledModel(
        version=1,
        channel="stable",
        sha256="../outside",
        size=1,
        release_target="releases/stable/1-x.json",
        labels=[],
        input_shape=[],
        output_shape=[],
        installed_at="",
    )
    assert not agent.state.is_intact(hand_edited)
