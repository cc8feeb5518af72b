"""The PMD adapter on the real release (S1-S3 to stay fast), broken copies of it, and a local fake release server."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeops.datasets import base
from edgeops.datasets.pmd import (
    BLANK,
    MULTIPLES_OF_256,
    NOT_NUMBERS,
    OUT_OF_RANGE,
    POSTURE3,
    POSTURES,
    SUMS_FILE,
    WRONG_LENGTH,
    PmdData,
    PmdDatasetRecord,
    classify_frames,
    dataset_info,
    dataset_version,
    label_map,
    labels_for,
    load_subjects,
    read_posture_file,
    split_by_subject,
    verify_checksums,
)
from edgeops.datasets.pmd_fetch import FetchError, fetch
from edgeops.errors import InputError
from edgeops.files import sha256_bytes
from edgeops.settings import PmdDataConfig
from tests.conftest import PMD_DATA

CONFIG = PmdDataConfig(root=PMD_DATA)
EXPERIMENT = PMD_DATA / CONFIG.experiment
CELLS = CONFIG.rows * CONFIG.cols


@pytest.fixture(scope="module")
def three() -> PmdData:
    assert EXPERIMENT.is_dir(), f"PMD data not at {PMD_DATA}"
    return load_subjects(CONFIG, ["S1", "S2", "S3"])


def problems_of(call: Any, *args: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(InputError) as error:
        call(*args, **kwargs)
    problems: list[str] = error.value.problems
    return problems


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\r\n")


def frame_line(values: np.ndarray) -> bytes:
    """One frame as the release writes it: tab after every value."""
    return b"".join(b"%d\t" % value for value in values.ravel())


def copy_subject(tmp_path: Path, subject: str = "S1") -> Path:
    """A data_dir with one subject and the release's SHA256SUMS.txt."""
    shutil.copytree(EXPERIMENT / subject, tmp_path / CONFIG.experiment / subject)
    shutil.copy(PMD_DATA / SUMS_FILE, tmp_path / SUMS_FILE)
    return tmp_path


# ---------------------------------------------------------------- label maps


def test_label_maps() -> None:
    assert len(POSTURES) == 17 and labels_for("posture17") == [POSTURES[n] for n in range(1, 18)]
    assert labels_for("posture3") == ["supine", "right", "left"]
    three_way = label_map("posture3")
    assert sorted(three_way) == list(range(1, 18))
    assert [n for n in range(1, 18) if three_way[n] == 1] == [2, 4, 5, 13]
    assert [n for n in range(1, 18) if three_way[n] == 2] == [3, 6, 7, 14]
    assert sum(len(members) for members in POSTURE3.values()) == 17
    assert label_map("posture17") == {n: n - 1 for n in range(1, 18)}
    assert "unknown label set 'posture5'" in problems_of(labels_for, "posture5")[0]


def test_classify_frames_rules() -> None:
    rng = np.random.default_rng(0)
    body = rng.integers(0, 1000, CELLS)
    noise = np.where(rng.random(CELLS) < 0.02, 30, 0)  # a few weak cells: nobody on the mat
    garbled = rng.integers(0, 16, CELLS) * 256 + (rng.random(CELLS) < 0.05)  # as in the release: few are off by 1
    too_high = body.copy()
    too_high[5] = 5000
    negative = body.copy()
    negative[7] = -1
    reasons = classify_frames(np.stack([body, np.zeros(CELLS, dtype=np.int64), noise, garbled, too_high, negative]))
    assert reasons.tolist() == ["", BLANK, BLANK, MULTIPLES_OF_256, OUT_OF_RANGE, OUT_OF_RANGE]


# ---------------------------------------------------------------- the real release


def test_checksums_verify() -> None:
    assert verify_checksums(PMD_DATA) == 171  # 170 posture files and subject-info-i.csv
    assert verify_checksums(PMD_DATA, subjects=["S1"]) == 17


def test_s1_leading_frames_dropped() -> None:
    path = EXPERIMENT / "S1" / "1.txt"
    frames, dropped = read_posture_file(path, CONFIG)
    assert dropped == Counter({BLANK: 1, MULTIPLES_OF_256: 1})  # frame 1 near-empty, frame 2 in k * 256
    assert frames.shape == (80, CONFIG.rows, CONFIG.cols) and frames.dtype == np.float32
    third = np.fromstring(lines_of(path)[2], dtype=np.int64, sep="\t").reshape(CONFIG.rows, CONFIG.cols)
    assert np.array_equal(frames[0], third)  # row-major 64 x 32, the first kept frame is line 3


def test_subjects_load(three: PmdData) -> None:
    assert three.frames.shape == (3800, 1, CONFIG.rows, CONFIG.cols) and three.frames.dtype == np.float32
    assert three.frames.flags.c_contiguous and 0 not in three.frames.strides  # as export needs (test_export)
    assert three.labels.dtype == np.int64 and three.postures.dtype == np.int64
    assert three.loaded_subjects == ["S1", "S2", "S3"]
    assert Counter(three.subjects.tolist()) == {"S1": 1287, "S2": 1202, "S3": 1311}
    assert three.dropped_by_subject["S1"] == {BLANK: 17, MULTIPLES_OF_256: 18}
    assert three.dropped == {BLANK: 51, MULTIPLES_OF_256: 52}
    assert set(three.labels.tolist()) == {0, 1, 2}
    assert np.array_equal(three.labels, np.array([label_map("posture3")[p] for p in three.postures]))
    assert len(three.checksums) == 51 and three.checksums["S1/1.txt"].startswith("9b67bd23")
    # Raw sensor units: 12-bit, well past the README's nominal 0-1000.
    assert three.frames.min() == 0 and three.frames.max() == 3920


def test_posture17_labels() -> None:
    data = load_subjects(CONFIG.model_copy(update={"label_set": "posture17"}), ["S1"])
    assert np.array_equal(data.labels, data.postures - 1)
    assert sorted(set(data.labels.tolist())) == list(range(17))


def test_split_by_subject(three: PmdData, tmp_path: Path) -> None:
    splits, subjects = split_by_subject(three, ["S3"], ["S2"])
    assert subjects == {"train": ["S1"], "val": ["S2"], "test": ["S3"]}
    assert {split: len(y) for split, (_, y) in splits.items()} == {"train": 1287, "val": 1202, "test": 1311}
    assert np.array_equal(splits["test"][0], three.frames[three.subjects == "S3"])

    version = dataset_version(three, subjects)
    assert version == dataset_version(three, {"train": ["S1"], "val": ["S2"], "test": ["S3"]})
    assert version != dataset_version(three, {"train": ["S2"], "val": ["S1"], "test": ["S3"]})

    info = dataset_info(three, splits, subjects, checksums_verified=51)
    assert info.input_shape == [1, 1, CONFIG.rows, CONFIG.cols] and info.value_range == (0.0, 3920.0)
    assert info.samples == {"train": 1287, "val": 1202, "test": 1311} and info.version == version
    assert info.dropped[BLANK] == 51 and info.dropped_by_subject["S1"] == {BLANK: 17, MULTIPLES_OF_256: 18}
    base.save_splits(splits, tmp_path)
    info.save(tmp_path)
    assert PmdDatasetRecord.load(tmp_path) == info
    loaded = base.load_splits(tmp_path)
    assert np.array_equal(loaded["val"][0], splits["val"][0]) and loaded["val"][0].dtype == np.float32
    assert np.array_equal(loaded["test"][1], splits["test"][1])


def test_split_errors(three: PmdData) -> None:
    assert problems_of(split_by_subject, three, ["S9"], ["S2"]) == [
        "test subject S9 is not loaded (loaded: S1, S2, S3)"
    ]
    assert "S2 are in both test and val" in problems_of(split_by_subject, three, ["S2"], ["S2"])[0]
    assert problems_of(split_by_subject, three, ["S1", "S3"], ["S2"]) == [
        "the train split would have no subject (loaded: S1, S2, S3)"
    ]
    assert problems_of(split_by_subject, three, [], []) == ["the test split would have no subject (loaded: S1, S2, S3)"]


def test_without_validation_subjects_every_other_subject_trains(three: PmdData, tmp_path: Path) -> None:
    splits, subjects = split_by_subject(three, ["S3"], [])
    assert subjects == {"train": ["S1", "S2"], "val": [], "test": ["S3"]}
    assert {split: len(y) for split, (_, y) in splits.items()} == {"train": 2489, "val": 0, "test": 1311}
    assert splits["val"][0].shape == (0, *three.frames.shape[1:])
    info = dataset_info(three, splits, subjects, checksums_verified=51)
    assert "train S1, S2; validation none; test S3" in info.description
    base.save_splits(splits, tmp_path)
    assert base.load_splits(tmp_path)["val"][0].shape == (0, *three.frames.shape[1:])


# ---------------------------------------------------------------- broken copies


def test_garbage_lines_dropped_and_counted(tmp_path: Path) -> None:
    lines = lines_of(EXPERIMENT / "S1" / "1.txt")
    good = np.fromstring(lines[10], dtype=np.int64, sep="\t")
    lines[4] = frame_line(good[:100])  # cut short
    lines[5] = b"abc\t" + lines[5]  # text
    lines[6] = lines[6].replace(b"\t", b" 1.5\t", 1)  # a float
    high, negative = good.copy(), good.copy()
    high[300], negative[301] = 9000, -3
    lines[7], lines[8] = frame_line(high), frame_line(negative)
    lines.insert(9, b"")  # an empty line is no frame at all
    path = tmp_path / "1.txt"
    path.write_bytes(b"\r\n".join(lines))
    frames, dropped = read_posture_file(path, CONFIG)
    assert dropped == {BLANK: 1, MULTIPLES_OF_256: 1, WRONG_LENGTH: 1, NOT_NUMBERS: 2, OUT_OF_RANGE: 2}
    assert len(frames) == 80 - 5


def test_file_without_a_valid_frame(tmp_path: Path) -> None:
    path = tmp_path / "1.txt"
    path.write_bytes(b"garbage\r\n" + b"1\t2\t3\t\r\n")
    problems = problems_of(read_posture_file, path, CONFIG)
    assert problems[0] == f"{path}: no valid frame in 2 line(s) (dropped: not_numbers 1, wrong_length 1)"
    assert problems[1:] == [
        f"{path}: line 1: not tab-separated integers (b'garbage')",
        f"{path}: line 2: 3 values, expected 2048 (64 x 32)",
    ]
    path.write_bytes(b"\r\n")
    assert problems_of(read_posture_file, path, CONFIG) == [f"{path}: no frames (the file is empty)"]
    assert "cannot read" in problems_of(read_posture_file, tmp_path / "none.txt", CONFIG)[0]

    data_dir = copy_subject(tmp_path / "data")
    bad = data_dir / CONFIG.experiment / "S1" / "5.txt"
    bad.write_bytes(frame_line(np.zeros(CELLS, dtype=np.int64)) + b"\r\n")
    (data_dir / CONFIG.experiment / "S1" / "9.txt").unlink()
    problems = problems_of(load_subjects, CONFIG.model_copy(update={"root": data_dir}), ["S1"])
    assert problems == [
        f"{bad}: no valid frame in 1 line(s) (dropped: blank 1)",
        f"{bad.with_name('9.txt')}: missing (each subject has posture files 1.txt to 17.txt)",
    ]


def test_modified_file_fails_checksum(tmp_path: Path) -> None:
    data_dir = copy_subject(tmp_path)
    assert verify_checksums(data_dir, subjects=["S1"]) == 17
    changed = data_dir / CONFIG.experiment / "S1" / "3.txt"
    changed.write_bytes(changed.read_bytes().replace(b"\t7\t", b"\t8\t", 1))
    problems = problems_of(verify_checksums, data_dir, subjects=["S1"])
    assert len(problems) == 1 and problems[0].startswith("experiment-i/S1/3.txt: sha256 ")
    # The whole experiment is listed: the subjects not copied are missing.
    assert any(p.startswith("experiment-i/S2/1.txt: listed in") for p in problems_of(verify_checksums, data_dir))
    (data_dir / SUMS_FILE).unlink()
    assert verify_checksums(data_dir) == 0  # nothing to verify against: the caller says "not verified"


def test_missing_data_dir(tmp_path: Path) -> None:
    where = tmp_path / "nowhere"
    problems = problems_of(load_subjects, PmdDataConfig(root=where), ["S1"])
    assert len(problems) == 1
    assert str(where / "experiment-i") in problems[0] and "`edgeops data fetch pmd`" in problems[0]


def test_missing_subject() -> None:
    present = ", ".join(f"S{n}" for n in range(1, 11))
    assert problems_of(load_subjects, CONFIG, ["S1", "S11"]) == [
        f"{EXPERIMENT / 'S11'}: no such subject folder (present: {present})"
    ]


# ---------------------------------------------------------------- fetch from a local fake release


def fake_release(root: Path) -> dict[str, bytes]:
    """A tiny release tree with SHA256SUMS.txt: 17 synthetic posture files of S1, a README, another experiment."""
    rng = np.random.default_rng(1)
    files = {
        f"experiment-i/S1/{n}.txt": b"".join(frame_line(rng.integers(0, 1000, CELLS)) + b"\r\n" for _ in range(3))
        for n in POSTURES
    }
    files["README.md"] = b"fake release\n"
    files["experiment-ii/S1/1.txt"] = b"not fetched\n"
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    sums = "".join(f"{sha256_bytes(body)}  {name}\n" for name, body in files.items())
    (root / SUMS_FILE).write_text(sums)
    return files


@contextmanager
def serving(root: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 for `root`, and the paths asked of it; stopped on exit."""
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/files/pmd/1.0.0/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.mark.usefixtures("no_proxy")
def test_fetch_release(tmp_path: Path) -> None:
    release = tmp_path / "site" / "files" / "pmd" / "1.0.0"
    files = fake_release(release)
    dest = tmp_path / "pmd"
    seen: list[tuple[str, int, int, bool]] = []
    with serving(tmp_path / "site") as (url, requested):
        config = PmdDataConfig(root=dest, release_url=url)
        assert fetch(config, dest, lambda *args: seen.append(args)) == dest
        assert len(seen) == 18 and seen[-1][1:] == (18, 18, True) and all(fresh for *_, fresh in seen)
        for name, body in files.items():
            assert (dest / name).is_file() == (not name.startswith("experiment-ii"))
            if (dest / name).is_file():
                assert (dest / name).read_bytes() == body
        assert verify_checksums(dest) == 17
        assert load_subjects(config, ["S1"]).frames.shape == (17 * 3, 1, CONFIG.rows, CONFIG.cols)

        requested.clear()
        seen.clear()
        fetch(config, dest, lambda *args: seen.append(args))  # everything present: only the list is fetched
        assert requested == ["/files/pmd/1.0.0/SHA256SUMS.txt"] and not any(fresh for *_, fresh in seen)
    assert not list(dest.rglob(".*.tmp"))  # no temporary file left behind


@pytest.mark.usefixtures("no_proxy")
def test_fetch_refuses_wrong_checksum(tmp_path: Path) -> None:
    release = tmp_path / "site" / "files" / "pmd" / "1.0.0"
    fake_release(release)
    (release / "experiment-i" / "S1" / "3.txt").write_bytes(b"tampered\r\n")
    dest = tmp_path / "pmd"
    with serving(tmp_path / "site") as (url, _), pytest.raises(FetchError) as error:
        fetch(PmdDataConfig(release_url=url), dest)
    assert str(error.value).startswith(f"{url}experiment-i/S1/3.txt: sha256 ")
    assert "does not match SHA256SUMS.txt" in str(error.value)
    assert not (dest / "experiment-i" / "S1" / "3.txt").exists() and not (dest / SUMS_FILE).exists()
    assert not list(dest.rglob(".*.tmp"))  # no temporary file left behind

    (release / "experiment-i" / "S1" / "3.txt").unlink()
    with serving(tmp_path / "site") as (url, _), pytest.raises(FetchError) as error:
        fetch(PmdDataConfig(release_url=url), dest)
    assert str(error.value) == f"{url}experiment-i/S1/3.txt: HTTP 404 File not found"
