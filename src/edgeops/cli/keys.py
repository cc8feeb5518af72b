"""`edgeops keys init`: the TUF signing keys, kept outside the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli.output import console
from edgeops.settings import Settings

app = typer.Typer(no_args_is_help=True, help="TUF signing keys for releases (kept outside the repository).")
KeysOption = Annotated[Path | None, typer.Option(help="keys directory (default: settings.release.keys_dir)")]


@app.command("init")
def init(keys_dir: KeysOption = None) -> None:
    """Create one Ed25519 key per TUF role and the root that trusts them. Refuses to overwrite or go into git."""
    from edgeops.ota.keys import init_keys

    root = init_keys(Settings().release, keys_dir)
    console.print(f"keys and trusted root written to {root.parent} (private keys mode 0600)")
    console.print(f"provision devices with [bold]{root}[/] (`edgeops agent --root {root}`)")
