"""The mat track: validate BLE recordings of the mat and cut a versioned, time-split dataset.

Each recording is split into three consecutive time blocks (train, then
validation, then test) before any window is cut, so no frame is shared between
splits and the test set is the most recent data, as in deployment.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgeops.datasets.base import SPLITS, BuiltDataset, DatasetRecord, ModelSignature, Splits, content_version
from edgeops.errors import InputError
from edgeops.files import inside, sha256_bytes
from edgeops.settings import Dataset, MatDataConfig, check_sha256

INPUT_UNITS = "Pa"
INPUT_LAYOUT = "[batch, frame, chamber], oldest frame first"
MANIFEST_FILE = "session.json"  # a session directory's list of recordings: {"recordings": [{"file", "label"}]}
RECORDINGS_PREFIX = "recordings"  # raw-bucket prefix of recordings, stored under their content hash


@dataclass(frozen=True)
class Frame:
    """One notification's worth of data: when it arrived on the host, and the chamber pressures in Pa."""

    arrival: datetime
    pressures: tuple[float, ...]


class Source(BaseModel):
    file: str
    label: str
    sha256: str
    frames: int
    uri: str = ""


class Recording(BaseModel, arbitrary_types_allowed=True):
    source: Source
    pressures: np.ndarray  # [frames, channels], Pa
    arrivals: list[datetime]  # host time each frame arrived, strictly increasing


class MatDatasetRecord(DatasetRecord):
    """The mat track's dataset: windows of consecutive frames, split by time inside each recording."""

    dataset: Dataset = Dataset.mat
    channels: list[str]
    window: int
    config: MatDataConfig
    sources: list[Source]


def recording_key(sha256: str) -> str:
    """A recording's raw-bucket key: it is stored under its content hash, once however many sessions list it."""
    return f"{RECORDINGS_PREFIX}/{check_sha256('recording sha256', sha256)}.csv"


def read_manifest(manifest: Path, config: MatDataConfig) -> list[tuple[Path, str]]:
    """The session manifest lists recordings as {"file": ..., "label": ...}, paths relative to it and inside its
    directory (`..`, absolute paths and symlinks out are refused)."""
    if not manifest.is_file():
        raise InputError([f"{manifest}: session manifest not found"])
    try:
        entries = json.loads(manifest.read_text())["recordings"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError([f'{manifest}: not a session manifest ({{"recordings": [...]}}): {error}']) from None
    if not isinstance(entries, list):
        raise InputError([f'{manifest}: not a session manifest ({{"recordings": [...]}}): recordings is not a list'])
    problems, recordings = [], []
    for number, entry in enumerate(entries, start=1):
        file, label = (entry.get("file"), entry.get("label")) if isinstance(entry, dict) else (None, None)
        if not file or not label or not isinstance(file, str):
            problems.append(f"{manifest}: recording {number} needs both 'file' and 'label'")
            continue
        try:
            path = inside(manifest.parent, file, "recording")
        except InputError as error:
            problems.extend(f"{manifest}: {problem}" for problem in error.problems)
            continue
        if label not in config.labels:
            problems.append(
                f"{manifest}: recording '{file}' has unknown label '{label}' (known labels: {', '.join(config.labels)})"
            )
        elif not path.is_file():
            problems.append(f"{manifest}: recording '{file}' not found at {path}")
        recordings.append((path, label))
    missing = [label for label in config.labels if label not in {label for _, label in recordings}]
    if missing and not problems:
        problems.append(f"{manifest}: no recording for label(s) {', '.join(missing)}; every label needs one")
    if problems:
        raise InputError(problems)
    return recordings


def read_recording(path: Path, label: str, config: MatDataConfig) -> Recording:
    """Parse and validate one CSV; collect every problem rather than stop at the first."""
    raw = path.read_bytes()
    name = path.name
    text = raw.decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise InputError([f"{name}: file is empty"])
    rows = list(csv.reader(text.splitlines()))
    header = [column.strip() for column in rows[0]]
    expected = [config.timestamp_column, *config.channel_columns]
    missing = [column for column in expected if column not in header]
    if missing:
        raise InputError(
            [f"{name}: row 1: missing column '{column}' (header has: {', '.join(header)})" for column in missing]
        )
    if len(rows) < 2:
        raise InputError([f"{name}: no data rows after the header"])

    index = {column: header.index(column) for column in expected}
    problems: list[str] = []
    pressures = np.zeros((len(rows) - 1, len(config.channel_columns)), dtype=np.float64)
    arrivals: list[datetime] = []
    previous: tuple[int, datetime] | None = None
    for row_number, row in enumerate(rows[1:], start=2):  # row numbers as in a spreadsheet
        if len(row) != len(header):
            problems.append(f"{name}: row {row_number}: expected {len(header)} fields, found {len(row)}")
            continue
        stamp_text = row[index[config.timestamp_column]].strip()
        try:
            stamp = datetime.strptime(stamp_text, config.timestamp_format)
        except ValueError:
            problems.append(
                f"{name}: row {row_number}, column {config.timestamp_column}: "
                f"'{stamp_text}' is not a timestamp in the format {config.timestamp_format}"
            )
        else:
            if previous is not None and stamp <= previous[1]:
                problems.append(
                    f"{name}: row {row_number}, column {config.timestamp_column}: {stamp_text} "
                    f"is not after row {previous[0]} ({previous[1].strftime(config.timestamp_format)[:-3]})"
                )
            previous = (row_number, stamp)
            arrivals.append(stamp)
        for channel, column in enumerate(config.channel_columns):
            cell = row[index[column]].strip()
            where = f"{name}: row {row_number}, column {column}"
            try:
                value = float(cell)
            except ValueError:
                problems.append(f"{where}: '{cell}' is not a number")
                continue
            if not math.isfinite(value):
                problems.append(f"{where}: {cell} is not a finite number")
            elif not config.min_pa <= value <= config.max_pa:
                hint = " (looks like kPa; the mat reports Pa)" if config.min_pa <= value * 1000 <= config.max_pa else ""
                problems.append(
                    f"{where}: {cell} Pa is outside the plausible range {config.min_pa:g} to {config.max_pa:g} Pa{hint}"
                )
            pressures[row_number - 2, channel] = value
    if problems:
        raise InputError(problems)
    source = Source(file=name, label=label, sha256=sha256_bytes(raw), frames=len(pressures))
    return Recording(source=source, pressures=pressures, arrivals=arrivals)


def split_frames(frames: int, config: MatDataConfig) -> dict[str, tuple[int, int]]:
    """Consecutive [start, end) time blocks per split: oldest frames train, newest test."""
    test = round(frames * config.test_fraction)
    val = round(frames * config.val_fraction)
    train = frames - val - test
    return {"train": (0, train), "val": (train, train + val), "test": (train + val, frames)}


def windows(pressures: np.ndarray, window: int, stride: int) -> np.ndarray:
    """[frames, channels] -> [n, window, channels], only windows wholly inside the block."""
    starts = range(0, len(pressures) - window + 1, stride)
    return (
        np.stack([pressures[start : start + window] for start in starts])
        if starts
        else np.empty((0, window, pressures.shape[1]))
    )


def build_splits(recordings: list[Recording], config: MatDataConfig) -> Splits:
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {split: [] for split in SPLITS}
    problems = []
    for recording in recordings:
        label_index = config.labels.index(recording.source.label)
        for split, (start, end) in split_frames(len(recording.pressures), config).items():
            x = windows(recording.pressures[start:end], config.window, config.stride)
            if len(x) == 0:
                problems.append(
                    f"{recording.source.file}: its {split} block has {end - start} frames, "
                    f"fewer than one window of {config.window}; record longer or lower the window"
                )
            parts[split].append((x, np.full(len(x), label_index, dtype=np.int64)))
    if problems:
        raise InputError(problems)
    return {
        split: (
            np.concatenate([x for x, _ in pairs]).astype(np.float32),
            np.concatenate([y for _, y in pairs]),
        )
        for split, pairs in parts.items()
    }


def signature(config: MatDataConfig) -> ModelSignature:
    """A mat model takes `window` consecutive frames of every chamber, in Pa."""
    return ModelSignature(
        dataset=Dataset.mat,
        input_shape=[1, config.window, len(config.channel_columns)],
        input_units=INPUT_UNITS,
        labels=config.labels,
    )


def dataset_version(sources: list[Source], config: MatDataConfig) -> str:
    """Content hash of the inputs and the preprocessing config, not of file names or paths."""
    return content_version(
        {
            "sources": sorted([source.label, source.sha256] for source in sources),
            "config": config.model_dump(mode="json"),
        }
    )


class MatAdapter:
    """The mat track: the recordings a session manifest lists, windowed and split by time."""

    def __init__(self, manifest: Path, config: MatDataConfig, raw_bucket: str) -> None:
        self.manifest = manifest
        self.config = config
        self.raw_bucket = raw_bucket  # where ingest archives the recordings; their URIs go in the record

    def build(self) -> BuiltDataset:
        config = self.config
        entries = read_manifest(self.manifest, config)
        recordings = [read_recording(path, label, config) for path, label in entries]
        splits = build_splits(recordings, config)
        sources = [recording.source for recording in recordings]
        raw_files = {}
        for (path, _), source in zip(entries, sources, strict=True):
            key = recording_key(source.sha256)
            source.uri = f"s3://{self.raw_bucket}/{key}"
            raw_files[key] = path
        model = signature(config)
        record = MatDatasetRecord(
            version=dataset_version(sources, config),
            labels=model.labels,
            input_shape=model.input_shape,
            input_units=model.input_units,
            input_layout=INPUT_LAYOUT,
            samples={split: len(splits[split][1]) for split in SPLITS},
            description=(
                f"Decides whether a person is on the haptic mat from {config.window} consecutive BLE frames of "
                f"its {len(config.channel_columns)} air-chamber pressures. Dataset from {len(sources)} recordings, "
                "split by time blocks inside each recording (train oldest, test newest)."
            ),
            channels=config.channel_columns,
            window=config.window,
            config=config,
            sources=sources,
        )
        params = {f"dataset.{key}": value for key, value in config.model_dump().items()}
        return BuiltDataset(record=record, splits=splits, params=params, raw_files=raw_files)
