"""S3 keys and manifest entries never leave their directory, and an upload never overwrites another session.

Against the real stack: every refusal is checked to have written nothing to S3 (all buckets listed before
and after) and nothing to disk (the out and fetch directories stay absent)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edgeops.errors import EdgeopsError, InputError
from edgeops.settings import Dataset, Settings
from edgeops.stack.s3 import get_if_present, s3_client
from edgeops.stack.sessions import SessionConflictError, fetch_session, upload_session
from edgeops.stages.ingest import ingest
from tests.conftest import MAT_DATA
from tests.support.buckets import objects

# The manifest key of each URI, which the refusal names.
BAD_URIS = {
    "s3://raw//abs/path": "/abs/path",
    "s3://raw/../x": "../x",
    "s3://raw/sessions/../../x/session.json": "sessions/../../x/session.json",
    "s3://raw/sessions/./day/session.json": "sessions/./day/session.json",
    "s3://raw/sessions//session.json": "sessions//session.json",
}
BAD_ENTRIES = ["../x.csv", "../../escaped.csv", "/etc/passwd", "sub/../../x.csv", "..", "."]


def cli_ingest(manifest: str, out: Path) -> subprocess.CompletedProcess[str]:
    """`edgeops ingest` as a user runs it (the stack's settings are in the environment), on a wide terminal."""
    command = [sys.executable, "-m", "edgeops", "ingest", "--manifest", manifest, "--out", str(out)]
    env = {**os.environ, "COLUMNS": "1000"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def session(root: Path, name: str, recordings: list[tuple[str, str]], edit: bytes = b"") -> Path:
    """A session directory `root/name` with copies of the real recordings (`edit` appended to each) and a
    manifest listing them as (file, label)."""
    directory = root / name
    directory.mkdir(parents=True)
    for file, _ in recordings:
        (directory / file).write_bytes((MAT_DATA / file).read_bytes() + edit)
    manifest = {"description": "test session", "recordings": [{"file": f, "label": label} for f, label in recordings]}
    (directory / "session.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


BOTH = [("empty_or_cat.csv", "empty_or_cat"), ("occupied.csv", "occupied")]


def unique(prefix: str = "day") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refused_everywhere(settings: Settings, uri: str, expected: str, tmp_path: Path) -> None:
    """Ingest, fetch_session and `edgeops ingest` all refuse `uri` with exactly `expected`; nothing is written."""
    before = objects(settings)
    out, fetched = tmp_path / "out", tmp_path / "fetched"
    with pytest.raises(InputError) as error:
        ingest(Dataset.mat, out, settings, uri)
    assert error.value.problems == [expected]
    with pytest.raises(InputError) as error:
        fetch_session(uri, fetched, s3_client(settings))
    assert error.value.problems == [expected]
    done = cli_ingest(uri, out)
    assert done.returncode == 1
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert objects(settings) == before
    assert not out.exists() and not fetched.exists()


@pytest.mark.parametrize("uri", BAD_URIS)
def test_a_manifest_key_that_is_not_a_plain_relative_path_is_refused(
    stack_settings: Settings, uri: str, tmp_path: Path
) -> None:
    key = BAD_URIS[uri]
    expected = f"{uri}: key {key!r} must be a relative path without empty, '.' or '..' parts"
    refused_everywhere(stack_settings, uri, expected, tmp_path)


@pytest.mark.parametrize("entry", BAD_ENTRIES)
def test_a_manifest_in_s3_listing_a_recording_outside_its_directory_is_refused(
    stack_settings: Settings, entry: str, tmp_path: Path
) -> None:
    s3, bucket, name = s3_client(stack_settings), stack_settings.raw_bucket, unique()
    recordings = [{"file": entry, "label": "occupied"}, {"file": "empty_or_cat.csv", "label": "empty_or_cat"}]
    s3.put_object(Bucket=bucket, Key=f"sessions/{name}/session.json", Body=json.dumps({"recordings": recordings}))
    s3.put_object(
        Bucket=bucket, Key=f"sessions/{name}/empty_or_cat.csv", Body=(MAT_DATA / "empty_or_cat.csv").read_bytes()
    )
    for target in ("sessions/x.csv", "escaped.csv", "x.csv"):  # what the entries point at exists: still refused
        s3.put_object(Bucket=bucket, Key=target, Body=(MAT_DATA / "occupied.csv").read_bytes())
    uri = f"s3://{bucket}/sessions/{name}/session.json"
    expected = f"{uri}: recording {entry!r} must be a path relative to the manifest, inside its directory"
    refused_everywhere(stack_settings, uri, expected, tmp_path)


@pytest.mark.parametrize("entry", [*BAD_ENTRIES, str(MAT_DATA / "occupied.csv"), "link.csv"])
def test_a_local_manifest_listing_a_recording_outside_its_directory_is_refused(
    stack_settings: Settings, entry: str, tmp_path: Path
) -> None:
    directory = session(tmp_path, "session", [("empty_or_cat.csv", "empty_or_cat")])
    shutil.copyfile(MAT_DATA / "occupied.csv", tmp_path / "x.csv")  # "../x.csv" exists: still refused
    (directory / "link.csv").symlink_to(tmp_path / "x.csv")
    manifest = directory / "session.json"
    listing = json.loads(manifest.read_text())
    listing["recordings"].append({"file": entry, "label": "occupied"})
    manifest.write_text(json.dumps(listing))
    before = objects(stack_settings)
    out = tmp_path / "out"
    with pytest.raises(InputError) as error:
        ingest(Dataset.mat, out, stack_settings, manifest)
    (problem,) = error.value.problems
    assert problem.startswith(f"{manifest}: recording {entry!r} ")
    done = cli_ingest(str(manifest), out)
    assert done.returncode == 1
    assert f"recording {entry!r}" in done.stderr and "Traceback" not in done.stderr
    assert objects(stack_settings) == before
    assert not out.exists()


def test_a_second_session_of_the_same_name_does_not_overwrite_the_first(
    stack_settings: Settings, tmp_path: Path
) -> None:
    s3, bucket, name = s3_client(stack_settings), stack_settings.raw_bucket, unique()
    first = session(tmp_path / "first", name, BOTH)
    uri = upload_session(first, stack_settings)
    assert uri == f"s3://{bucket}/sessions/{name}/session.json"
    uploaded = objects(stack_settings)

    # Another machine's session of the same name, with other recordings: refused before anything is written.
    other = session(tmp_path / "other", name, [("occupied.csv", "occupied")], edit=b"\n")
    with pytest.raises(SessionConflictError, match=f"{uri} already lists recordings that .* does not") as error:
        upload_session(other, stack_settings)
    assert isinstance(error.value, EdgeopsError) and "rename" in str(error.value)
    assert objects(stack_settings) == uploaded

    # The same manifest listing a recording of the same name with other bytes: the manifest is never written.
    clash = session(tmp_path / "clash", name, BOTH, edit=b"\n")
    listing = json.loads((clash / "session.json").read_text())
    listing["recordings"].append({"file": "extra.csv", "label": "occupied"})
    (clash / "session.json").write_text(json.dumps(listing, indent=2) + "\n")
    shutil.copyfile(MAT_DATA / "occupied.csv", clash / "extra.csv")
    with pytest.raises(SessionConflictError, match="already holds a different recording of that name"):
        upload_session(clash, stack_settings)
    assert objects(stack_settings) == uploaded
    for file in ("session.json", "empty_or_cat.csv", "occupied.csv"):
        found = get_if_present(s3, bucket, f"sessions/{name}/{file}")
        assert found is not None and found[0] == (first / file).read_bytes()

    # The first session again, unchanged: the same URI, nothing written.
    assert upload_session(first, stack_settings) == uri
    assert objects(stack_settings) == uploaded


def test_uploading_again_after_recording_more_keeps_what_the_manifest_listed(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """`edgeops record --upload` after each recording into one directory: the manifest grows, conditionally."""
    s3, bucket, name = s3_client(stack_settings), stack_settings.raw_bucket, unique()
    directory = session(tmp_path, name, BOTH[:1])
    uri = upload_session(directory, stack_settings)
    first = get_if_present(s3, bucket, f"sessions/{name}/session.json")
    assert first is not None
    shutil.copyfile(MAT_DATA / "occupied.csv", directory / "occupied.csv")
    listing = json.loads((directory / "session.json").read_text())
    listing["recordings"].append({"file": "occupied.csv", "label": "occupied"})
    (directory / "session.json").write_text(json.dumps(listing, indent=2) + "\n")
    assert upload_session(directory, stack_settings) == uri
    second = get_if_present(s3, bucket, f"sessions/{name}/session.json")
    assert second is not None and second[0] == (directory / "session.json").read_bytes()
    assert json.loads(second[0])["recordings"][:1] == json.loads(first[0])["recordings"]
    assert ingest(Dataset.mat, tmp_path / "out", stack_settings, uri).samples["test"] > 0


@pytest.mark.parametrize("entry", ["../x.csv", "/etc/passwd", "missing.csv", "link.csv"])
def test_an_upload_listing_a_file_outside_the_session_or_missing_writes_nothing(
    stack_settings: Settings, entry: str, tmp_path: Path
) -> None:
    directory = session(tmp_path, unique(), BOTH)
    shutil.copyfile(MAT_DATA / "occupied.csv", tmp_path / "x.csv")
    (directory / "link.csv").symlink_to(tmp_path / "x.csv")
    listing = json.loads((directory / "session.json").read_text())
    listing["recordings"].append({"file": entry, "label": "occupied"})
    (directory / "session.json").write_text(json.dumps(listing))
    before = objects(stack_settings)
    with pytest.raises(InputError) as error:
        upload_session(directory, stack_settings)
    (problem,) = error.value.problems
    assert problem.startswith(f"{directory / 'session.json'}: recording 3 ")
    assert objects(stack_settings) == before


@pytest.mark.parametrize("name", ["Day 1", "a.b", "-x", "x" * 64])
def test_a_session_directory_whose_name_cannot_be_a_key_is_not_uploaded(
    stack_settings: Settings, name: str, tmp_path: Path
) -> None:
    directory = session(tmp_path, name, BOTH)
    before = objects(stack_settings)
    with pytest.raises(InputError, match=f"session directory name '{name}' is not a valid name"):
        upload_session(directory, stack_settings)
    assert objects(stack_settings) == before
