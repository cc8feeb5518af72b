"""Devices report to the fleet through the real broker: access rules, an agent's reports, nothing lost.

Everything runs on the test stack: Mosquitto from Debian's packages with the stack's password and ACL files, the
fleet service (`edgeops fleet serve`, SQLite) subscribed to it, the agent as a process of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeops.device.messages import encode, telemetry_topic
from edgeops.device.outbox import Outbox
from edgeops.device.telemetry import OUTBOX_FILE, BrokerCredentials
from edgeops.fleet.credentials import add_devices
from edgeops.settings import Settings
from edgeops.stack import broker, supervisor
from tests.conftest import MAT_DATA, REPO
from tests.support.releases import release, tiny_model, unique_model_name
from tests.support.telemetry import heartbeat

WAIT_S = 60.0


def fleet_api(settings: Settings, path: str) -> Any:
    with urllib.request.urlopen(f"{settings.fleet_url}{path}", timeout=20) as response:
        return json.loads(response.read())


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Client:
    """A plain MQTT client on the test broker, recording what it receives."""

    def __init__(self, settings: Settings, username: str | None, password: str | None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.refused: int | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.granted: list[int] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{os.urandom(4).hex()}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, message: self.received.append((message.topic, message.payload))
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(settings.mqtt_host, settings.fleet.mqtt_port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.refused = reason.value
        else:
            self.connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, properties: Any) -> None:
        self.granted = [reason.value for reason in reasons]
        self.subscribed.set()

    def subscribe(self, topic: str) -> list[int]:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10)
        return self.granted

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(stack_settings: Settings) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def connect(username: str | None = None, password: str | None = None) -> Client:
        made.append(Client(stack_settings, username, password))
        return made[-1]

    yield connect
    for client in made:
        client.close()


def credentials(settings: Settings, device_id: str) -> BrokerCredentials:
    (path,) = add_devices(settings, [device_id])
    return BrokerCredentials.load(path)


def test_the_broker_lets_each_device_reach_only_its_own_topics(
    stack_settings: Settings, clients: Callable[..., Client]
) -> None:
    alice, bob = credentials(stack_settings, "acl-alice"), credentials(stack_settings, "acl-bob")
    anonymous = clients()
    wrong = clients("acl-alice", "not-the-password")
    wait_for("the refusals", lambda: anonymous.refused and wrong.refused)
    assert not anonymous.connected.is_set() and not wrong.connected.is_set()

    fleet = clients(stack_settings.fleet.mqtt_username, broker.service_password(stack_settings))
    a = clients(alice.username, alice.password.get_secret_value())
    b = clients(bob.username, bob.password.get_secret_value())
    wait_for("three connections", lambda: fleet.connected.is_set() and a.connected.is_set() and b.connected.is_set())
    fleet.subscribe("edgeops/devices/+/telemetry/#")
    b.subscribe("edgeops/devices/acl-bob/commands")
    a.subscribe("edgeops/devices/acl-bob/commands")  # Mosquitto grants it, but delivers nothing of bob's to alice
    a.subscribe("edgeops/devices/+/telemetry/#")

    # Publishing where the ACL forbids it costs the connection (Mosquitto 2 disconnects), and delivers nothing.
    for forbidden in ("edgeops/devices/acl-bob/telemetry/heartbeat", "edgeops/devices/acl-bob/commands"):
        intruder = clients(alice.username, alice.password.get_secret_value())
        wait_for("alice's second connection", intruder.connected.is_set)
        intruder.client.publish(forbidden, b"alice posing as bob", qos=1)
        wait_for("the broker to drop alice's forbidden publish", lambda c=intruder: not c.client.is_connected())
    a.publish("edgeops/devices/acl-alice/telemetry/heartbeat", b"alice, on her own topic")
    fleet.publish("edgeops/devices/acl-bob/commands", b"the fleet commanding bob")
    wait_for("alice's own message", lambda: fleet.received and b.received)
    time.sleep(1.0)  # anything the ACL let through would have arrived by now
    assert fleet.received == [("edgeops/devices/acl-alice/telemetry/heartbeat", b"alice, on her own topic")]
    assert b.received == [("edgeops/devices/acl-bob/commands", b"the fleet commanding bob")]
    assert a.received == []


def test_credentials_are_0600_and_never_printed(stack_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    done = subprocess.run(
        [sys.executable, "-m", "edgeops", "fleet", "add-device", "print-check", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    password = BrokerCredentials.load(out).password.get_secret_value()
    assert out.stat().st_mode & 0o777 == 0o600
    assert (broker.broker_dir(stack_settings) / "passwords").stat().st_mode & 0o777 == 0o600
    logs = stack_settings.state_dir.resolve() / "logs"
    for text in (done.stdout, done.stderr, *(path.read_text() for path in logs.glob("*.log"))):
        assert password not in text
    assert password not in (broker.broker_dir(stack_settings) / "passwords").read_text()  # only its hash
    bad = subprocess.run(
        [sys.executable, "-m", "edgeops", "fleet", "add-device", "Bad/Name"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "not a valid name" in bad.stderr


def test_malformed_messages_are_refused_and_counted_and_the_service_keeps_running(
    stack_settings: Settings, clients: Callable[..., Client]
) -> None:
    eve = credentials(stack_settings, "malformed-eve")
    client = clients(eve.username, eve.password.get_secret_value())
    wait_for("eve's connection", client.connected.is_set)
    topic = telemetry_topic("malformed-eve", heartbeat("malformed-eve", 1).kind)
    first = encode(heartbeat("malformed-eve", 1))
    client.publish(topic, first)
    wait_for(
        "eve's first heartbeat", lambda: fleet_api(stack_settings, "/api/counters")["devices"].get("malformed-eve")
    )
    before = fleet_api(stack_settings, "/api/counters")
    document = json.loads(first)
    limit = stack_settings.fleet.max_message_bytes
    inputs = [
        (topic, b'{"schema": "edgeops.tele'),  # bad JSON
        (topic, json.dumps(document | {"seq": 2, "uptime_s": "long"}).encode()),  # wrong schema
        (topic, json.dumps(document | {"seq": 3, "detail": "x" * limit}).encode()),  # oversized
        ("edgeops/devices/malformed-eve/telemetry/firmware", encode(heartbeat("malformed-eve", 4))),  # wrong topic
        (topic, encode(heartbeat("malformed-mallory", 5))),  # another device's id
        (topic, json.dumps(document | {"uptime_s": 12345.0}).encode()),  # an old seq replayed with new content
        (topic, first),  # the very same message again
    ]
    for where, payload in inputs:
        client.publish(where, payload)
    client.publish(topic, encode(heartbeat("malformed-eve", 6)))  # and a good one after all that

    def settled() -> dict[str, Any] | None:
        now = fleet_api(stack_settings, "/api/counters")
        return now if now["devices"]["malformed-eve"]["max_seq"] == 6 else None

    after = wait_for("the good message after the bad ones", settled)
    rejected = {k: after["rejected"][k] - before["rejected"][k] for k in after["rejected"]}
    assert {k: v for k, v in rejected.items() if v} == {
        "bad-json": 1,
        "schema": 1,
        "oversized": 1,
        "topic": 1,
        "impersonation": 1,
        "replayed": 1,
    }
    assert after["duplicates"] - before["duplicates"] == 1
    assert after["devices"]["malformed-eve"]["stored"] == 2
    assert "malformed-mallory" not in after["devices"]
    assert fleet_api(stack_settings, "/api/health") == {"ok": True}


def agent_process(settings: Settings, state_dir: Path, name: str, device_id: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EDGEOPS_FLEET__REPORT_INTERVAL_S": "1", "EDGEOPS_FLEET__DRAIN_TIMEOUT_S": "20"}
    command = [
        sys.executable,
        "-m",
        "edgeops",
        "agent",
        "--device-id",
        device_id,
        "--model",
        name,
        "--state-dir",
        str(state_dir),
        "--source",
        f"replay:{MAT_DATA / 'occupied.csv'}",
        "--speed",
        "5",
        "--repeat",
        "--interval",
        "2",
    ]
    with log.open("ab") as handle:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def test_an_agent_reports_and_loses_nothing_across_a_broker_restart_and_its_own_kill_9(
    stack_settings: Settings, tmp_path: Path
) -> None:
    name = unique_model_name("fleet")
    release(stack_settings, name, tiny_model(1))
    device_id = "e2e-agent"
    add_devices(stack_settings, [device_id])
    state_dir, log = tmp_path / "device", tmp_path / "agent.log"
    agent = agent_process(stack_settings, state_dir, name, device_id, log)
    try:

        def reported() -> dict[str, Any] | None:
            fleet = fleet_api(stack_settings, "/api/fleet")
            device = next((d for d in fleet["devices"] if d["device_id"] == device_id), None)
            ran = [row for row in fleet["latency"] if row["version"] == 1 and row["inferences"] > 0]
            return fleet if device and device["version"] == 1 and ran else None

        fleet = wait_for("the agent's heartbeat and statistics", reported, 120)
        assert any(row["version"] == 1 and row["installed"] >= 1 for row in fleet["updates"])
        assert fleet["class_mix"]["series"], "the interval statistics carry the predicted classes"
        assert any(chamber["samples"] > 0 for chamber in fleet["drift"])

        away_s = supervisor.restart_broker(stack_settings)
        time.sleep(3)
        agent.send_signal(signal.SIGKILL)
        agent.wait(30)
        agent = agent_process(stack_settings, state_dir, name, device_id, log)
        time.sleep(6)
        agent.send_signal(signal.SIGINT)  # Ctrl-C: the agent sends what is queued before it exits
        assert agent.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    outbox = Outbox(state_dir / OUTBOX_FILE, stack_settings.fleet.queue_limit)
    queued, dropped, issued = outbox.counts()
    outbox.close()
    assert (queued, dropped) == (0, 0)

    def all_stored() -> dict[str, Any] | None:
        counters = fleet_api(stack_settings, "/api/counters")
        return counters if counters["devices"][device_id]["stored"] >= issued else None

    counters = wait_for(f"all {issued} messages stored", all_stored)
    stored = counters["devices"][device_id]
    assert stored == {"stored": issued, "max_seq": issued}  # every sequence number, once
    print(f"\nagent: {issued} messages issued, {issued} stored, 0 lost; broker away {away_s:.1f} s")
