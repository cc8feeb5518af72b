"""`edgeops keys init | rotate-root`: the TUF signing keys, kept outside the repository, the root key offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli.output import console
from edgeops.settings import Settings

app = typer.Typer(no_args_is_help=True, help="TUF signing keys for releases (kept outside the repository).")
KeysOption = Annotated[Path | None, typer.Option(help="keys directory (default: settings.release.keys_dir)")]


RootKeyOption = Annotated[
    Path | None, typer.Option(help="the root key's directory (default: settings.release.root_key_dir)")
]


@app.command("init")
def init(keys_dir: KeysOption = None, root_key_dir: RootKeyOption = None) -> None:
    """Create the root key (in its own directory) and an Ed25519 key per online role; never overwrites, never in git."""
    from edgeops.ota.keys import init_keys

    settings = Settings().release
    root = init_keys(settings, keys_dir, root_key_dir)
    console.print(f"online keys and trusted root written to {root.parent} (private keys mode 0600)")
    console.print(
        f"[bold yellow]the root key is in {(root_key_dir or settings.root_key_dir).expanduser()}: move it offline[/] "
        "(an encrypted USB stick, a vault); it is needed only for `edgeops keys rotate-root`, never on a cluster"
    )
    console.print(f"provision devices with [bold]{root}[/] (`edgeops agent --root {root}`)")


@app.command("rotate-root")
def rotate_root(
    online: Annotated[
        list[str] | None,
        typer.Option("--online", help="also replace this online key (targets, snapshot, timestamp); repeatable"),
    ] = None,
    renew: Annotated[bool, typer.Option(help="keep the root key, only sign a new expiry")] = False,
    keys_dir: KeysOption = None,
    root_key_dir: RootKeyOption = None,
) -> None:
    """Sign the next root (new root key unless --renew, new online keys with --online), with the old root key.

    Devices follow the chain once it is in the bucket: run `edgeops release heartbeat --all` next, which
    publishes the new root and re-signs every role with the new keys.
    """
    from edgeops.ota.keys import ONLINE_ROLES, SigningKeyError
    from edgeops.ota.keys import rotate_root as run

    online = online or []
    unknown = [role for role in online if role not in ONLINE_ROLES]
    if unknown:
        raise SigningKeyError(f"--online {', '.join(unknown)}: not an online role (roles: {', '.join(ONLINE_ROLES)})")
    settings = Settings().release
    rotated = set(online) | (set() if renew else {"root"})
    root = run(settings, rotated, keys_dir, root_key_dir)
    what = ", ".join(sorted(rotated)) or "no key"
    console.print(f"root v{root.signed.version} signed (new: {what}), valid until {root.signed.expires.isoformat()}")
    console.print(
        "publish it: [bold]edgeops release heartbeat --all[/]; update the cluster's keys Secret if online keys changed"
    )
