"""`edgeops data fetch | upload`: datasets kept outside the repository, downloaded and verified, and copied
into the raw bucket for machines that have none, such as a cluster's pipeline pods."""

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


@app.command("upload")
def upload(
    dataset: Annotated[Dataset, typer.Argument(help="dataset to upload: pmd (PhysioNet pressure maps)")],
    root: Annotated[Path | None, typer.Option(file_okay=False, help="default: settings.pmd.data.root")] = None,
) -> None:
    """Copy a track's data into the raw bucket once, every file checked against SHA256SUMS.txt first.

    Ingest reads that copy wherever the data is not on disk, as in a cluster's pipeline pods. Files already
    uploaded are not sent again; other bytes under the same keys are refused, never overwritten.
    """
    from edgeops.stack.sources import upload_pmd

    if dataset != Dataset.pmd:
        raise EdgeopsError(
            f"'{dataset}' needs no upload: its recordings ship in the component image, "
            "and `edgeops record --upload` puts new sessions in the raw bucket"
        )
    settings = Settings()
    config = settings.pmd.data if root is None else settings.pmd.data.model_copy(update={"root": root})

    def progress(path: str, done: int, total: int, sent: bool) -> None:
        how = "uploaded" if sent else "already in the bucket"
        console.print(f"[{done}/{total}] {path} {how}, sha256 ok")

    uri = upload_pmd(config, settings, progress)
    console.print(f"PhysioNet PMD from {config.root} in {uri}; ingest reads it where {config.root} holds no data")
