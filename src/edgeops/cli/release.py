"""`edgeops release …`: signed releases in the OTA bucket, their freshness, and requests for new ones."""

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


AllOption = Annotated[bool, typer.Option("--all", help="every model published in the OTA bucket")]


def _models(settings: Settings, s3: S3Client, keyring: Keyring, model: str | None, every: bool) -> list[str]:
    from edgeops.ota.publisher import published_models

    if every and model:
        raise EdgeopsError("give --model or --all, not both")
    if not every:
        return [model or settings.mat.model_name]
    ours, foreign = published_models(s3, settings.ota_bucket, keyring)
    if foreign:
        typer.echo(f"skipped {len(foreign)} model(s) of another trust root: {', '.join(foreign)}", err=True)
    return ours


def _reconcile(settings: Settings, keyring: Keyring, name: str) -> str:
    from edgeops.stages.promote import reconcile

    done = reconcile(settings, name, keyring)
    repairs = [
        f"alias '{settings.registry_alias}' {done.alias_before or 'unset'} -> {done.registry_version}"
        if done.alias_moved
        else "",
        "latest.json rewritten" if done.latest_rewritten else "",
    ]
    found = f"{settings.release.channel} v{done.live_version}" if done.live_version else "nothing live"
    return f"{name}: {found}; " + ("; ".join(r for r in repairs if r) or "registry and bucket agree")


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
    console.print(_reconcile(settings, keyring, name))


@app.command("heartbeat")
def heartbeat(model: ModelOption = None, every: AllOption = False, keys_dir: KeysOption = None) -> None:
    """Re-sign what is due (the timestamp; snapshot, targets near expiry or after a rotation); publish new roots.

    Schedule it well inside settings.release.timestamp_expiry_s (the cluster's CronJob runs `--all` every 6 h).
    """
    from edgeops.ota.publisher import ReleaseError
    from edgeops.ota.publisher import heartbeat as run

    settings, keyring, s3 = _context(keys_dir)
    failures = []
    for name in _models(settings, s3, keyring, model, every):
        try:
            renewal = run(s3, settings.ota_bucket, name, keyring, settings.release)
        except EdgeopsError as error:
            failures.append(f"{name}: {error}")
            console.print(f"[red]{name}: {error}[/]")
            continue
        console.print(
            f"{name}: re-signed {', '.join(renewal.resigned)}; "
            f"timestamp v{renewal.timestamp.version} valid until {renewal.timestamp.expires.isoformat()}"
        )
    if failures:
        raise ReleaseError(f"heartbeat failed for {len(failures)} model(s)")


@app.command("status")
def status(
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per role")] = False,
    keys_dir: KeysOption = None,
) -> None:
    """Version and expiry of every role of every published model (or one), with warnings ahead of expiry.

    Needs only the public roots (root.json and its history), not the signing keys. Exits 1 if a role has expired.
    """
    import json

    from edgeops.ota.keys import Keyring
    from edgeops.ota.publisher import repository_status
    from edgeops.stack.s3 import s3_client

    settings = Settings()
    keyring, s3 = Keyring.public(settings.release, keys_dir), s3_client(settings)
    rows = [
        row
        for name in _models(settings, s3, keyring, model, every=model is None)
        for row in repository_status(s3, settings.ota_bucket, name, keyring, settings.release)
    ]
    if as_json:
        for row in rows:
            body = {**row.__dict__, "expires": row.expires.isoformat()}
            typer.echo(json.dumps(body))
    else:
        colours = {"ok": "green", "renew": "cyan", "warn": "yellow", "expired": "red"}
        table = Table(title=f"TUF roles in s3://{settings.ota_bucket}/")
        for column in ("model", "role", "version", "expires (UTC)", "left", "state"):
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(
                row.model_name,
                row.role,
                str(row.version),
                row.expires.strftime("%Y-%m-%d %H:%M"),
                f"{row.remaining_s / 86_400:.1f} d",
                f"[{colours[row.level]}]{row.level}[/]",
            )
        console.print(table)
        for row in rows:
            if row.advice:
                console.print(f"[{colours[row.level]}]{row.model_name} {row.role}: {row.advice}[/]")
    if any(row.level == "expired" for row in rows):
        raise typer.Exit(1)


@app.command("reconcile")
def reconcile(model: ModelOption = None, every: AllOption = False, keys_dir: KeysOption = None) -> None:
    """Point the registry alias at the live release and rewrite `latest.json` from it (after a crashed promote)."""
    settings, keyring, s3 = _context(keys_dir)
    for name in _models(settings, s3, keyring, model, every):
        console.print(_reconcile(settings, keyring, name))


@app.command("sign-requests")
def sign_requests(keys_dir: KeysOption = None) -> None:
    """Publish every release promote requested (settings.release.signed_by=signer), after the signer's own checks.

    The only command on a cluster that holds the online keys besides the heartbeat; run it every minute.
    Exits 1 if a request was refused or could not be published yet.
    """
    from edgeops.stages.signer import sign_requests as run

    settings, keyring, _ = _context(keys_dir)
    handled = run(settings, keyring)
    colours = {"published": "green", "refused": "red", "requested": "yellow"}
    for request in handled:
        console.print(
            f"[{colours[request.state]}]{request.model_name} registry version {request.version}: {request.outcome}[/]"
        )
    if not handled:
        console.print("no release requests")
    if any(request.state != "published" for request in handled):
        raise typer.Exit(1)


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
