"""PMD in the raw bucket: `edgeops data upload pmd` and ingest where the data is not on disk (a cluster pod),
against the real local S3 server and MLflow (the stack tests), on S1-S3 of the real release.

The upload checks every file before anything is written, sends each once and never overwrites; ingest
without local data builds the very dataset version the files on disk give, from the bucket's copy."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from edgeops.cli import app
from edgeops.datasets.pmd import SUMS_FILE, PmdAdapter, read_sums
from edgeops.errors import EdgeopsError, InputError
from edgeops.settings import Dataset, Settings
from edgeops.stack.s3 import s3_client
from edgeops.stack.sources import SHA256_METADATA, SourceConflictError, fetch_pmd, source_key, upload_pmd
from edgeops.stages.ingest import ingest
from tests.conftest import PMD_DATA, on_track
from tests.support.buckets import objects

SUBJECTS = ["S1", "S2", "S3"]
EXPERIMENT = "experiment-i"


def copy_release(root: Path, subjects: list[str] = SUBJECTS) -> list[str]:
    """A PMD root with `subjects` of the real release and a SHA256SUMS.txt listing exactly their files."""
    sums = read_sums((PMD_DATA / SUMS_FILE).read_text(), str(PMD_DATA / SUMS_FILE))
    names = sorted(name for name in sums if any(name.startswith(f"{EXPERIMENT}/{s}/") for s in subjects))
    assert len(names) == 17 * len(subjects), f"PMD data not at {PMD_DATA}"
    for subject in subjects:
        shutil.copytree(PMD_DATA / EXPERIMENT / subject, root / EXPERIMENT / subject)
    (root / SUMS_FILE).write_text("".join(f"{sums[name]}  {name}\n" for name in names))
    return names


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("pmd")
    return root, copy_release(root)


def on_copy(settings: Settings, root: Path, prefix: str | None = None) -> Settings:
    """`settings` reading the PMD root `root` (S1-S3, S3 for testing), with a bucket prefix of its own."""
    data = settings.pmd.data.model_copy(
        update={
            "root": root,
            "subjects": SUBJECTS,
            "test_subjects": ["S3"],
            "bucket_prefix": prefix or f"sources/test-{uuid.uuid4().hex[:8]}",
        }
    )
    return on_track(settings, Dataset.pmd, data=data, experiment="pmd-sources-test", model_name="pmd-sources-test")


# ---------------------------------------------------------------- refused before any S3 call (no servers)


def test_upload_without_the_data_names_the_way_to_get_it(tmp_path: Path) -> None:
    settings = on_copy(Settings(state_dir=tmp_path / "no-stack"), tmp_path / "nothing")
    with pytest.raises(InputError) as error:
        upload_pmd(settings.pmd.data, settings)
    (problem,) = error.value.problems
    assert problem.startswith("PMD data not found") and "edgeops data fetch pmd" in problem


def test_upload_refuses_files_that_do_not_match_their_checksums(tmp_path: Path) -> None:
    names = copy_release(tmp_path, ["S1"])
    settings = on_copy(Settings(state_dir=tmp_path / "no-stack"), tmp_path)
    (tmp_path / names[0]).write_bytes(b"changed\r\n")
    (tmp_path / names[1]).unlink()
    with pytest.raises(InputError) as error:
        upload_pmd(settings.pmd.data, settings)
    assert len(error.value.problems) == 2  # all problems at once, before anything is sent
    changed, missing = error.value.problems
    assert changed.startswith(f"{tmp_path / names[0]}: sha256 ") and "does not match SHA256SUMS.txt" in changed
    assert missing.startswith(f"{tmp_path / names[1]}: listed in {tmp_path / SUMS_FILE} but missing")

    (tmp_path / SUMS_FILE).unlink()
    with pytest.raises(InputError, match=r"SHA256SUMS\.txt: not found; the upload checks every file against it"):
        upload_pmd(settings.pmd.data, settings)


def test_upload_command_takes_only_pmd() -> None:
    result = CliRunner().invoke(app, ["data", "upload", "mat"])
    assert isinstance(result.exception, EdgeopsError) and "needs no upload" in str(result.exception)


def test_submit_passes_the_chosen_track(monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[dict[str, object]] = []
    monkeypatch.setattr("edgeops.pipeline.cluster.submit", lambda _s, _p, arguments: submitted.append(arguments))
    result = CliRunner().invoke(app, ["pipeline", "submit", "--dataset", "pmd"])
    assert result.exit_code == 0, result.output
    (arguments,) = submitted
    assert arguments["dataset"] == "pmd" and arguments["model"] == Settings().pmd.architecture.value
    assert arguments["model_name"] == Settings().pmd.model_name


# ---------------------------------------------------------------- against the real S3 server and MLflow


def test_upload_sends_each_file_once_and_never_overwrites(
    stack_settings: Settings, release: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, names = release
    settings = on_copy(stack_settings, root)
    config, bucket, s3 = settings.pmd.data, settings.raw_bucket, s3_client(stack_settings)
    seen: list[tuple[str, int, int, bool]] = []
    uri = upload_pmd(config, settings, lambda *args: seen.append(args))
    assert uri == f"s3://{bucket}/{config.bucket_prefix}/"
    assert [name for name, *_ in seen] == names and all(sent for *_, sent in seen) and seen[-1][1:3] == (51, 51)
    prefix = f"{bucket}/{config.bucket_prefix}/"
    stored = {key.removeprefix(prefix): etag for key, etag in objects(settings).items() if key.startswith(prefix)}
    assert set(stored) == {*names, SUMS_FILE}
    sums = read_sums((root / SUMS_FILE).read_text(), SUMS_FILE)
    head = s3.head_object(Bucket=bucket, Key=source_key(config, names[0]))
    assert head["Metadata"][SHA256_METADATA] == sums[names[0]]
    body = s3.get_object(Bucket=bucket, Key=source_key(config, names[0]))["Body"].read()
    assert body == (root / names[0]).read_bytes()

    # Again: nothing is sent, nothing changes.
    before = objects(settings)
    seen.clear()
    assert upload_pmd(config, settings, lambda *args: seen.append(args)) == uri
    assert len(seen) == 51 and not any(sent for *_, sent in seen)
    assert objects(settings) == before

    # Another copy under the same prefix (one file differs, its list says so): refused, nothing overwritten.
    other = tmp_path / "other"
    copy_release(other)
    (other / names[5]).write_bytes((other / names[5]).read_bytes().replace(b"\r\n", b"\n"))
    changed = hashlib.sha256((other / names[5]).read_bytes()).hexdigest()
    (other / SUMS_FILE).write_text((other / SUMS_FILE).read_text().replace(sums[names[5]], changed))
    with pytest.raises(SourceConflictError, match="already holds other bytes"):
        upload_pmd(on_copy(stack_settings, other, config.bucket_prefix).pmd.data, settings)
    assert objects(settings) == before


def test_ingest_builds_pmd_from_the_bucket_where_it_is_not_on_disk(
    stack_settings: Settings, release: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, names = release
    settings = on_copy(stack_settings, root)
    uri = upload_pmd(settings.pmd.data, settings)
    on_disk = PmdAdapter(settings.pmd.data).build().record

    pod = on_copy(stack_settings, tmp_path / "not-here", settings.pmd.data.bucket_prefix)  # a pod: no PMD on disk
    record = ingest(Dataset.pmd, tmp_path / "out", pod)
    assert record.version == on_disk.version and record.samples == on_disk.samples
    assert record.checksums_verified == len(names)  # verified against the uploaded list
    params = mlflow.MlflowClient(stack_settings.tracking_uri).get_run(record.run_id).data.params
    assert params["pmd.root"] == uri  # where the data came from, not a scratch directory


def test_ingest_without_data_anywhere_names_both_places(stack_settings: Settings, tmp_path: Path) -> None:
    pod = on_copy(stack_settings, tmp_path / "not-here")
    before = objects(stack_settings)
    with pytest.raises(InputError) as error:
        ingest(Dataset.pmd, tmp_path / "out", pod)
    (problem,) = error.value.problems
    assert str((tmp_path / "not-here" / EXPERIMENT).resolve()) in problem
    assert f"s3://{pod.raw_bucket}/{pod.pmd.data.bucket_prefix}/" in problem and "edgeops data upload pmd" in problem
    assert not (tmp_path / "out").exists() and objects(stack_settings) == before


def test_a_changed_object_in_the_bucket_is_refused(
    stack_settings: Settings, release: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, names = release
    settings = on_copy(stack_settings, root)
    config = settings.pmd.data
    upload_pmd(config, settings)
    s3 = s3_client(stack_settings)
    s3.put_object(Bucket=settings.raw_bucket, Key=source_key(config, names[20]), Body=b"changed\r\n")
    with pytest.raises(InputError) as error:
        fetch_pmd(config, tmp_path, s3, settings.raw_bucket)
    (problem,) = error.value.problems
    expected = read_sums((root / SUMS_FILE).read_text(), SUMS_FILE)[names[20]]
    assert problem.startswith(f"s3://{settings.raw_bucket}/{config.bucket_prefix}/{names[20]}: sha256 ")
    assert problem.endswith(f"does not match {SUMS_FILE} ({expected}); not used")
