"""`edgeops release rollback | heartbeat | list`: signed releases in the OTA bucket."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgeops.cli.device import ChannelOption, ModelOption
from edgeops.cli.keys import KeysOption
from edgeops.cli.output import console
from edgeops.errors import EdgeopsError
from edgeops.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from edgeops.ota.keys import Keyring

app = typer.Typer(no_args_is_help=True, help="Signed releases in the OTA bucket.")


def _context(keys_dir: Path | None) -> tuple[Settings, Keyring, S3Client]:
    from edgeops.ota.keys import Keyring
    from edgeops.stack.s3 import s3_client

    settings = Settings()
    return settings, Keyring.load(settings.release, keys_dir), s3_client(settings)


@app.command("rollback")
def rollback(
    model: ModelOption = None,
    channel: ChannelOption = None,
    to_version: Annotated[int | None, typer.Option(help="release to go back to (default: the one before)")] = None,
    keys_dir: KeysOption = None,
) -> None:
    """Re-publish an earlier release's model under a higher version, so devices move forward onto it."""
    from edgeops.ota.publisher import rollback as run

    settings, keyring, s3 = _context(keys_dir)
    name, channel = model or settings.mat.model_name, channel or settings.release.channel
    release = run(s3, settings.ota_bucket, name, channel, keyring, settings.release, to_version)
    console.print(
        f"{name} {channel} v{release.version} now serves the model of v{release.rollback_of} ({release.sha256[:12]})"
    )


@app.command("heartbeat")
def heartbeat(model: ModelOption = None, keys_dir: KeysOption = None) -> None:
    """Re-sign the timestamp with a fresh expiry (schedule it well inside settings.release.timestamp_expiry_s)."""
    from edgeops.ota.publisher import heartbeat as run

    settings, keyring, s3 = _context(keys_dir)
    name = model or settings.mat.model_name
    timestamp = run(s3, settings.ota_bucket, name, keyring, settings.release)
    console.print(f"{name}: timestamp v{timestamp.version} valid until {timestamp.expires.isoformat()}")


@app.command("list")
def list_(model: ModelOption = None, keys_dir: KeysOption = None) -> None:
    """Show every signed release of a model, per channel."""
    from edgeops.ota.publisher import read_release, read_state

    settings, keyring, s3 = _context(keys_dir)
    name = model or settings.mat.model_name
    state = read_state(s3, settings.ota_bucket, name, keyring)
    if state is None:
        raise EdgeopsError(f"{name} has no signed releases in s3://{settings.ota_bucket}/")
    table = Table(title=f"{name} releases (timestamp v{state.timestamp.signed.version})")
    for column in ("channel", "version", "sha256", "registry", "rollback of", "created"):
        table.add_column(column)
    for channel in settings.release.channels:
        for version, path in state.releases(channel):
            release = read_release(s3, settings.ota_bucket, name, path)
            table.add_row(
                channel,
                str(version),
                release.sha256[:12],
                str(release.registry_version or "-"),
                str(release.rollback_of or "-"),
                release.created_at,
            )
    console.print(table)
