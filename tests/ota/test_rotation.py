"""Root and online-key rotation, `release heartbeat --all`, `release status`: the operator's side of freshness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeops.cli import app
from edgeops.device.agent import Agent
from edgeops.ota.keys import Keyring, SigningKeyError, init_keys, rotate_root
from edgeops.ota.publisher import read_state
from edgeops.settings import Settings
from edgeops.stack.s3 import s3_client
from tests.support.releases import release, tiny_model, unique_model_name


@pytest.fixture
def own_keys(stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with keys of their own, so rotating them touches no other test's repositories."""
    keys, root_key = tmp_path / "keys", tmp_path / "root-key"
    monkeypatch.setenv("EDGEOPS_RELEASE__KEYS_DIR", str(keys))
    monkeypatch.setenv("EDGEOPS_RELEASE__ROOT_KEY_DIR", str(root_key))
    release_config = stack_settings.release.model_copy(update={"keys_dir": keys, "root_key_dir": root_key})
    init_keys(release_config)
    return stack_settings.model_copy(update={"release": release_config})


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout  # notes such as skipped models go to stderr


def test_devices_follow_a_root_and_online_key_rotation(own_keys: Settings, tmp_path: Path) -> None:
    name = unique_model_name("rotate")
    provisioned = tmp_path / "provisioned-root.json"
    shutil.copy(own_keys.release.keys_dir / "root.json", provisioned)
    release(own_keys, name, tiny_model(1))
    agent = Agent(own_keys, state_dir=tmp_path / "device", model_name=name, trusted_root=provisioned)
    assert agent.poll().outcome == "installed v1"

    cli("keys", "rotate-root", "--online", "timestamp", "--online", "snapshot", "--online", "targets")
    cli("keys", "rotate-root", "--renew")  # a second step in the chain: the device must walk both
    rotated = Keyring.load(own_keys.release)
    assert rotated.root.signed.version == 3 and len(rotated.roots) == 3
    # Until the heartbeat publishes the new roots and re-signs, the live metadata carries retired keys.
    stale = read_state(s3_client(own_keys), own_keys.ota_bucket, name, rotated)
    assert stale is not None and stale.stale_keys == {"timestamp", "snapshot", "targets"}

    out = cli("release", "heartbeat", "--model", name)
    assert "re-signed targets, snapshot, timestamp" in out
    fresh = read_state(s3_client(own_keys), own_keys.ota_bucket, name, rotated)
    assert fresh is not None and fresh.stale_keys == set()
    assert agent.poll().outcome == "up to date at v1"
    root = json.loads((agent.state.metadata_dir / "root.json").read_text())
    assert root["signed"]["version"] == 3

    release(own_keys, name, tiny_model(2))  # signed with the new online keys only
    assert agent.poll().outcome == "installed v2"


def test_rotating_needs_the_offline_root_key(own_keys: Settings, tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="bring the offline root key back"):
        rotate_root(own_keys.release, {"root"}, root_key_dir=tmp_path / "elsewhere")
    assert Keyring.load(own_keys.release).root.signed.version == 1  # nothing was written
    assert not list(own_keys.release.keys_dir.glob("2.root.json"))


def test_status_warns_ahead_and_heartbeat_all_renews_every_model(own_keys: Settings) -> None:
    names = [unique_model_name("status") for _ in range(2)]
    short = own_keys.release.model_copy(update={"snapshot_expiry_s": 40, "warn_remaining": 0.9})
    for name in names:
        release(own_keys.model_copy(update={"release": short}), name, tiny_model(1))
    rows = [json.loads(line) for line in cli("release", "status", "--json").splitlines()]
    mine = {(row["model_name"], row["role"]): row for row in rows if row["model_name"] in names}
    assert {role for _, role in mine} == {"root", "targets", "snapshot", "timestamp"}
    for name in names:
        snapshot = mine[(name, "snapshot")]
        assert snapshot["level"] == "warn" and "heartbeat" in snapshot["advice"]  # 40 s of 30 days is far past due
        assert mine[(name, "targets")]["level"] == "ok" and mine[(name, "root")]["version"] == 1

    out = cli("release", "heartbeat", "--all")
    for name in names:
        assert f"{name}: re-signed snapshot, timestamp" in out
    rows = [json.loads(line) for line in cli("release", "status", "--json").splitlines()]
    assert all(row["level"] == "ok" for row in rows if row["model_name"] in names)
