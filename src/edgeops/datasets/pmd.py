"""The in-bed pressure-map track's dataset: PhysioNet PMD experiment-i, read, cleaned, split by subject.

Layout: `<root>/<experiment>/S<n>/<posture>.txt`, one frame per line (a 64 x 32
grid, row-major, tab-separated, CRLF). Leading frames are often blank or garbled,
so frames are dropped by rule and counted, never silently. Splits are by subject:
the model is judged on people it never saw, as in deployment.
"""

from __future__ import annotations

import string
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pydantic import BaseModel

from edgeops.datasets.base import SPLITS, BuiltDataset, DatasetRecord, ModelSignature, Splits, content_version
from edgeops.errors import InputError
from edgeops.files import sha256_bytes, sha256_file
from edgeops.settings import Dataset, PmdDataConfig

SUMS_FILE = "SHA256SUMS.txt"
FETCH_COMMAND = "edgeops data fetch pmd"

# File number -> posture, as documented for experiment-i. ASCII names: they end up in metric names.
POSTURES: dict[int, str] = {
    1: "supine",
    2: "right",
    3: "left",
    4: "right_30deg",
    5: "right_60deg",
    6: "left_30deg",
    7: "left_60deg",
    8: "supine_star",
    9: "supine_hand_crossed",
    10: "supine_knee_up",
    11: "supine_right_knee_up",
    12: "supine_left_knee_up",
    13: "right_fetus",
    14: "left_fetus",
    15: "supine_bed_30deg",
    16: "supine_bed_45deg",
    17: "supine_bed_60deg",
}

# The usual 3-class task: which way the person lies.
POSTURE3: dict[str, frozenset[int]] = {
    "supine": frozenset({1, 8, 9, 10, 11, 12, 15, 16, 17}),
    "right": frozenset({2, 4, 5, 13}),
    "left": frozenset({3, 6, 7, 14}),
}

LABEL_SETS = ("posture3", "posture17")

# Why a frame was dropped; a line that is not a frame at all counts as one of the first two.
NOT_NUMBERS = "not_numbers"
WRONG_LENGTH = "wrong_length"
OUT_OF_RANGE = "out_of_range"
MULTIPLES_OF_256 = "multiples_of_256"
BLANK = "blank"
DROP_REASONS = (NOT_NUMBERS, WRONG_LENGTH, OUT_OF_RANGE, MULTIPLES_OF_256, BLANK)


class DropRules(BaseModel, frozen=True):
    """When a frame is not a usable pressure image. Part of the dataset version.

    Measured on S1-S10: the sensor is 12-bit (kept frames reach 4095; the README's
    0-1000 is nominal), every file's frame 2 (and a few later ones) holds values
    k * 256, a few off by 1-18 (a lost low byte), and frame 1 is mostly noise. Frames with more than
    `active_level` in at least ~11 % of cells are people; blank ones have under 7 %.
    """

    full_scale: int = 4095  # 12-bit ADC; anything above (or below 0) is not a reading
    active_level: int = 50  # a cell above this carries a body's pressure, below is noise
    min_active_fraction: float = 0.08  # of all cells; fewer active cells is an empty mat
    byte_step: int = 256
    # A frame is byte-garbled when most of its cells >= byte_step are exact multiples of it
    # (in clean frames at most 17 % are; in garbled ones at least 89 %).
    byte_min_cells: int = 16
    byte_fraction: float = 0.5


DEFAULT_CONFIG = PmdDataConfig()
DEFAULT_RULES = DropRules()


def labels_for(label_set: str) -> list[str]:
    """Class names in class-index order."""
    if label_set == "posture3":
        return list(POSTURE3)
    if label_set == "posture17":
        return [POSTURES[number] for number in sorted(POSTURES)]
    raise InputError([f"unknown label set '{label_set}' (known: {', '.join(LABEL_SETS)})"])


def input_units(full_scale: float) -> str:
    return f"raw pressure-sensor counts, 0 to {full_scale:g} (12-bit)"


def signature(config: PmdDataConfig) -> ModelSignature:
    """A posture model takes one raw pressure map."""
    return ModelSignature(
        dataset=Dataset.pmd,
        input_shape=[1, 1, config.rows, config.cols],
        input_units=input_units(config.max_value),
        labels=labels_for(config.label_set),
    )


def label_map(label_set: str) -> dict[int, int]:
    """Posture file number -> class index in `labels_for(label_set)`."""
    if label_set == "posture3":
        return {number: index for index, members in enumerate(POSTURE3.values()) for number in members}
    labels = labels_for(label_set)
    return {number: labels.index(name) for number, name in POSTURES.items()}


# ---------------------------------------------------------------- checksums


def read_sums(text: str, source: str) -> dict[str, str]:
    """`sha256sum` output (one or two spaces, optional `*`) -> relative path -> hex digest."""
    sums: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        path = PurePosixPath(name)
        hex_digest = len(digest) == 64 and all(char in string.hexdigits for char in digest)
        if not hex_digest or not name or path.is_absolute() or ".." in path.parts:
            problems.append(f"{source}: line {number}: not '<sha256>  <relative path>': {line.strip()[:80]}")
            continue
        sums[path.as_posix()] = digest.lower()
    if problems:
        raise InputError(problems)
    return sums


def verify_checksums(
    data_dir: Path, experiment: str = DEFAULT_CONFIG.experiment, subjects: Sequence[str] | None = None
) -> int:
    """Check listed files against SHA256SUMS.txt; how many were checked, 0 when there is no list.

    Only files of `experiment` are checked (all of it, or just `subjects`): a full
    release lists other experiments too, which need not be present.
    """
    sums_path = data_dir / SUMS_FILE
    if not sums_path.is_file():
        return 0
    sums = read_sums(sums_path.read_text(), str(sums_path))
    prefixes = [f"{experiment}/{subject}/" for subject in subjects] if subjects is not None else [f"{experiment}/"]
    problems, checked = [], 0
    for name, expected in sorted(sums.items()):
        if not any(name.startswith(prefix) for prefix in prefixes):
            continue
        path = data_dir / name
        if not path.is_file():
            problems.append(f"{name}: listed in {sums_path} but missing")
            continue
        actual = sha256_file(path)
        if actual != expected:
            problems.append(f"{name}: sha256 {actual} does not match {SUMS_FILE} ({expected}); the file was changed")
        checked += 1
    if problems:
        raise InputError(problems)
    return checked


# ---------------------------------------------------------------- parsing


def classify_frames(values: np.ndarray, rules: DropRules = DEFAULT_RULES) -> np.ndarray:
    """Drop reason per frame of `values` [n, cells] (integers), '' for a frame to keep."""
    cells = values.shape[1]
    out_of_range = ((values < 0) | (values > rules.full_scale)).any(axis=1)
    high = values >= rules.byte_step
    high_cells = high.sum(axis=1)
    multiples = (high & (values % rules.byte_step == 0)).sum(axis=1)
    garbled = (high_cells >= rules.byte_min_cells) & (multiples > rules.byte_fraction * high_cells)
    blank = (values > rules.active_level).sum(axis=1) < rules.min_active_fraction * cells
    reasons: np.ndarray = np.select(
        [out_of_range, garbled, blank], [OUT_OF_RANGE, MULTIPLES_OF_256, BLANK], default=""
    ).astype(object)
    return reasons


def parse_frames(
    raw: bytes, name: str, config: PmdDataConfig, rules: DropRules = DEFAULT_RULES
) -> tuple[np.ndarray, Counter[str]]:
    """Bytes of one posture file -> kept frames float32 [n, rows, cols] and drops by reason.

    Raises InputError (naming `name` and lines) only when no frame at all survives.
    """
    cells = config.rows * config.cols
    rows: list[np.ndarray] = []
    dropped: Counter[str] = Counter()
    notes: list[str] = []  # why lines were dropped, for the error when nothing is left
    lines = 0
    with warnings.catch_warnings():
        # numpy < 2.3 warns instead of raising on text it cannot parse to the end.
        warnings.simplefilter("error", DeprecationWarning)
        for number, line in enumerate(raw.split(b"\n"), start=1):
            line = line.strip()
            if not line:
                continue
            lines += 1
            try:
                values = np.fromstring(line, dtype=np.int64, sep="\t")
            except (ValueError, DeprecationWarning):
                dropped[NOT_NUMBERS] += 1
                notes.append(f"{name}: line {number}: not tab-separated integers ({line[:40]!r})")
                continue
            if values.size != cells:
                dropped[WRONG_LENGTH] += 1
                notes.append(
                    f"{name}: line {number}: {values.size} values, expected {cells} ({config.rows} x {config.cols})"
                )
                continue
            rows.append(values)
    if not lines:
        raise InputError([f"{name}: no frames (the file is empty)"])
    values = np.stack(rows) if rows else np.empty((0, cells), dtype=np.int64)
    reasons = classify_frames(values, rules)
    dropped.update(reason for reason in reasons if reason)
    keep = reasons == ""
    if not keep.any():
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(dropped.items()))
        raise InputError([f"{name}: no valid frame in {lines} line(s) (dropped: {counts})", *notes[:3]])
    frames = values[keep].reshape(-1, config.rows, config.cols).astype(np.float32)
    return frames, dropped


def read_posture_file(
    path: Path, config: PmdDataConfig = DEFAULT_CONFIG, rules: DropRules = DEFAULT_RULES
) -> tuple[np.ndarray, Counter[str]]:
    """Kept frames float32 [n, rows, cols] of one posture file and how many were dropped, by reason."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InputError([f"{path}: cannot read: {error.strerror or error}"]) from None
    return parse_frames(raw, str(path), config, rules)


# ---------------------------------------------------------------- loading


@dataclass
class PmdData:
    """Every kept frame of the loaded subjects, with what it is and where it came from."""

    frames: np.ndarray  # [n, 1, rows, cols] float32, raw sensor units
    labels: np.ndarray  # [n] int64, index into labels_for(label_set)
    subjects: np.ndarray  # [n] str, e.g. "S1"
    postures: np.ndarray  # [n] int64, posture file number 1..17
    label_set: str
    data_dir: Path
    rules: DropRules
    checksums: dict[str, str]  # "S1/1.txt" -> sha256 of every file read
    dropped: Counter[str]
    dropped_by_subject: dict[str, Counter[str]]

    @property
    def loaded_subjects(self) -> list[str]:
        return list(dict.fromkeys(self.subjects.tolist()))


def subject_order(name: str) -> tuple[int, str]:
    """S2 before S10."""
    digits = name.lstrip("S")
    return (int(digits), name) if digits.isdigit() else (1 << 30, name)


def on_disk(config: PmdDataConfig) -> bool:
    """Whether `config.root` holds the experiment; where it does not, ingest reads the raw bucket's copy."""
    return (config.root / config.experiment).is_dir()


def experiment_dir(config: PmdDataConfig) -> Path:
    """Where the subject folders are; a clear error, with the way out, when they are not there."""
    where = config.root / config.experiment
    if not on_disk(config):
        raise InputError(
            [
                f"PMD data not found: looked for {where.resolve()} (root {config.root}). "
                f"Download it with `{FETCH_COMMAND}`, or set EDGEOPS_PMD__DATA__ROOT to a copy"
            ]
        )
    return where


def load_subjects(
    config: PmdDataConfig = DEFAULT_CONFIG, subjects: Sequence[str] | None = None, rules: DropRules = DEFAULT_RULES
) -> PmdData:
    """Read every posture file of `subjects` (default: config.subjects); all problems at once."""
    chosen = list(dict.fromkeys(subjects if subjects is not None else config.subjects))
    if not chosen:
        raise InputError(["no subjects chosen"])
    labels_for(config.label_set)  # an unknown label set fails before any file is read
    root = experiment_dir(config)
    present = sorted((path.name for path in root.iterdir() if path.is_dir()), key=subject_order)
    missing = [subject for subject in chosen if subject not in present]
    if missing:
        raise InputError(
            [
                f"{root / subject}: no such subject folder (present: {', '.join(present) or 'none'})"
                for subject in missing
            ]
        )

    problems: list[str] = []
    parts: list[tuple[np.ndarray, str, int]] = []
    checksums: dict[str, str] = {}
    dropped: Counter[str] = Counter()
    dropped_by_subject: dict[str, Counter[str]] = {subject: Counter() for subject in chosen}
    for subject in chosen:
        for posture in sorted(POSTURES):
            path = root / subject / f"{posture}.txt"
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                problems.append(f"{path}: missing (each subject has posture files 1.txt to {max(POSTURES)}.txt)")
                continue
            except OSError as error:
                problems.append(f"{path}: cannot read: {error.strerror or error}")
                continue
            try:
                frames, file_dropped = parse_frames(raw, str(path), config, rules)
            except InputError as error:
                problems.extend(error.problems)
                continue
            checksums[f"{subject}/{path.name}"] = sha256_bytes(raw)
            dropped_by_subject[subject].update(file_dropped)
            dropped.update(file_dropped)
            parts.append((frames, subject, posture))
    if problems:
        raise InputError(problems)

    counts = [len(frames) for frames, _, _ in parts]
    postures = np.repeat(np.array([posture for _, _, posture in parts], dtype=np.int64), counts)
    classes = np.zeros(max(POSTURES) + 1, dtype=np.int64)
    for posture, index in label_map(config.label_set).items():
        classes[posture] = index
    return PmdData(
        # reshape, not np.newaxis: the channel axis gets an ordinary stride (0 confuses ExecuTorch export)
        frames=np.concatenate([frames for frames, _, _ in parts]).reshape(-1, 1, config.rows, config.cols),
        labels=classes[postures],
        subjects=np.repeat(np.array([subject for _, subject, _ in parts]), counts),
        postures=postures,
        label_set=config.label_set,
        data_dir=config.root,
        rules=rules,
        checksums=checksums,
        dropped=dropped,
        dropped_by_subject=dropped_by_subject,
    )


# ---------------------------------------------------------------- splits and version


def split_by_subject(
    data: PmdData, test_subjects: Sequence[str], val_subjects: Sequence[str]
) -> tuple[Splits, dict[str, list[str]]]:
    """(x [n, 1, rows, cols], y [n]) per split, and the subjects in each; train is every other subject."""
    loaded = data.loaded_subjects
    problems = []
    for split, chosen in (("test", test_subjects), ("val", val_subjects)):
        problems += [
            f"{split} subject {subject} is not loaded (loaded: {', '.join(loaded)})"
            for subject in chosen
            if subject not in loaded
        ]
    both = sorted(set(test_subjects) & set(val_subjects), key=subject_order)
    if both:
        problems.append(f"subject(s) {', '.join(both)} are in both test and val; a subject belongs to one split")
    if problems:
        raise InputError(problems)
    subjects = {
        "train": [subject for subject in loaded if subject not in test_subjects and subject not in val_subjects],
        "val": [subject for subject in loaded if subject in val_subjects],
        "test": [subject for subject in loaded if subject in test_subjects],
    }
    empty = [split for split in ("train", "test") if not subjects[split]]  # val may be empty: nothing to choose
    if empty:
        raise InputError([f"the {split} split would have no subject (loaded: {', '.join(loaded)})" for split in empty])
    splits: Splits = {}
    for split in SPLITS:
        rows = np.isin(data.subjects, subjects[split])
        splits[split] = (data.frames[rows], data.labels[rows])
    owners = [set(subjects[split]) for split in SPLITS]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1 :]), "a subject is on two sides"
    assert sum(len(y) for _, y in splits.values()) == len(data.labels), "a frame is in no split or in two"
    return splits, subjects


def dataset_version(data: PmdData, split_subjects: Mapping[str, Sequence[str]]) -> str:
    """Content hash of the files read, the label set, who is in which split and the drop rules.

    Paths appear only as subject and posture, which decide a frame's split and label.
    """
    identity: dict[str, object] = {
        "files": sorted(data.checksums.items()),
        "label_set": data.label_set,
        "labels": labels_for(data.label_set),
        "splits": {split: sorted(split_subjects[split], key=subject_order) for split in SPLITS},
        "drop_rules": data.rules.model_dump(mode="json"),
        "frame_shape": list(data.frames.shape[1:]),
    }
    return content_version(identity)


class PmdDatasetRecord(DatasetRecord):
    """What the PMD dataset stage leaves for train, export and verify."""

    dataset: Dataset = Dataset.pmd
    experiment: str
    label_set: str
    value_range: tuple[float, float]  # min and max raw sensor value in the kept frames
    drop_rules: DropRules
    subjects: dict[str, list[str]]
    dropped: dict[str, int]
    dropped_by_subject: dict[str, dict[str, int]]
    checksums_verified: int  # files checked against SHA256SUMS.txt; 0 means not verified
    files: dict[str, str]  # "S1/1.txt" -> sha256


def dataset_info(
    data: PmdData,
    splits: Splits,
    split_subjects: Mapping[str, Sequence[str]],
    checksums_verified: int,
    experiment: str = DEFAULT_CONFIG.experiment,
    full_scale: float = DEFAULT_CONFIG.max_value,
) -> PmdDatasetRecord:
    """The record of what went into the splits, so a model can be traced back to its data."""
    labels = labels_for(data.label_set)
    rows, cols = data.frames.shape[2:]
    return PmdDatasetRecord(
        version=dataset_version(data, split_subjects),
        experiment=experiment,
        label_set=data.label_set,
        labels=labels,
        input_shape=[1, *data.frames.shape[1:]],
        input_units=input_units(full_scale),
        input_layout=f"[batch, 1, {rows} rows head to foot, {cols} columns]",
        samples={split: len(splits[split][1]) for split in SPLITS},
        description=(
            f"Classifies a person's in-bed posture ({', '.join(labels)}) from one {rows}x{cols} pressure map "
            f"of PhysioNet PMD {experiment}. Split by subject: train {', '.join(split_subjects['train'])}; "
            f"validation {', '.join(split_subjects['val']) or 'none'}; test {', '.join(split_subjects['test'])}: "
            "the model is judged on people it never saw."
        ),
        value_range=(float(data.frames.min()), float(data.frames.max())),
        drop_rules=data.rules,
        subjects={split: list(split_subjects[split]) for split in SPLITS},
        dropped={reason: data.dropped[reason] for reason in DROP_REASONS},
        dropped_by_subject={
            subject: {reason: count for reason, count in counts.items() if count}
            for subject, counts in data.dropped_by_subject.items()
        },
        checksums_verified=checksums_verified,
        files=dict(sorted(data.checksums.items())),
    )


class PmdAdapter:
    """The pressure-image track: verify checksums, load the chosen subjects, split by subject."""

    def __init__(
        self, config: PmdDataConfig, subjects: Sequence[str] | None = None, rules: DropRules = DEFAULT_RULES
    ) -> None:
        self.config = config
        self.subjects = list(subjects if subjects is not None else config.subjects)
        self.rules = rules

    def build(self) -> BuiltDataset:
        config = self.config
        experiment_dir(config)
        verified = verify_checksums(config.root, config.experiment, self.subjects)
        data = load_subjects(config, self.subjects, self.rules)
        splits, split_subjects = split_by_subject(data, config.test_subjects, config.val_subjects)
        record = dataset_info(data, splits, split_subjects, verified, config.experiment, config.max_value)
        params = {f"pmd.{key}": value for key, value in config.model_dump().items()}
        return BuiltDataset(record=record, splits=splits, params=params)
