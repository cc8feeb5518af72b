"""The mat track: validation, splitting and versioning on the real recordings and broken copies of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeops.datasets.mat import build_splits, dataset_version, read_manifest, read_recording, split_frames
from edgeops.errors import InputError
from edgeops.settings import MatDataConfig
from tests.conftest import MAT_DATA

CONFIG = MatDataConfig()
OCCUPIED = MAT_DATA / "occupied.csv"


def broken_copy(tmp_path: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    lines = OCCUPIED.read_text().splitlines()
    path = tmp_path / "broken.csv"
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def problems_of(path: Path, label: str = "occupied") -> list[str]:
    with pytest.raises(InputError) as error:
        read_recording(path, label, CONFIG)
    return error.value.problems


def replace_cell(lines: list[str], row: int, column: int, value: str) -> list[str]:
    """Row numbers as in a spreadsheet: the header is row 1."""
    cells = lines[row - 1].split(",")
    cells[column] = value
    lines[row - 1] = ",".join(cells)
    return lines


def test_real_recordings_parse() -> None:
    recording = read_recording(OCCUPIED, "occupied", CONFIG)
    assert recording.pressures.shape == (382, 4)
    assert recording.source.sha256 == "6588df211d7159a6e15d13006f8d1da8028d55c3a80bd41918c56a8b307777a0"
    assert recording.pressures.min() > 98_000 and recording.pressures.max() < 103_000


def test_missing_column(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, lambda lines: [",".join(line.split(",")[:4]) for line in lines])
    assert problems_of(path) == [
        "broken.csv: row 1: missing column 'Float4' (header has: Timestamp, Float1, Float2, Float3)"
    ]


def test_nan(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, lambda lines: replace_cell(lines, 4, 2, "nan"))
    assert problems_of(path) == ["broken.csv: row 4, column Float2: nan is not a finite number"]


def test_text_in_numeric_column(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, lambda lines: replace_cell(lines, 7, 3, "abc"))
    assert problems_of(path) == ["broken.csv: row 7, column Float3: 'abc' is not a number"]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text("")
    assert problems_of(path) == ["broken.csv: file is empty"]


def test_header_only(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, lambda lines: lines[:1])
    assert problems_of(path) == ["broken.csv: no data rows after the header"]


def test_out_of_order_timestamps(tmp_path: Path) -> None:
    def swap(lines: list[str]) -> list[str]:
        lines[4], lines[5] = lines[5], lines[4]  # rows 5 and 6
        return lines

    path = broken_copy(tmp_path, swap)
    assert problems_of(path) == [
        "broken.csv: row 6, column Timestamp: 2025-11-22 15:12:42.496 is not after row 5 (2025-11-22 15:12:42.648)"
    ]


def test_values_in_kpa(tmp_path: Path) -> None:
    def to_kpa(lines: list[str]) -> list[str]:
        rows = [lines[0]]
        for line in lines[1:]:
            stamp, *values = line.split(",")
            rows.append(",".join([stamp, *(f"{float(v) / 1000:.4f}" for v in values)]))
        return rows

    problems = problems_of(broken_copy(tmp_path, to_kpa))
    assert len(problems) == 382 * 4
    assert problems[0] == (
        f"broken.csv: row 2, column Float1: {99964.75 / 1000:.4f} Pa is outside the plausible range 80000 to 120000 Pa"
        " (looks like kPa; the mat reports Pa)"
    )


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, lambda lines: replace_cell(replace_cell(lines, 3, 1, "x"), 9, 4, "inf"))
    assert problems_of(path) == [
        "broken.csv: row 3, column Float1: 'x' is not a number",
        "broken.csv: row 9, column Float4: inf is not a finite number",
    ]


def test_unknown_label(tmp_path: Path) -> None:
    manifest = tmp_path / "session.json"
    shutil.copy(OCCUPIED, tmp_path / "occupied.csv")
    manifest.write_text(json.dumps({"recordings": [{"file": "occupied.csv", "label": "sitting"}]}))
    with pytest.raises(InputError) as error:
        read_manifest(manifest, CONFIG)
    assert error.value.problems == [
        f"{manifest}: recording 'occupied.csv' has unknown label 'sitting' (known labels: empty_or_cat, occupied)"
    ]


def test_every_label_needs_a_recording(tmp_path: Path) -> None:
    manifest = tmp_path / "session.json"
    shutil.copy(OCCUPIED, tmp_path / "occupied.csv")
    manifest.write_text(json.dumps({"recordings": [{"file": "occupied.csv", "label": "occupied"}]}))
    with pytest.raises(InputError, match="no recording for label\\(s\\) empty_or_cat"):
        read_manifest(manifest, CONFIG)


def test_cli_reports_bad_input_and_exits_nonzero(tmp_path: Path) -> None:
    manifest = tmp_path / "session.json"
    manifest.write_text(json.dumps({"recordings": [{"file": "missing.csv", "label": "occupied"}]}))
    done = subprocess.run(
        [sys.executable, "-m", "edgeops", "ingest", "--manifest", str(manifest), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "recording 'missing.csv' not found" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_split_is_by_time_blocks_without_shared_frames() -> None:
    blocks = split_frames(382, CONFIG)
    assert blocks == {"train": (0, 268), "val": (268, 325), "test": (325, 382)}
    recordings = [
        read_recording(MAT_DATA / f, label, CONFIG)
        for f, label in [("empty_or_cat.csv", "empty_or_cat"), ("occupied.csv", "occupied")]
    ]
    splits = build_splits(recordings, CONFIG)
    windows_per_block = {split: end - start - CONFIG.window + 1 for split, (start, end) in blocks.items()}
    for split, (x, y) in splits.items():
        assert len(x) == len(y) == 2 * windows_per_block[split]
        assert x.shape[1:] == (CONFIG.window, 4)
    # The first test window of the occupied recording starts exactly at the test block: newest data only.
    occupied = recordings[1].pressures.astype(np.float32)
    test_x, test_y = splits["test"]
    first_occupied = test_x[test_y == 1][0]
    np.testing.assert_array_equal(first_occupied, occupied[325 : 325 + CONFIG.window])
    train_frames = {tuple(frame) for frame in splits["train"][0].reshape(-1, 4).tolist()}
    test_frames = {tuple(frame) for frame in test_x.reshape(-1, 4).tolist()}
    assert not train_frames & test_frames


def test_version_is_content_and_config_not_file_names(tmp_path: Path) -> None:
    source = read_recording(OCCUPIED, "occupied", CONFIG).source
    renamed = tmp_path / "renamed.csv"
    renamed.write_bytes(OCCUPIED.read_bytes())
    assert dataset_version([read_recording(renamed, "occupied", CONFIG).source], CONFIG) == dataset_version(
        [source], CONFIG
    )
    assert dataset_version([source], CONFIG.model_copy(update={"window": 10})) != dataset_version([source], CONFIG)
    changed = tmp_path / "changed.csv"
    changed.write_text(OCCUPIED.read_text().replace("99964.75", "99964.5", 1))
    assert dataset_version([read_recording(changed, "occupied", CONFIG).source], CONFIG) != dataset_version(
        [source], CONFIG
    )
