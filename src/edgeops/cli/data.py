"""`edgeops data fetch`: datasets kept outside the repository, downloaded and verified."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeops.cli.output import console
from edgeops.errors import EdgeopsError
from edgeops.settings import Dataset, Settings

app = typer.Typer(no_args_is_help=True, help="Datasets kept outside the repository.")


@app.command("fetch")
def fetch(
    dataset: Annotated[Dataset, typer.Argument(help="dataset to download: pmd (PhysioNet pressure maps)")],
    dest: Annotated[Path | None, typer.Option(file_okay=False, help="default: settings.pmd.data.root")] = None,
) -> None:
    """Download a public dataset and verify every file against its published SHA256SUMS."""
    from edgeops.datasets.pmd_fetch import fetch as run

    if dataset != Dataset.pmd:
        raise EdgeopsError(f"'{dataset}' is not a download: only pmd is (the mat recordings are in data/)")
    config = Settings().pmd.data

    def progress(path: str, done: int, total: int, downloaded: bool) -> None:
        how = "downloaded" if downloaded else "already present"
        console.print(f"[{done}/{total}] {path} {how}, sha256 ok")

    target = run(config, dest or config.root, progress)
    console.print(f"PhysioNet PMD in {target}, every file verified against SHA256SUMS.txt")
