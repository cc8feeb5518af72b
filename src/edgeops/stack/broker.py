"""The devices' MQTT broker: Eclipse Mosquitto from Debian's packages, on 127.0.0.1, nobody anonymous.

Each device has its own user; the ACL lets it publish only under `edgeops/devices/<its id>/telemetry/` and read
only `edgeops/devices/<its id>/commands`. The fleet service's user reads every device's telemetry. Passwords are
stored only as Mosquitto's PBKDF2-SHA512 hashes (format `$7$`, as `mosquitto_passwd` writes them); the plain
passwords live in 0600 files under the state dir and are never printed. A running broker rereads the password
and ACL files on SIGHUP, so adding a device needs no restart.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import secrets
import shutil
import signal
from pathlib import Path

from edgeops.errors import InputError
from edgeops.files import generated_secret, write_atomically
from edgeops.settings import Settings, check_name

PASSWORD_ITERATIONS = 101  # mosquitto_passwd's own default for `$7$`
SERVICE_PASSWORD_FILE = "fleet/service.json"  # the fleet service's broker password, 0600
# Mosquitto refuses larger packets outright; the fleet service refuses (and counts) anything above its own
# max_message_bytes, which is a quarter of this, so oversized messages reach it and are counted.
BROKER_SIZE_FACTOR = 4


def broker_dir(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "mosquitto"


def password_line(username: str, password: str) -> str:
    """One line of Mosquitto's password file: `user:$7$<iterations>$<salt>$<PBKDF2-SHA512>` (base64)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PASSWORD_ITERATIONS)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{username}:$7${PASSWORD_ITERATIONS}${encoded[0]}${encoded[1]}"


def acl(settings: Settings) -> str:
    return "\n".join(
        [
            f"user {settings.fleet.mqtt_username}",
            "topic read edgeops/devices/+/telemetry/#",
            "topic write edgeops/devices/+/commands",
            "",
            "# every other user is a device, whose user name is its id",
            "pattern write edgeops/devices/%u/telemetry/#",
            "pattern read edgeops/devices/%u/commands",
            "",
        ]
    )


def config(settings: Settings) -> str:
    root = broker_dir(settings)
    return "\n".join(
        [
            "per_listener_settings false",
            "allow_anonymous false",
            f"listener {settings.fleet.mqtt_port} {settings.mqtt_host}",
            f"password_file {root / 'passwords'}",
            f"acl_file {root / 'acl'}",
            "persistence true",
            f"persistence_location {root / 'data'}/",
            "autosave_interval 5",
            "max_inflight_messages 1000",
            "max_queued_messages 0",
            f"max_packet_size {settings.fleet.max_message_bytes * BROKER_SIZE_FACTOR}",
            # Started as root, Mosquitto would switch to user `mosquitto`, who cannot read our 0600 files.
            f"user {getpass.getuser()}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
            "",
        ]
    )


def service_password(settings: Settings) -> str:
    """The fleet service's broker password: the setting, else generated once into the state dir (0600)."""
    if settings.fleet.mqtt_password is not None:
        return settings.fleet.mqtt_password.get_secret_value()
    return generated_secret(settings.state_dir.resolve() / SERVICE_PASSWORD_FILE, "password")


def prepare(settings: Settings) -> Path:
    """Write the broker's config, ACL and the service's password entry; returns the config file."""
    root = broker_dir(settings)
    (root / "data").mkdir(parents=True, exist_ok=True)
    set_password(settings, settings.fleet.mqtt_username, service_password(settings))
    write_atomically(root / "acl", acl(settings).encode())
    write_atomically(root / "mosquitto.conf", config(settings).encode())
    return root / "mosquitto.conf"


def set_password(settings: Settings, username: str, password: str) -> None:
    """Add or replace `username`'s entry in the password file (0600), keeping every other entry."""
    path = broker_dir(settings) / "passwords"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line and line.split(":", 1)[0] != username]
    write_atomically(path, ("\n".join([*kept, password_line(username, password)]) + "\n").encode(), mode=0o600)


def device_ids(settings: Settings) -> list[str]:
    path = broker_dir(settings) / "passwords"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted(
        name for name in (line.split(":", 1)[0] for line in lines if line) if name != settings.fleet.mqtt_username
    )


def check_device_id(settings: Settings, device_id: str) -> str:
    check_name("device id", device_id)  # its pattern leaves out MQTT's wildcards and separator (+ # /)
    if device_id == settings.fleet.mqtt_username:
        raise InputError([f"device id {device_id!r} is reserved for the fleet service"])
    return device_id


def reload(pid: int | None) -> None:
    """Make a running broker reread its password and ACL files."""
    if pid is not None:
        os.kill(pid, signal.SIGHUP)


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise InputError(["Mosquitto is not installed: `make install-system` (apt-get install mosquitto)"])
