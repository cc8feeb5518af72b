"""What a stage leaves in its output directory for the stages after it: one JSON record."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel


class StageRecord(BaseModel):
    record_file: ClassVar[str]

    @classmethod
    def load(cls, directory: Path) -> Self:
        return cls.model_validate_json((directory / cls.record_file).read_text())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self.record_file).write_text(self.model_dump_json(indent=2))
