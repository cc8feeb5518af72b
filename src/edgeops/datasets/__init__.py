"""Dataset tracks: each reads and validates its own sources and builds versioned splits (`base`).

- `mat`: BLE recordings of the haptic mat, windowed and split by time.
- `pmd`: PhysioNet's in-bed pressure maps, split by subject (`pmd_fetch` downloads them).
"""

from __future__ import annotations

from pathlib import Path

from edgeops.datasets.base import DatasetAdapter, ModelSignature
from edgeops.settings import Dataset, Settings


def adapter_for(dataset: Dataset, settings: Settings, manifest: Path | None = None) -> DatasetAdapter:
    """The track's adapter; the mat track reads the recordings `manifest` lists (default: the track's)."""
    if dataset == Dataset.pmd:
        from edgeops.datasets.pmd import PmdAdapter

        return PmdAdapter(settings.pmd.data)
    from edgeops.datasets.mat import MatAdapter

    return MatAdapter(manifest or settings.mat.session_manifest, settings.mat.data, settings.raw_bucket)


def signature_for(dataset: Dataset, settings: Settings) -> ModelSignature:
    """What a model of `dataset`'s track takes and returns, with this machine's settings of that track."""
    if dataset == Dataset.pmd:
        from edgeops.datasets.pmd import signature as pmd_signature

        return pmd_signature(settings.pmd.data)
    from edgeops.datasets.mat import signature as mat_signature

    return mat_signature(settings.mat.data)
