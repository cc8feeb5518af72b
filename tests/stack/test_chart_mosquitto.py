"""The chart's Mosquitto, run with Debian's mosquitto in place of its image (which cannot be pulled here).

As `helm template` renders them: the init container's script builds the password file from the generated
Secret's keys (the fleet service's plain password, hashed by `mosquitto_passwd -U`, and the devices' lines as
`edgeops.stack.broker.password_line` writes them, with bad lines among them), then the broker starts with the
rendered mosquitto.conf and ACL. Only the paths move under a scratch directory and the listener onto a free
loopback port. The broker then lets the fleet service's user read every device's telemetry and write commands,
each device publish only its own telemetry and read only its own commands, and nobody in anonymously, with a
wrong password or as a device line naming the fleet service's user.

What this does not show: the image's own busybox sh and Mosquitto 2.0.22 (Debian's is older), the kubelet's
volumes (the Secret and ConfigMap files, the memory-backed emptyDirs) and uid 1883. Those are for a cluster.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_ports, unavailable
from tests.support import cluster

FLEET_USER = "edgeops-fleet"  # values.yaml mosquitto.auth.fleetUsername


@dataclass
class Broker:
    port: int
    root: Path
    fleet_password: str
    init_output: str
    init_errors: str
    log: Path


def binary(name: str, *candidates: str) -> str:
    for found in (shutil.which(name), *candidates):
        if found and Path(found).is_file():
            return found
    unavailable(f"{name} is not installed (Debian's mosquitto package)")
    raise AssertionError("unreachable")


def rendered() -> tuple[dict[str, Any], dict[str, str], dict[str, bytes]]:
    """The StatefulSet, the ConfigMap's data and the generated Secret's data of the chart's Mosquitto."""
    objects = {(o["kind"], o["metadata"]["name"]): o for o in cluster.helm_template()}
    statefulset = objects["StatefulSet", "edgeops-mosquitto"]
    config = objects["ConfigMap", "edgeops-mosquitto"]
    secret = objects["Secret", "edgeops-mosquitto"]
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    return statefulset, dict(config["data"]), data


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    from edgeops.stack.broker import password_line

    mosquitto = binary("mosquitto", "/usr/sbin/mosquitto")
    binary("mosquitto_passwd")
    statefulset, config, secret = rendered()
    assert set(secret) == {"fleet-password", "devices"} and secret["devices"] == b""
    init = statefulset["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][:2] == ["/bin/sh", "-euc"], init["command"]

    root = tmp_path_factory.mktemp("mosquitto")
    scratch = root / "scratch"

    def moved(text: str) -> str:
        return text.replace("/mosquitto/", f"{root}/mosquitto/").replace("/tmp/passwords", f"{scratch}/passwords")

    for directory in ("secret", "config", "auth", "data"):
        (root / "mosquitto" / directory).mkdir(parents=True)
    scratch.mkdir()
    # The Secret as an operator leaves it after adding devices: the generated password, and device lines among
    # comments, blanks and lines the script must skip (an impersonation of the fleet service, a plain password,
    # a duplicate, no separator, a topic character in the name); the last line has no newline.
    devices = [
        "# added with edgeops fleet add-device --password-file-line",
        password_line("sim-000", "pw-sim-000"),
        "",
        password_line(FLEET_USER, "impersonation"),
        "sim-001:a-plain-password",
        password_line("sim-000", "a-second-entry"),
        "no-separator",
        password_line("sim/3", "pw"),
        password_line("sim-002", "pw-sim-002"),
    ]
    (root / "mosquitto/secret/fleet-password").write_bytes(secret["fleet-password"])
    (root / "mosquitto/secret/devices").write_text("\n".join(devices))
    for key, value in config.items():
        (root / "mosquitto/config" / key).write_text(moved(value))

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env |= {item["name"]: item["value"] for item in init["env"] if "value" in item}
    env["TMPDIR"] = str(scratch)
    done = subprocess.run(
        ["sh", init["command"][1], moved(init["command"][2])], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"init container script exited {done.returncode}:\n{done.stdout}\n{done.stderr}"

    (port,) = free_ports(1)
    conf = root / "mosquitto/config/mosquitto.conf"
    text = conf.read_text()
    assert "\nlistener 1883\n" in text
    text = text.replace("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")
    if os.geteuid() == 0:
        text += "user root\n"  # here only: as root, mosquitto would switch to user mosquitto, who cannot read the files
    conf.write_text(text)
    log = root / "broker.log"
    with log.open("w") as output:
        process = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, f"mosquitto exited {process.returncode}:\n{log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"mosquitto does not listen on {port}:\n{log.read_text()}"
                time.sleep(0.2)
        yield Broker(port, root, secret["fleet-password"].decode(), done.stdout, done.stderr, log)
    finally:
        process.terminate()
        process.wait(timeout=10)


class Client:
    """A paho-mqtt client (QoS 1, MQTT 3.1.1 as the agents speak it) that records what it receives."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        import paho.mqtt.client as mqtt

        self.connected = threading.Event()
        self.reason: Any = None
        self.received: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _client, _userdata, message: self.received.append(
            (message.topic, message.payload)
        )
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        self.connected.wait(5)

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        self.reason = reason
        self.connected.set()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, topic: str) -> None:
        info = self.client.subscribe(topic, qos=1)
        assert info[0] == 0
        time.sleep(0.3)

    def publish(self, topic: str, payload: bytes, check: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout=5)
        except RuntimeError:  # disconnected meanwhile
            if check:
                raise
        if not check:
            time.sleep(0.3)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_init_script_builds_the_password_file(broker: Broker) -> None:
    passwords = broker.root / "mosquitto/auth/passwords"
    lines = passwords.read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [FLEET_USER, "sim-000", "sim-002"]
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in lines), "PBKDF2-SHA512, as mosquitto_passwd"
    assert broker.fleet_password not in passwords.read_text()
    for name in ("passwords", "acl"):
        assert (broker.root / "mosquitto/auth" / name).stat().st_mode & 0o777 == 0o600
    assert not list((broker.root / "scratch").iterdir()), "the plain password's scratch file is removed"
    assert "the fleet service's user edgeops-fleet and 2 device(s)" in broker.init_output
    skipped = [line for line in broker.init_errors.splitlines() if line.startswith("warning: devices line")]
    assert [line.split()[3].rstrip(":") for line in skipped] == ["4", "5", "6", "7", "8"], broker.init_errors
    device_lines = (broker.root / "mosquitto/secret/devices").read_text().splitlines()
    secrets = [line.split(":", 1)[1] for line in device_lines if ":" in line]
    assert not [secret for secret in secrets if secret in broker.init_errors], "no hash or password in the log"
    assert broker.fleet_password not in broker.init_output + broker.init_errors


def test_broker_applies_the_acl(broker: Broker) -> None:
    fleet = Client(broker.port, FLEET_USER, broker.fleet_password)
    device, other = Client(broker.port, "sim-000", "pw-sim-000"), Client(broker.port, "sim-002", "pw-sim-002")
    try:
        assert fleet.accepted and device.accepted and other.accepted, (fleet.reason, device.reason, other.reason)
        fleet.subscribe("edgeops/devices/+/telemetry/#")
        device.subscribe("edgeops/devices/sim-000/commands")
        other.subscribe("edgeops/devices/sim-000/commands")  # not its own: refused by the ACL
        other.subscribe("edgeops/devices/+/telemetry/#")  # every device's telemetry: refused
        device.publish("edgeops/devices/sim-000/telemetry/heartbeat", b"own")
        other.publish("edgeops/devices/sim-002/telemetry/stats", b"own")
        fleet.publish("edgeops/devices/sim-000/commands", b"from the service")
        # Denied publishes, each from a connection of its own: Mosquitto may drop the publishing client.
        for username, password, topic in [
            ("sim-000", "pw-sim-000", "edgeops/devices/sim-002/telemetry/heartbeat"),  # another device's
            ("sim-000", "pw-sim-000", "edgeops/devices/sim-000/commands"),  # devices write no commands
            (FLEET_USER, broker.fleet_password, "edgeops/devices/sim-000/telemetry/event"),  # nor the service telemetry
        ]:
            denied = Client(broker.port, username, password)
            try:
                assert denied.accepted, denied.reason
                denied.publish(topic, b"denied", check=False)
            finally:
                denied.close()
        time.sleep(1)
        assert sorted(fleet.received) == [
            ("edgeops/devices/sim-000/telemetry/heartbeat", b"own"),
            ("edgeops/devices/sim-002/telemetry/stats", b"own"),
        ]
        assert device.received == [("edgeops/devices/sim-000/commands", b"from the service")]
        assert other.received == []
    finally:
        for client in (fleet, device, other):
            client.close()


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (None, None),  # anonymous
        ("sim-000", "a-second-entry"),  # the duplicate line's password
        (FLEET_USER, "impersonation"),  # a device line naming the fleet service's user
        ("sim-001", "a-plain-password"),  # a plain-text line
        (FLEET_USER, "wrong"),
    ],
)
def test_broker_refuses(broker: Broker, username: str | None, password: str | None) -> None:
    client = Client(broker.port, username, password)
    try:
        assert client.connected.is_set() and not client.accepted, client.reason
    finally:
        client.close()


def test_probe_connections_are_not_logged(broker: Broker) -> None:
    """The kubelet's tcpSocket probes open and close a connection every 10 and 20 s: connection_messages false."""
    for _ in range(3):
        socket.create_connection(("127.0.0.1", broker.port), timeout=2).close()
    time.sleep(0.5)
    log = broker.log.read_text()
    assert "New connection" not in log and "closed its connection" not in log, log


def test_the_charts_broker_config_is_the_local_stacks() -> None:
    """Settings and ACL as edgeops.stack.broker writes them; only paths, the listener and the user differ."""
    from edgeops.settings import Settings
    from edgeops.stack import broker

    _, data, _ = rendered()
    local = Settings()
    where = ("listener ", "password_file ", "acl_file ", "persistence_location ", "user ")

    def settings_of(config: str) -> list[str]:
        return [line for line in config.splitlines() if line and not line.startswith(where)]

    assert settings_of(data["mosquitto.conf"]) == settings_of(broker.config(local))
    assert data["acl"].split() == broker.acl(local).split()
