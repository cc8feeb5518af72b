"""Dataset tracks: each reads and validates its own sources and builds versioned splits (`base`).

- `mat`: BLE recordings of the haptic mat, windowed and split by time.
- `pmd`: PhysioNet's in-bed pressure maps, split by subject (`pmd_fetch` downloads them).
"""

from __future__ import annotations

from pathlib import Path

from edgeops.datasets.base import DatasetAdapter
from edgeops.settings import Dataset, Settings


def adapter_for(dataset: Dataset, settings: Settings, manifest: Path | None = None) -> DatasetAdapter:
    """The track's adapter; the mat track reads the recordings `manifest` lists (default: the track's)."""
    if dataset == Dataset.pmd:
        from edgeops.datasets.pmd import PmdAdapter

        return PmdAdapter(settings.pmd.data)
    from edgeops.datasets.mat import MatAdapter

    return MatAdapter(manifest or settings.mat.session_manifest, settings.mat.data, settings.raw_bucket)
