"""What every dataset track shares: the splits, the record later stages read, and the adapter interface.

A track is an adapter: it reads and validates its sources, builds train/val/test splits and
describes the version it built. The ingest stage calls it, then archives and logs the result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from edgeops.records import StageRecord
from edgeops.settings import Dataset

SPLITS = ("train", "val", "test")
DATA_FILE = "dataset.npz"
DATASETS_PREFIX = "datasets"  # raw-bucket prefix of built datasets, one folder per version

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (x, y)


class ModelSignature(BaseModel, frozen=True):
    """What a model of one track takes and returns: what a device serving that track can feed and read.

    A release states it; an agent refuses a release whose signature is not its track's.
    """

    dataset: Dataset
    input_shape: list[int]  # one sample, batch 1
    input_units: str
    labels: list[str]

    @property
    def output_shape(self) -> list[int]:
        return [1, len(self.labels)]


class DatasetRecord(StageRecord):
    """What a dataset stage leaves for the stages after it, whichever track produced it.

    Train, export, benchmark and verify read only these fields; each track's record adds its own.
    """

    record_file = "dataset.json"
    dataset: Dataset
    version: str
    labels: list[str]
    input_shape: list[int]  # one sample, batch 1
    input_units: str
    input_layout: str
    samples: dict[str, int]  # per split
    description: str  # for the model card: what the data is and how it was split
    # The pipeline run this dataset opened (set by ingest): its MLflow run and the model it is for.
    run_id: str = ""
    model_name: str = ""


@dataclass
class BuiltDataset:
    """An adapter's result: the record and splits, plus what ingest archives and logs about them."""

    record: DatasetRecord
    splits: Splits
    params: dict[str, Any]  # how the dataset was built, logged to MLflow
    raw_files: dict[str, Path] = field(default_factory=dict)  # raw-bucket key -> local source file


class DatasetAdapter(Protocol):
    """A dataset track: read and validate its sources, build the splits, describe the version."""

    def build(self) -> BuiltDataset: ...


def content_version(identity: dict[str, Any]) -> str:
    """A dataset version: a short hash of what went into it (contents and settings, never paths)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"ds-{digest[:12]}"


def dataset_key(version: str, file: str) -> str:
    """The raw-bucket key of one file (`DATA_FILE`, the record) of the dataset `version`."""
    return f"{DATASETS_PREFIX}/{version}/{file}"


def save_splits(splits: Splits, out_dir: Path) -> Path:
    """Every split's x and y in one `.npz`, for `load_splits`. Uncompressed: the pressure-map
    track's ~125 MB is written in under a second, where zlib takes ~15 s."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DATA_FILE
    arrays: dict[str, Any] = {f"{split}_{part}": splits[split][i] for split in SPLITS for i, part in enumerate("xy")}
    np.savez(path, **arrays)
    return path


def load_splits(directory: Path) -> Splits:
    with np.load(directory / DATA_FILE) as data:
        return {split: (data[f"{split}_x"], data[f"{split}_y"]) for split in SPLITS}
