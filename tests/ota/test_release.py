"""Signed releases and the edge agent against the real stack: the happy path, then every attack.

Each attack test starts from a device running v1, tampers with the bucket the way an
attacker controlling it would, and checks the device refuses the update, keeps running
its verified model, and recovers once the repository is honest again.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import urllib3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import ConnectionClosedError
from tuf.api.metadata import Metadata, Timestamp

from edgeops.device.agent import Agent, AgentError
from edgeops.errors import PromotionError
from edgeops.files import sha256_bytes
from edgeops.ota.keys import Keyring, SigningKeyError, init_keys
from edgeops.ota.publisher import (
    ReleaseError,
    RepositoryState,
    heartbeat,
    publish,
    read_release,
    read_state,
    rollback,
)
from edgeops.ota.release import Release, metadata_prefix
from edgeops.pipeline.demo import http_get
from edgeops.settings import ReleaseConfig, Settings
from edgeops.stack.s3 import s3_client
from tests.conftest import REPO
from tests.support.releases import TinyModel, draft, release, tiny_model, unique_model_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def name() -> str:
    return unique_model_name()


def device(settings: Settings, tmp_path: Path, name: str, **kwargs: Any) -> Agent:
    return Agent(settings, state_dir=tmp_path / "device", model_name=name, **kwargs)


def put(settings: Settings, key: str, body: bytes) -> None:
    s3_client(settings).put_object(Bucket=settings.ota_bucket, Key=key, Body=body)


def get(settings: Settings, key: str) -> bytes:
    return s3_client(settings).get_object(Bucket=settings.ota_bucket, Key=key)["Body"].read()


def live_state(settings: Settings, name: str) -> RepositoryState | None:
    return read_state(s3_client(settings), settings.ota_bucket, name, Keyring.load(settings.release))


def assert_running(agent: Agent, version: int, model: TinyModel) -> None:
    running = agent.state.running_model()
    assert running is not None, "the device has no verified model"
    assert running[0].version == version and running[0].sha256 == model.sha256


@pytest.fixture
def on_v1(stack_settings: Settings, tmp_path: Path, name: str) -> Agent:
    """A device that installed v1 (model 1); v2 (model 2) is then published for the attack to target."""
    release(stack_settings, name, tiny_model(1))
    agent = device(stack_settings, tmp_path, name)
    assert agent.poll().outcome == "installed v1"
    release(stack_settings, name, tiny_model(2))
    return agent


def newest_model_key(settings: Settings, name: str) -> str:
    return f"{name}/models/{tiny_model(2).sha256}.pte"


# --- keys ------------------------------------------------------------------------------------


def test_keys_are_refused_inside_git_and_never_overwritten(tmp_path: Path) -> None:
    repository = REPO
    with pytest.raises(SigningKeyError, match="inside a git work tree"):
        init_keys(ReleaseConfig(), repository / "keys-here")
    assert not (repository / "keys-here").exists()
    root = init_keys(ReleaseConfig(), tmp_path / "keys", tmp_path / "root-key")
    online = sorted(p.name.split("-")[0] for p in root.parent.glob("*.pem"))
    assert online == ["snapshot", "targets", "timestamp"]  # the root key is not beside them
    assert {p.name for p in root.parent.glob("*.json")} == {"root.json", "1.root.json"}
    assert [p.name.split("-")[0] for p in (tmp_path / "root-key").iterdir()] == ["root"]
    keys = [*root.parent.glob("*.pem"), *(tmp_path / "root-key").glob("*.pem")]
    assert all(path.stat().st_mode & 0o077 == 0 for path in keys)
    with pytest.raises(SigningKeyError, match="must not live beside"):
        init_keys(ReleaseConfig(), tmp_path / "same", tmp_path / "same")
    with pytest.raises(SigningKeyError, match="already holds keys"):
        init_keys(ReleaseConfig(), tmp_path / "keys", tmp_path / "root-key")
    with pytest.raises(SigningKeyError, match="edgeops keys init"):
        Keyring.load(ReleaseConfig(), tmp_path / "no-keys")


# --- the happy path ----------------------------------------------------------------------------


def test_release_install_update_and_unchanged_poll(stack_settings: Settings, tmp_path: Path, name: str) -> None:
    first = release(stack_settings, name, tiny_model(1))
    agent = device(stack_settings, tmp_path, name)
    installed = agent.poll()
    assert installed.outcome == "installed v1" and installed.target_bytes > len(tiny_model(1).data)
    assert_running(agent, 1, tiny_model(1))

    unchanged = agent.poll()
    assert unchanged.outcome == "up to date at v1"
    assert unchanged.target_bytes == 0, "an unchanged poll must not download targets"
    assert unchanged.metadata_bytes < 1024 and unchanged.requests == 2  # next root (404) + timestamp

    second = release(stack_settings, name, tiny_model(2))
    assert (first.version, second.version) == (1, 2)
    assert agent.poll().outcome == "installed v2"
    assert_running(agent, 2, tiny_model(2))
    installed_state = json.loads((agent.state.root / "installed.json").read_text())
    assert installed_state["previous"]["version"] == 1, "v1 is kept as last-known-good"
    status = json.loads((agent.state.root / "status.json").read_text())
    assert status["installed"]["version"] == 2 and status["last_error"] is None and status["running"] == "current"

    # The immutable files may be cached forever; the timestamp must always be revalidated.
    s3 = s3_client(stack_settings)
    head = s3.head_object(Bucket=stack_settings.ota_bucket, Key=f"{name}/metadata/timestamp.json")
    assert head["CacheControl"] == "no-cache"
    head = s3.head_object(Bucket=stack_settings.ota_bucket, Key=f"{name}/metadata/2.targets.json")
    assert "immutable" in head["CacheControl"]

    # latest.json stays for simple clients and is itself a signed target.
    latest = http_get(stack_settings.ota_url(f"{name}/latest.json"))
    assert json.loads(latest)["version"] == 2 and json.loads(latest)["sha256"] == tiny_model(2).sha256
    targets = live_state(stack_settings, name)
    assert targets is not None
    assert targets.targets.signed.targets["latest.json"].hashes["sha256"] == sha256_bytes(latest)


def test_rollback_republishes_the_earlier_model_under_a_higher_version(
    on_v1: Agent, stack_settings: Settings, name: str
) -> None:
    assert on_v1.poll().outcome == "installed v2"
    keyring = Keyring.load(stack_settings.release)
    back = rollback(
        s3_client(stack_settings), stack_settings.ota_bucket, name, "stable", keyring, stack_settings.release
    )
    assert (back.version, back.rollback_of, back.sha256) == (3, 1, tiny_model(1).sha256)
    stats = on_v1.poll()
    assert stats.outcome == "installed v3"
    assert stats.target_bytes < len(tiny_model(1).data), "the last-known-good copy is reused, not downloaded"
    assert_running(on_v1, 3, tiny_model(1))
    with pytest.raises(ReleaseError, match="not an earlier release"):
        rollback(
            s3_client(stack_settings), stack_settings.ota_bucket, name, "stable", keyring, stack_settings.release, 7
        )


def test_channels_are_independent(stack_settings: Settings, tmp_path: Path, name: str) -> None:
    release(stack_settings, name, tiny_model(1))
    release(stack_settings, name, tiny_model(2), channel="canary")
    stable = device(stack_settings, tmp_path / "stable", name)
    canary = device(stack_settings, tmp_path / "canary", name, channel="canary")
    stable.poll(), canary.poll()
    assert_running(stable, 1, tiny_model(1))
    assert_running(canary, 1, tiny_model(2))
    latest = json.loads(http_get(stack_settings.ota_url(f"{name}/latest.json")))
    assert latest["channel"] == "stable", "latest.json follows the stable channel only"
    with pytest.raises(ReleaseError, match="unknown channel 'beta'"):
        release(stack_settings, name, tiny_model(3), channel="beta")


def publish_with(s3: S3Client, settings: Settings, name: str, model: TinyModel) -> Release:
    """`release()` through a client the test can hook."""
    keyring = Keyring.load(settings.release)
    return publish(s3, settings.ota_bucket, keyring, settings.release, draft(name, model), model.data)


def is_timestamp(name: str, url_or_path: str) -> bool:
    return urlsplit(url_or_path).path.endswith(f"/{metadata_prefix(name)}timestamp.json")


def live_release(settings: Settings, name: str) -> list[tuple[int, str]]:
    """(version, model sha256) of every live stable release."""
    state = live_state(settings, name)
    assert state is not None
    s3 = s3_client(settings)
    return [(v, read_release(s3, settings.ota_bucket, name, p).sha256) for v, p in state.releases("stable")]


def test_a_publisher_overtaken_before_its_timestamp_write_loses_and_the_winner_stays_live(
    stack_settings: Settings, tmp_path: Path, name: str
) -> None:
    """The race forced: A is held just before its conditional timestamp write while B publishes to the end."""
    release(stack_settings, name, tiny_model(1))
    at_timestamp, go_on = threading.Event(), threading.Event()

    def hold_the_timestamp_write(params: dict[str, Any], **_: Any) -> None:
        if is_timestamp(name, params["url_path"]) and not at_timestamp.is_set():
            at_timestamp.set()
            assert go_on.wait(timeout=120), "the test never let the first publisher continue"

    first = s3_client(stack_settings)
    first.meta.events.register("before-call.s3.PutObject", hold_the_timestamp_write)
    outcome: list[Release | BaseException] = []

    def publish_first() -> None:
        try:
            outcome.append(publish_with(first, stack_settings, name, tiny_model(2)))
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    racer = threading.Thread(target=publish_first)
    racer.start()
    try:
        assert at_timestamp.wait(timeout=120), f"the first publisher never reached its timestamp write: {outcome}"
        winner = release(stack_settings, name, tiny_model(3))  # all of it while the first is held
    finally:
        go_on.set()
        racer.join(timeout=120)
    assert not racer.is_alive()

    assert winner.version == 2
    [loser] = outcome
    assert isinstance(loser, PromotionError), f"the overtaken publisher returned {loser!r}"
    assert re.search(f"another release of {name} went live", str(loser)), loser
    assert "nothing of this release is live" in str(loser)
    assert live_release(stack_settings, name) == [(1, tiny_model(1).sha256), (2, tiny_model(3).sha256)]
    latest = json.loads(http_get(stack_settings.ota_url(f"{name}/latest.json")))
    assert (latest["version"], latest["sha256"]) == (2, tiny_model(3).sha256)
    agent = device(stack_settings, tmp_path, name)
    assert agent.poll().outcome == "installed v2"
    assert_running(agent, 2, tiny_model(3))


def test_a_timestamp_write_whose_response_was_lost_is_live_although_its_retry_got_412(
    stack_settings: Settings, tmp_path: Path, name: str
) -> None:
    """The PUT reached the bucket, the connection closed before the answer; boto3's retry then sees our ETag gone."""
    release(stack_settings, name, tiny_model(1))
    lost: list[int] = []  # status of the PUT that reached the bucket, its response dropped
    answered: list[int] = []  # statuses boto3 saw for the timestamp PUT: its retry's

    def lose_the_response(request: AWSPreparedRequest, **_: Any) -> None:
        if request.method != "PUT" or not is_timestamp(name, request.url) or lost:
            return
        body = request.body if isinstance(request.body, bytes) else request.body.read()
        delivered = urllib3.request("PUT", request.url, body=body, headers=dict(request.headers), retries=False)
        lost.append(delivered.status)
        raise ConnectionClosedError(endpoint_url=request.url)

    def note_the_answer(http_response: AWSResponse, **_: Any) -> None:
        if is_timestamp(name, http_response.url):
            answered.append(http_response.status_code)

    s3 = s3_client(stack_settings)
    s3.meta.events.register("before-send.s3.PutObject", lose_the_response)
    s3.meta.events.register("after-call.s3.PutObject", note_the_answer)
    published = publish_with(s3, stack_settings, name, tiny_model(2))
    assert lost == [200], "the first timestamp PUT should have reached the bucket"
    assert answered == [412], "boto3 should have retried it and been refused"
    assert published.version == 2
    assert live_release(stack_settings, name) == [(1, tiny_model(1).sha256), (2, tiny_model(2).sha256)]
    latest = json.loads(http_get(stack_settings.ota_url(f"{name}/latest.json")))
    assert (latest["version"], latest["sha256"]) == (2, tiny_model(2).sha256), "the publish went on past the commit"
    agent = device(stack_settings, tmp_path, name)
    assert agent.poll().outcome == "installed v2"
    assert_running(agent, 2, tiny_model(2))


# --- attacks and faults --------------------------------------------------------------------------


def refused(agent: Agent, match: str) -> None:
    with pytest.raises(AgentError, match=match):
        agent.poll()
    assert_running(agent, 1, tiny_model(1))
    status = json.loads((agent.state.root / "status.json").read_text())
    assert status["last_error"] and status["installed"]["version"] == 1


def test_tampered_target_bytes_are_rejected(on_v1: Agent, stack_settings: Settings, name: str) -> None:
    key = newest_model_key(stack_settings, name)
    honest = get(stack_settings, key)
    put(stack_settings, key, honest[:-8] + b"\x00" * 8)  # same length, different bytes
    refused(on_v1, "does not match its signed length and hash")
    put(stack_settings, key, honest)
    assert on_v1.poll().outcome == "installed v2"


def test_mix_and_match_target_is_rejected(on_v1: Agent, stack_settings: Settings, name: str) -> None:
    # An older, validly signed targets file in place of the current one: the snapshot pins its version.
    prefix = metadata_prefix(name)
    current_targets = get(stack_settings, f"{prefix}2.targets.json")
    put(stack_settings, f"{prefix}2.targets.json", get(stack_settings, f"{prefix}1.targets.json"))
    refused(on_v1, "rollback|verification|version")
    put(stack_settings, f"{prefix}2.targets.json", current_targets)
    # Another validly published model in place of the release's model.
    other = release(stack_settings, unique_model_name(), tiny_model(3))
    assert other.version == 1
    key = newest_model_key(stack_settings, name)
    honest = get(stack_settings, key)
    put(stack_settings, key, tiny_model(3).data)
    refused(on_v1, "signed length and hash")
    put(stack_settings, key, honest)
    assert on_v1.poll().outcome == "installed v2"


def test_rollback_to_older_metadata_is_rejected(stack_settings: Settings, tmp_path: Path, name: str) -> None:
    release(stack_settings, name, tiny_model(1))
    old_timestamp = get(stack_settings, f"{metadata_prefix(name)}timestamp.json")
    release(stack_settings, name, tiny_model(2))
    agent = device(stack_settings, tmp_path, name)
    assert agent.poll().outcome == "installed v2"
    put(stack_settings, f"{metadata_prefix(name)}timestamp.json", old_timestamp)
    with pytest.raises(AgentError, match="older metadata than the device has seen"):
        agent.poll()
    assert_running(agent, 2, tiny_model(2))
    # A device that lost its metadata accepts the old timestamp, but never an older release.
    shutil.rmtree(agent.state.metadata_dir)
    with pytest.raises(AgentError, match="refusing to go back"):
        agent.poll()
    assert_running(agent, 2, tiny_model(2))


def test_frozen_repository_is_rejected_once_the_timestamp_expires(
    stack_settings: Settings, tmp_path: Path, name: str
) -> None:
    short = stack_settings.model_copy(
        update={"release": stack_settings.release.model_copy(update={"timestamp_expiry_s": 2})}
    )
    release(short, name, tiny_model(1))
    agent = device(stack_settings, tmp_path, name)
    assert agent.poll().outcome == "installed v1"
    time.sleep(3)  # the attacker keeps serving this (validly signed) timestamp
    refused(agent, "expired metadata")
    heartbeat(s3_client(short), short.ota_bucket, name, Keyring.load(short.release), stack_settings.release)
    assert agent.poll().outcome == "up to date at v1"


def test_metadata_signed_with_a_wrong_key_is_rejected(on_v1: Agent, stack_settings: Settings, tmp_path: Path) -> None:
    key = f"{metadata_prefix(on_v1.model_name)}timestamp.json"
    honest = get(stack_settings, key)
    forged = Metadata[Timestamp].from_bytes(honest)
    forged.signed.version += 1
    forged.signatures.clear()
    init_keys(ReleaseConfig(), tmp_path / "attacker-keys", tmp_path / "attacker-root-key")
    attacker = Keyring.load(ReleaseConfig(), tmp_path / "attacker-keys")
    forged.sign(attacker.signers["timestamp"])
    put(stack_settings, key, forged.to_bytes())
    refused(on_v1, "not signed by the trusted keys")
    put(stack_settings, key, honest)
    assert on_v1.poll().outcome == "installed v2"
    with pytest.raises(ReleaseError, match="does not verify against the keys in use"):
        put(stack_settings, key, forged.to_bytes())
        release(stack_settings, on_v1.model_name, tiny_model(3))


def test_endless_data_is_cut_at_the_signed_length(on_v1: Agent, stack_settings: Settings, name: str) -> None:
    key = newest_model_key(stack_settings, name)
    honest = get(stack_settings, key)
    put(stack_settings, key, honest + b"\x00" * (8 << 20))
    with pytest.raises(AgentError, match="endless data"):
        on_v1.poll()
    assert on_v1.state.status.last_poll is not None
    assert on_v1.state.status.last_poll.target_bytes < len(honest) + (256 << 10), "the download stopped near the limit"
    assert_running(on_v1, 1, tiny_model(1))
    timestamp = f"{metadata_prefix(name)}timestamp.json"
    honest_timestamp = get(stack_settings, timestamp)
    put(stack_settings, timestamp, honest_timestamp + b" " * (1 << 20))  # endless metadata too
    refused(on_v1, "endless data")
    put(stack_settings, timestamp, honest_timestamp)
    put(stack_settings, key, honest)
    assert on_v1.poll().outcome == "installed v2"


def test_truncated_download_is_rejected(on_v1: Agent, stack_settings: Settings, name: str) -> None:
    key = newest_model_key(stack_settings, name)
    honest = get(stack_settings, key)
    put(stack_settings, key, honest[: len(honest) // 2])
    refused(on_v1, "signed length and hash")
    put(stack_settings, key, honest)
    assert on_v1.poll().outcome == "installed v2"


def test_missing_object_is_reported_and_the_device_keeps_running(
    on_v1: Agent, stack_settings: Settings, name: str
) -> None:
    key = newest_model_key(stack_settings, name)
    honest = get(stack_settings, key)
    s3_client(stack_settings).delete_object(Bucket=stack_settings.ota_bucket, Key=key)
    refused(on_v1, "missing from the repository")
    put(stack_settings, key, honest)
    assert on_v1.poll().outcome == "installed v2"


def test_a_release_that_fails_its_smoke_test_is_not_installed_nor_fetched_again(
    stack_settings: Settings, tmp_path: Path, name: str
) -> None:
    release(stack_settings, name, tiny_model(1))
    agent = device(stack_settings, tmp_path, name)
    agent.poll()
    wrong = [[value + 10.0 for value in row] for row in tiny_model(2).reference_output]  # type: ignore[attr-defined]
    release(stack_settings, name, tiny_model(2), reference_output=wrong)
    refused(agent, "failed its smoke test")
    again = agent.poll()
    assert again.target_bytes == 0 and "rejected earlier" in again.outcome
    assert_running(agent, 1, tiny_model(1))
    release(stack_settings, name, tiny_model(2))  # fixed as v3
    assert agent.poll().outcome == "installed v3"


def test_a_corrupted_installed_model_falls_back_and_is_repaired(on_v1: Agent) -> None:
    assert on_v1.poll().outcome == "installed v2"
    current = on_v1.state.installed().current
    assert current is not None
    path = on_v1.state.model_path(current)
    path.write_bytes(path.read_bytes()[:100])
    on_v1.check_installed()  # as at start
    assert_running(on_v1, 1, tiny_model(1))  # last-known-good while repairing
    assert on_v1.state.status.running == "previous"
    assert on_v1.poll().outcome == "installed v2"
    assert_running(on_v1, 2, tiny_model(2))


class Trickle(http.server.BaseHTTPRequestHandler):
    """A repository that sends one byte every half second: socket timeouts never fire."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trickling_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/repo/"
    server.shutdown()
    server.server_close()


def test_a_trickling_repository_cannot_hold_a_poll_past_its_deadline(
    on_v1: Agent, stack_settings: Settings, tmp_path: Path, trickling_server: str
) -> None:
    settings = stack_settings.model_copy(
        update={"agent": stack_settings.agent.model_copy(update={"cycle_deadline_s": 3.0, "socket_timeout_s": 2.0})}
    )
    slow = Agent(settings, state_dir=on_v1.state.root, model_name=on_v1.model_name, repository_url=trickling_server)
    started = time.monotonic()
    with pytest.raises(AgentError, match="too slow"):
        slow.poll()
    assert time.monotonic() - started < 3.0 + 2.0 + 1.0
    assert_running(slow, 1, tiny_model(1))


def test_a_device_without_a_trusted_root_says_how_to_provision_it(
    stack_settings: Settings, tmp_path: Path, name: str
) -> None:
    agent = device(stack_settings, tmp_path, name, trusted_root=tmp_path / "nowhere" / "root.json")
    with pytest.raises(AgentError, match="no trusted root: provision the device with --root"):
        agent.poll()
    assert agent.state.running_model() is None


def test_publishing_on_a_bucket_with_a_modified_target_is_refused(stack_settings: Settings, name: str) -> None:
    model = tiny_model(1)
    put(stack_settings, f"{name}/models/{model.sha256}.pte", b"planted")
    with pytest.raises(ReleaseError, match="modified outside edgeops"):
        release(stack_settings, name, model)
    assert (
        read_state(s3_client(stack_settings), stack_settings.ota_bucket, name, Keyring.load(stack_settings.release))
        is None
    )
    assert get(stack_settings, f"{name}/models/{model.sha256}.pte") == b"planted", "left for a human to look at"


def test_the_running_agent_switches_to_a_new_release_while_classifying(
    stack_settings: Settings, tmp_path: Path, name: str
) -> None:
    from edgeops.device.loop import run
    from edgeops.device.sources import open_source
    from edgeops.device.state import PREDICTIONS_FILE
    from tests.conftest import MAT_DATA

    release(stack_settings, name, tiny_model(1))
    agent = device(stack_settings, tmp_path, name)
    frames = open_source(f"replay:{MAT_DATA / 'occupied.csv'}", stack_settings, speed=10)
    messages: list[str] = []
    stop = threading.Event()
    loop = threading.Thread(target=run, args=(agent, 0.5, frames, messages.append, stop))
    loop.start()
    try:
        predictions = agent.state.root / PREDICTIONS_FILE
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (predictions.exists() and predictions.read_text()):
            time.sleep(0.1)
        release(stack_settings, name, tiny_model(2))
        while time.monotonic() < deadline and '"version": 2' not in predictions.read_text():
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    versions = [r["version"] for r in records]
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    assert all(r["label"] in ("empty_or_cat", "occupied") and len(r["logits"]) == 2 for r in records)
    assert any("running v2" in m for m in messages)
