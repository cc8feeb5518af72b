"""The pipeline's parameters for one run, filled from the track table so `EDGEOPS_*` overrides reach them too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeops.settings import Architecture, Dataset, Settings, check_name


def pipeline_arguments(
    settings: Settings,
    manifest: Path | str | None = None,
    model_name: str | None = None,
    dataset: Dataset = Dataset.mat,
    model: Architecture | None = None,
) -> dict[str, Any]:
    """Every parameter explicit, each from `dataset`'s row of the track table unless given.

    The model name and channel become S3 keys and paths: an invalid one is an InputError naming it, before any run.
    """
    track = settings.track(dataset)
    return {
        "dataset": track.dataset.value,
        "model": (model or track.architecture).value,
        "session_manifest": str(manifest or settings.mat.session_manifest),
        "model_name": check_name("model_name", track.model_name if model_name is None else model_name),
        "channel": check_name("channel", settings.release.channel),
        "gates": track.gates.model_dump(),
    }
