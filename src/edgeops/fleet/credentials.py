"""Device identities on the broker: `edgeops fleet add-device` issues them, the agent presents them."""

from __future__ import annotations

import secrets
from pathlib import Path

from edgeops.device.telemetry import BrokerCredentials
from edgeops.files import generated_secret
from edgeops.settings import Settings
from edgeops.stack import broker, supervisor

API_TOKEN_FILE = "fleet/api-token.json"


def api_token(settings: Settings) -> str:
    """The token that lets a client write to the fleet service's API: the setting, else the state dir's."""
    if settings.fleet.api_token is not None:
        return settings.fleet.api_token.get_secret_value()
    return generated_secret(settings.state_dir.resolve() / API_TOKEN_FILE, "token")


def _issue(settings: Settings, device_id: str, path: Path) -> str:
    """A new password for `device_id`, written (0600) with where to connect; returned for hashing, never shown."""
    password = secrets.token_urlsafe(24)
    BrokerCredentials(
        device_id=device_id,
        username=device_id,
        password=password,  # pydantic wraps it in SecretStr
        host=settings.mqtt_host,
        port=settings.fleet.mqtt_port,
    ).save(path)
    return password


def issue_for_cluster(settings: Settings, device_id: str, out: Path) -> str:
    """A cluster's broker reads its password file from a Secret: write the device's credentials file and return
    the hashed password-file line that goes into the Secret's `devices` key (helm/README.md)."""
    broker.check_device_id(settings, device_id)
    return broker.password_line(device_id, _issue(settings, device_id, out))


def add_devices(
    settings: Settings, device_ids: list[str], out: Path | None = None, *, renew: bool = False
) -> list[Path]:
    """Credentials for each device (kept when they exist, unless `renew`): a password-file entry (a hash) for the
    broker, and a 0600 file with the plain password for the device. A running broker rereads its files."""
    paths, changed = [], False
    known = set(broker.device_ids(settings))
    for device_id in device_ids:
        broker.check_device_id(settings, device_id)
        path = (
            out if out is not None and len(device_ids) == 1 else settings.device_credentials_dir / f"{device_id}.json"
        )
        if renew or device_id not in known or not path.exists():
            broker.set_password(settings, device_id, _issue(settings, device_id, path))
            changed = True
        paths.append(path)
    if changed:
        broker.reload(supervisor.running_pid(settings, "mosquitto"))
    return paths
