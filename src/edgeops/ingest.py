"""Ingest: validate mat recordings, archive them, and cut a versioned, time-split dataset.

Each recording is split into three consecutive time blocks (train, then
validation, then test) before any window is cut, so no frame is shared between
splits and the test set is the most recent data, as in deployment.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import posixpath
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from edgeops.errors import InputError
from edgeops.records import DatasetRecord
from edgeops.settings import DatasetConfig, Settings, parse_dataset
from edgeops.storage import get_if_present, put_if_absent, s3_client, sha256_bytes

SPLITS = ("train", "val", "test")
DATA_FILE = "dataset.npz"
INFO_FILE = DatasetRecord.record_file


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


class DatasetInfo(DatasetRecord):
    """The mat track's dataset: windows of consecutive frames, split by time inside each recording."""

    dataset: Literal["mat"] = "mat"
    channels: list[str]
    window: int
    config: DatasetConfig
    sources: list[Source]


Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def read_manifest(manifest: Path, config: DatasetConfig) -> list[tuple[Path, str]]:
    """The session manifest lists recordings as {"file": ..., "label": ...}, paths relative to it."""
    if not manifest.is_file():
        raise InputError([f"{manifest}: session manifest not found"])
    try:
        entries = json.loads(manifest.read_text())["recordings"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError([f'{manifest}: not a session manifest ({{"recordings": [...]}}): {error}']) from None
    problems, recordings = [], []
    for number, entry in enumerate(entries, start=1):
        file, label = entry.get("file"), entry.get("label")
        if not file or not label:
            problems.append(f"{manifest}: recording {number} needs both 'file' and 'label'")
            continue
        path = (manifest.parent / file).resolve()
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


def read_recording(path: Path, label: str, config: DatasetConfig) -> Recording:
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


def split_frames(frames: int, config: DatasetConfig) -> dict[str, tuple[int, int]]:
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


def build_splits(recordings: list[Recording], config: DatasetConfig) -> Splits:
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


def dataset_version(sources: list[Source], config: DatasetConfig) -> str:
    """Content hash of the inputs and the preprocessing config, not of file names or paths."""
    identity = {
        "sources": sorted([source.label, source.sha256] for source in sources),
        "config": config.model_dump(mode="json"),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"ds-{digest[:12]}"


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


def fetch_session(uri: str, directory: Path, settings: Settings) -> Path:
    """Download an `s3://bucket/.../session.json` and the recordings it lists into `directory`.

    The bucket's layout is mirrored, so file names stay relative to the manifest as they were.
    """
    bucket, _, key = uri.removeprefix("s3:").lstrip("/").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise InputError([f"{uri}: not the s3://bucket/key of a session manifest"])
    s3 = s3_client(settings)

    def fetch(key: str, listed: str = "") -> Path:
        found = get_if_present(s3, bucket, key)
        if found is None:
            raise InputError([f"s3://{bucket}/{key}: not found{listed}"])
        local = directory / key
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(found[0])
        return local

    manifest = fetch(key)
    try:
        entries = json.loads(manifest.read_text()).get("recordings", [])
    except (json.JSONDecodeError, AttributeError):
        entries = []  # read_manifest reports what is wrong with it
    problems = []
    for entry in entries if isinstance(entries, list) else []:
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str):
            continue
        target = posixpath.normpath(posixpath.join(posixpath.dirname(key), file))
        if posixpath.isabs(file) or target.startswith("../"):
            problems.append(f"{uri}: recording '{file}' must be a path relative to the manifest, inside the bucket")
            continue
        try:
            fetch(target, f" (listed by {uri})")
        except InputError as error:
            problems.extend(error.problems)
    if problems:
        raise InputError(problems)
    return manifest


def ingest(manifest: Path | str, out_dir: Path, settings: Settings) -> DatasetInfo:
    """Validate, archive raw files to S3, write the dataset, open the MLflow run for this pipeline run.

    `manifest` may be an `s3://` URI (as `edgeops record --upload` prints); it is fetched first.
    """
    if str(manifest).startswith("s3:/"):  # Path() folds "s3://" to "s3:/"
        with tempfile.TemporaryDirectory() as directory:
            return ingest(fetch_session(str(manifest), Path(directory), settings), out_dir, settings)
    manifest = Path(manifest)
    config = settings.dataset
    entries = read_manifest(manifest, config)
    recordings = [read_recording(path, label, config) for path, label in entries]
    splits = build_splits(recordings, config)
    sources = [recording.source for recording in recordings]
    version = dataset_version(sources, config)

    s3 = s3_client(settings)
    for (path, _), source in zip(entries, sources, strict=True):
        key = f"recordings/{source.sha256}.csv"
        put_if_absent(s3, settings.raw_bucket, key, path.read_bytes(), "text/csv")
        source.uri = f"s3://{settings.raw_bucket}/{key}"

    info = DatasetInfo(
        version=version,
        labels=config.labels,
        input_shape=[1, config.window, len(config.channel_columns)],
        input_units="Pa",
        input_layout="[batch, frame, chamber], oldest frame first",
        samples={split: len(splits[split][1]) for split in SPLITS},
        description=(
            f"Decides whether a person is on the haptic mat from {config.window} consecutive BLE frames of its "
            f"{len(config.channel_columns)} air-chamber pressures. Dataset from {len(sources)} recordings, split "
            "by time blocks inside each recording (train oldest, test newest)."
        ),
        channels=config.channel_columns,
        window=config.window,
        config=config,
        sources=sources,
    )
    save_splits(splits, out_dir)
    publish_dataset(
        info, splits, out_dir, {f"dataset.{key}": value for key, value in config.model_dump().items()}, settings
    )
    return info


def publish_dataset(
    info: DatasetRecord, splits: Splits, out_dir: Path, params: dict[str, Any], settings: Settings
) -> None:
    """Archive the dataset to the raw bucket and open the pipeline run's MLflow run; sets `info.run_id`, saves it."""
    s3 = s3_client(settings)
    prefix = f"datasets/{info.version}"
    s3.upload_file(str(out_dir / DATA_FILE), settings.raw_bucket, f"{prefix}/{DATA_FILE}")
    s3.put_object(
        Bucket=settings.raw_bucket,
        Key=f"{prefix}/{INFO_FILE}",
        Body=info.model_dump_json(indent=2).encode(),
        ContentType="application/json",
    )

    import mlflow

    from edgeops import tracking

    with tracking.start_run(settings, run_name=f"{settings.model_name}-{info.version}") as run:
        mlflow.set_tags({"dataset_version": info.version, "dataset": info.dataset, "model_name": settings.model_name})
        mlflow.log_params(params)
        for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
            x, y = splits[split]
            dataset = mlflow.data.from_numpy(
                x, targets=y, source=f"s3://{settings.raw_bucket}/{prefix}/{DATA_FILE}", name=f"{info.version}-{split}"
            )
            mlflow.log_input(dataset, context=context)
        mlflow.log_metrics({f"dataset_{split}_samples": count for split, count in info.samples.items()})
        info.run_id = run.info.run_id
        mlflow.log_dict(info.model_dump(mode="json"), "dataset/dataset.json")
    info.save(out_dir)


def ingest_dataset(dataset: str, manifest: Path | str, out_dir: Path, settings: Settings) -> DatasetRecord:
    """The dataset stage of either track: mat recordings listed by `manifest`, or PMD from settings.pmd.data_dir."""
    if parse_dataset(dataset) == "pmd":
        from edgeops import pmd

        return pmd.ingest(out_dir, settings)
    return ingest(manifest, out_dir, settings)
