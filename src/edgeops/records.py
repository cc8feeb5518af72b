"""What a stage leaves in its output directory for the stages after it: one JSON record."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel

from edgeops.settings import DatasetName


class StageRecord(BaseModel):
    record_file: ClassVar[str]

    @classmethod
    def load(cls, directory: Path) -> Self:
        return cls.model_validate_json((directory / cls.record_file).read_text())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self.record_file).write_text(self.model_dump_json(indent=2))


class DatasetRecord(StageRecord):
    """What a dataset stage leaves for the stages after it, whichever track produced it.

    Train, export, benchmark and verify read only these fields; each track's record adds its own.
    """

    record_file = "dataset.json"
    dataset: DatasetName
    version: str
    labels: list[str]
    input_shape: list[int]  # one sample, batch 1
    input_units: str
    input_layout: str
    samples: dict[str, int]  # per split
    description: str  # for the model card: what the data is and how it was split
    run_id: str = ""
