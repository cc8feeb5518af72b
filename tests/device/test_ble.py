"""BLE decoding, recording and frame sources, against a simulated mat plugged into bleak as a backend.

The simulated mat streams the real recordings; uploads and ingest from S3 run against the real stack.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path

import pytest

from edgeops.datasets.mat import read_recording
from edgeops.device.ble import NON_FINITE, OUT_OF_RANGE, SHORT, FrameError, MatError, SilenceError, decode
from edgeops.device.recorder import SAME_MILLISECOND, RecordError, record, record_session
from edgeops.device.sources import SourceError, open_source
from edgeops.errors import InputError
from edgeops.files import sha256_file
from edgeops.settings import BleConfig, Dataset, MatDataConfig, Settings
from edgeops.stack.s3 import s3_client
from edgeops.stack.sessions import fetch_session, upload_session
from edgeops.stages.ingest import ingest
from tests.conftest import MAT_DATA, on_track
from tests.support.simulated_mat import POLL, START, SimulatedMat, encode, read_frames, simulated_mat

CONFIG = MatDataConfig()
OCCUPIED, EMPTY = MAT_DATA / "occupied.csv", MAT_DATA / "empty_or_cat.csv"
ADDRESS = "F0:0D:CA:FE:00:01"
# Fast enough for tests, slow enough that the simulated mat's answers interleave with polls.
FAST = BleConfig(poll_interval_s=0.01, start_delay_s=0.05, connect_timeout_s=2.0, silence_timeout_s=0.5)


def fast(settings: Settings | None = None) -> Settings:
    return (settings or Settings()).model_copy(update={"ble": FAST})


def timestamps(path: Path) -> list[datetime]:
    lines = path.read_text().splitlines()[1:]
    return [datetime.strptime(line.split(",")[0], CONFIG.timestamp_format) for line in lines]


def is_subsequence(part: list[tuple[float, ...]], whole: list[tuple[float, ...]]) -> bool:
    remaining = iter(whole)
    return all(any(item == candidate for candidate in remaining) for item in part)


def only_instance(mat: type[SimulatedMat]) -> SimulatedMat:
    (instance,) = mat.instances
    return instance


# --- decode -------------------------------------------------------------------------------


def test_decode_the_documented_example_is_the_first_real_frame() -> None:
    payload = bytes.fromhex("5a" + "c0d2bf47" + "beb9bf47" + "deb8bf47" + "79babf47")
    first = tuple(read_recording(EMPTY, "empty_or_cat", CONFIG).pressures[0].tolist())
    assert decode(payload) == first == (98213.5, 98163.484375, 98161.734375, 98164.9453125)
    assert decode(payload + b"\x01\x02\x03") == first  # bytes after offset 17 are ignored


REAL = read_frames(OCCUPIED)[0]


@pytest.mark.parametrize(
    ("payload", "reason", "message"),
    [
        (encode(REAL)[:16], SHORT, "notification of 16 bytes; a frame needs at least 17"),
        (b"", SHORT, "notification of 0 bytes"),
        (b"\x00" + struct.pack("<4f", REAL[0], math.nan, REAL[2], REAL[3]), NON_FINITE, "nan, not a finite pressure"),
        (b"\x00" + struct.pack("<4f", math.inf, *REAL[1:]), NON_FINITE, "inf, not a finite pressure"),
        (
            encode(tuple(v / 1000 for v in REAL)),
            OUT_OF_RANGE,
            "Pa, outside the plausible 80000 to 120000 Pa (looks like kPa",
        ),
        (encode((200_000.0, *REAL[1:])), OUT_OF_RANGE, "200000 Pa, outside the plausible 80000 to 120000 Pa"),
    ],
    ids=["short", "empty", "nan", "inf", "kpa", "too-high"],
)
def test_decode_rejects_bad_frames(payload: bytes, reason: str, message: str) -> None:
    with pytest.raises(FrameError, match=re.escape(message)) as error:
        decode(payload, CONFIG)
    assert error.value.reason == reason
    if reason == OUT_OF_RANGE and "kPa" not in message:
        assert "kPa" not in str(error.value)


# --- record -------------------------------------------------------------------------------


def test_record_end_to_end_survives_garbage(tmp_path: Path) -> None:
    mat = simulated_mat(OCCUPIED, garbage_every=4, skip_every=3)
    session = tmp_path / "session"
    settings = fast()
    started = time.monotonic()
    result = record(ADDRESS, "occupied", 1.5, session, settings, backend=mat)
    assert 1.5 <= time.monotonic() - started < 4
    mat_side = only_instance(mat)

    # The mat heard the protocol: start once, then (after the start delay) only polls; and it was left alone.
    assert mat_side.writes[0][2] == START
    assert {data for _, _, data in mat_side.writes[1:]} == {POLL}
    assert mat_side.writes[1][0] - mat_side.writes[0][0] >= FAST.start_delay_s
    assert not mat_side.connected and mat_side.callback is None

    # The CSV is exactly what ingest reads, and holds exactly the valid frames the mat delivered.
    assert re.fullmatch(r"occupied-\d{8}T\d{6}\.csv", result.csv.name)
    assert sorted(path.name for path in session.iterdir()) == sorted([result.csv.name, "session.json"])
    assert result.csv.read_text().splitlines()[0] == "Timestamp,Float1,Float2,Float3,Float4"
    rows = [tuple(row) for row in read_recording(result.csv, "occupied", CONFIG).pressures.tolist()]
    source = read_frames(OCCUPIED)
    delivered = mat_side.delivered_frames
    assert delivered == source[: len(delivered)]  # the real recording, in order, long frames included
    same_ms = result.recording.bad_frames.get(SAME_MILLISECOND, 0)
    assert len(rows) + same_ms == len(delivered) and is_subsequence(rows, delivered)
    assert rows[0] == source[0] and len(rows) > 30
    stamps = timestamps(result.csv)
    assert all(
        re.fullmatch(r"[\d-]{10} [\d:]{8}\.\d{3}", line.split(",")[0])
        for line in result.csv.read_text().splitlines()[1:]
    )
    assert stamps[-1] - stamps[0] < timedelta(seconds=1.6)

    # Garbage of every kind was delivered throughout and counted by reason; long frames were valid.
    garbage = mat_side.delivered_garbage
    assert min(garbage[kind] for kind in ("short", "nan", "kpa", "long")) >= 1
    expected_bad = {SHORT: garbage["short"], NON_FINITE: garbage["nan"], OUT_OF_RANGE: garbage["kpa"]}
    assert result.recording.bad_frames == expected_bad | ({SAME_MILLISECOND: same_ms} if same_ms else {})

    manifest = json.loads(result.manifest.read_text())
    assert manifest["recordings"] == [
        {
            "file": result.csv.name,
            "label": "occupied",
            "address": ADDRESS,
            "started_at": result.recording.started_at.isoformat(),
            "duration_s": 1.5,
            "frames": len(rows),
            "bad_frames": result.recording.bad_frames,
        }
    ]
    assert manifest["description"]
    assert abs((stamps[0] - result.recording.started_at).total_seconds()) < 0.5


def test_frames_arriving_in_the_same_millisecond_keep_the_first(tmp_path: Path) -> None:
    mat = simulated_mat(OCCUPIED, burst=2)  # two notifications per poll, microseconds apart
    result = record(ADDRESS, "occupied", 0.5, tmp_path / "session", fast(), backend=mat)
    rows = [tuple(row) for row in read_recording(result.csv, "occupied", CONFIG).pressures.tolist()]  # increasing
    delivered = only_instance(mat).delivered_frames
    dropped = result.recording.bad_frames[SAME_MILLISECOND]
    assert dropped > 0 and len(rows) + dropped == len(delivered)
    assert rows[0] == delivered[0] and is_subsequence(rows, delivered)


@pytest.mark.parametrize("behaviour", [{"silent": True}, {"only_garbage": True}], ids=["silent", "garbage-only"])
def test_a_mat_without_valid_frames_ends_with_a_silence_error(tmp_path: Path, behaviour: dict[str, bool]) -> None:
    mat = simulated_mat(OCCUPIED, **behaviour)
    session = tmp_path / "session"
    started = time.monotonic()
    with pytest.raises(SilenceError, match=f"no valid frame from the mat at {ADDRESS} for 0.5 s") as error:
        record(ADDRESS, "occupied", 10, session, fast(), backend=mat)
    assert time.monotonic() - started < 2  # ended by silence, not by the 10 s duration
    if behaviour.get("only_garbage"):
        assert re.search(r"bad frames: \d+ non_finite, \d+ out_of_range, \d+ short", str(error.value))
    assert not session.exists()  # created for the recording, removed again: nothing left behind
    assert not only_instance(mat).connected


def test_no_valid_frame_within_a_short_duration_writes_nothing(tmp_path: Path) -> None:
    session = tmp_path / "session"
    session.mkdir()
    manifest = session / "session.json"
    manifest.write_text('{"description": "earlier", "recordings": []}\n')
    with pytest.raises(MatError, match=f"no valid frame from the mat at {ADDRESS} in 0.2 s"):
        record(ADDRESS, "occupied", 0.2, session, fast(), backend=simulated_mat(OCCUPIED, silent=True))
    assert [path.name for path in session.iterdir()] == ["session.json"]
    assert manifest.read_text() == '{"description": "earlier", "recordings": []}\n'


def test_a_mat_lost_mid_session_leaves_the_session_as_it_was(tmp_path: Path) -> None:
    mat = simulated_mat(OCCUPIED, drop_after_polls=30)
    session = tmp_path / "session"
    session.mkdir()
    with pytest.raises(MatError, match=f"(the mat at {ADDRESS} disconnected|lost the mat at {ADDRESS})"):
        record(ADDRESS, "occupied", 5, session, fast(), backend=mat)
    assert len(only_instance(mat).delivered_frames) > 10  # it was recording when the mat went away
    assert list(session.iterdir()) == []


def test_cancelling_a_recording_like_ctrl_c_leaves_nothing_half_written(tmp_path: Path) -> None:
    mat = simulated_mat(OCCUPIED)
    session = tmp_path / "session"

    async def interrupt() -> list[str]:
        task = asyncio.create_task(record_session(ADDRESS, "occupied", 10, session, fast(), backend=mat))
        await asyncio.sleep(0.5)
        midway = sorted(path.name for path in session.iterdir())
        task.cancel()  # what asyncio.run does to its task on Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await task
        return midway

    midway = asyncio.run(interrupt())
    assert len(midway) == 1 and midway[0].endswith(".tmp")  # a partial (temporary) file existed …
    assert not session.exists()  # … and is gone, as is the directory made for it
    assert not only_instance(mat).connected


def test_unknown_label_fails_before_connecting(tmp_path: Path) -> None:
    mat = simulated_mat(OCCUPIED)
    with pytest.raises(RecordError, match="unknown label 'sitting' \\(known labels: empty_or_cat, occupied\\)"):
        record(ADDRESS, "sitting", 1, tmp_path / "session", fast(), backend=mat)
    assert mat.instances == [] and not (tmp_path / "session").exists()


def test_cli_reports_a_bad_recording_request_and_exits_nonzero(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "edgeops", "record", "--address", ADDRESS, "--session", str(tmp_path / "s")]
    done = subprocess.run([*command, "--label", "sitting"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "unknown label 'sitting'" in done.stderr and "Traceback" not in done.stderr


def test_record_uploads_and_ingest_reads_the_session_from_s3(stack_settings: Settings, tmp_path: Path) -> None:
    settings = on_track(fast(stack_settings), experiment="ble-tests")
    session = tmp_path / "mat-session"
    results, uris = [], []
    for label, path in (("empty_or_cat", EMPTY), ("occupied", OCCUPIED)):
        results.append(record(ADDRESS, label, 1.5, session, settings, backend=simulated_mat(path)))
        uris.append(upload_session(session, settings))  # as `edgeops record --upload` does
    uri = f"s3://{settings.raw_bucket}/sessions/mat-session/session.json"
    assert uris == [uri, uri]
    s3 = s3_client(settings)
    for name in ("session.json", *(result.csv.name for result in results)):
        stored = s3.get_object(Bucket=settings.raw_bucket, Key=f"sessions/mat-session/{name}")["Body"].read()
        assert stored == (session / name).read_bytes()

    info = ingest(Dataset.mat, tmp_path / "dataset", settings, uri)
    assert {(source.label, source.file, source.frames, source.sha256) for source in info.sources} == {
        (result.recording.label, result.csv.name, result.recording.frames, sha256_file(result.csv))
        for result in results
    }
    assert all(count > 0 for count in info.samples.values())

    # A Path folds "s3://" to "s3:/"; the manifest is still found.
    assert (
        fetch_session(str(Path(uri)), tmp_path / "fetched", s3_client(settings)).read_bytes()
        == results[1].manifest.read_bytes()
    )
    missing = f"s3://{settings.raw_bucket}/sessions/nowhere/session.json"
    with pytest.raises(InputError) as error:
        ingest(Dataset.mat, tmp_path / "never", settings, missing)
    assert error.value.problems == [f"{missing}: not found"]
    # The CLI takes the URI as it takes a path (the stack's settings are in the environment).
    command = [sys.executable, "-m", "edgeops", "ingest", "--manifest", missing, "--out", str(tmp_path / "never")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{missing}: not found" in done.stderr and "Traceback" not in done.stderr
    broken = json.loads(results[1].manifest.read_text())
    broken["recordings"].append({"file": "gone.csv", "label": "occupied"})
    s3.put_object(Bucket=settings.raw_bucket, Key="sessions/broken/session.json", Body=json.dumps(broken).encode())
    with pytest.raises(InputError) as error:
        ingest(Dataset.mat, tmp_path / "never", settings, f"s3://{settings.raw_bucket}/sessions/broken/session.json")
    assert error.value.problems[-1] == (
        f"s3://{settings.raw_bucket}/sessions/broken/gone.csv: not found "
        f"(listed by s3://{settings.raw_bucket}/sessions/broken/session.json)"
    )
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("uri", ["s3://raw", "s3://raw/sessions/", "s3:///session.json"])
def test_ingest_refuses_an_s3_uri_that_names_no_manifest(uri: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        ingest(Dataset.mat, tmp_path / "out", Settings(), uri)
    assert error.value.problems == [f"{uri}: not the s3://bucket/key of a session manifest"]


# --- frame sources ------------------------------------------------------------------------


def test_replay_keeps_the_recorded_pace_and_values() -> None:
    speed, count = 25.0, 60
    started = time.monotonic()
    frames = list(islice(open_source(f"replay:{OCCUPIED}", Settings(), speed=speed), count))
    elapsed = time.monotonic() - started
    recorded = timestamps(OCCUPIED)[:count]
    expected = (recorded[-1] - recorded[0]).total_seconds() / speed  # about 0.37 s
    assert expected * 0.95 <= elapsed <= expected + 0.5
    assert [frame.arrival for frame in frames] == recorded
    assert [frame.pressures for frame in frames] == read_frames(OCCUPIED)[:count]


def test_replay_of_a_bad_recording_gives_ingests_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_text(OCCUPIED.read_text().replace("99964.75", "99.96475", 1))
    with pytest.raises(InputError, match=r"broken\.csv: row 2, column Float1: 99\.96475 Pa .*looks like kPa"):
        open_source(f"replay:{broken}", Settings())
    with pytest.raises(InputError, match=re.escape("nothing.csv: recording not found")):
        open_source(f"replay:{tmp_path / 'nothing.csv'}", Settings())


@pytest.mark.parametrize("spec", ["serial:/dev/ttyUSB0", "replay:", str(OCCUPIED), "ble"])
def test_unknown_source_spec_names_the_valid_forms(spec: str) -> None:
    with pytest.raises(SourceError, match=re.escape("use 'replay:PATH' (a recording CSV) or 'ble:ADDRESS'")):
        open_source(spec, Settings())


def test_ble_source_yields_decoded_frames_and_stops_its_thread_when_closed() -> None:
    mat = simulated_mat(OCCUPIED, garbage_every=4)
    frames = open_source(f"ble:{ADDRESS}", fast(), backend=mat)
    taken = list(islice(frames, 20))
    threads = [thread for thread in threading.enumerate() if thread.name == f"ble-source-{ADDRESS}"]
    assert len(threads) == 1 and threads[0].is_alive()
    frames.close()
    assert not threads[0].is_alive()
    mat_side = only_instance(mat)
    assert not mat_side.connected and mat_side.callback is None
    assert [frame.pressures for frame in taken] == read_frames(OCCUPIED)[:20] == mat_side.delivered_frames[:20]
    assert all(a.arrival < b.arrival for a, b in pairwise(taken))
    assert sum(mat_side.delivered_garbage.values()) >= 4  # garbage went by without ending the stream


def test_ble_source_raises_the_sessions_error_in_the_consumer() -> None:
    frames = open_source(f"ble:{ADDRESS}", fast(), backend=simulated_mat(OCCUPIED, silent=True))
    with pytest.raises(SilenceError, match="no valid frame"):
        next(frames)
    assert not any(thread.name == f"ble-source-{ADDRESS}" for thread in threading.enumerate())
