"""Model names and channels become S3 keys, TUF target paths and directory names: a malformed one is refused
wherever it enters (CLI options, pipeline arguments, the ingest stage and its KFP component), with a message
naming the field, before anything is written to S3 or disk."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from edgeops.cli import app
from edgeops.datasets.mat import recording_key
from edgeops.errors import InputError
from edgeops.files import inside
from edgeops.pipeline.arguments import pipeline_arguments
from edgeops.settings import Dataset, Settings, check_name, check_sha256
from edgeops.stages.ingest import ingest
from tests.support.buckets import objects

BAD_NAMES = ["", "a/b", "../x", "A", "-x", "x" * 64, "a b", "a.b", "a_b", "x\n", "é"]
GOOD_NAMES = ["a", "0", "mat-occupancy", "x" * 63, "a-", "9-b-c"]
BAD_SHA256 = ["", "g" * 64, "A" * 64, "a" * 63, "a" * 65, "../" + "a" * 61, " " + "a" * 63]

# Every command that takes a model name or a channel, the option, the field its message names, and the
# arguments that keep whatever it would write inside the test's directory.
COMMANDS = [
    (["ingest"], "--model-name", "model_name", ["--out", "{tmp}/out"]),
    (["promote"], "--model-name", "model_name", ["--out", "{tmp}/out", "--verified", "{tmp}/verified"]),
    (["promote"], "--channel", "channel", ["--out", "{tmp}/out", "--verified", "{tmp}/verified"]),
    (["pipeline", "run"], "--model-name", "model_name", []),
    (["pipeline", "submit"], "--model-name", "model_name", []),
    (["demo"], "--model-name", "model_name", []),
    (["agent", "--once"], "--model", "model", ["--state-dir", "{tmp}/state"]),
    (["agent", "--once"], "--channel", "channel", ["--state-dir", "{tmp}/state"]),
    (["release", "rollback"], "--model", "model", ["--keys-dir", "{tmp}/keys"]),
    (["release", "rollback"], "--channel", "channel", ["--keys-dir", "{tmp}/keys"]),
    (["release", "heartbeat"], "--model", "model", ["--keys-dir", "{tmp}/keys"]),
    (["release", "list"], "--model", "model", ["--keys-dir", "{tmp}/keys"]),
]


def flat(text: str) -> str:
    """CLI output without rich's panel borders and line wrapping."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("value", GOOD_NAMES)
def test_a_valid_name_passes(value: str) -> None:
    assert check_name("model_name", value) == value


@pytest.mark.parametrize("value", BAD_SHA256)
def test_a_malformed_sha256_is_refused_naming_the_field(value: str) -> None:
    for check in (lambda: check_sha256("sha256", value), lambda: recording_key(value)):
        with pytest.raises(InputError) as error:
            check()
        assert len(error.value.problems) == 1 and "sha256" in error.value.problems[0]
        assert repr(value) in error.value.problems[0]
    assert recording_key("a" * 64) == f"recordings/{'a' * 64}.csv"


@pytest.mark.parametrize("relative", ["", "../x", "a/../../x", "a/../b", "/etc/passwd", "..\\x", ".", "a\0b"])
def test_inside_refuses_every_way_out(relative: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        inside(tmp_path, relative, "recording")
    assert error.value.problems[0].startswith(f"recording {relative!r} ")


def test_inside_refuses_a_symlink_out_and_keeps_paths_inside(tmp_path: Path) -> None:
    (tmp_path / "outside.csv").write_text("x")
    base = tmp_path / "session"
    (base / "sub").mkdir(parents=True)
    (base / "link.csv").symlink_to(tmp_path / "outside.csv")
    with pytest.raises(InputError, match="leads outside"):
        inside(base, "link.csv")
    assert inside(base, "sub/a.csv") == base.resolve() / "sub" / "a.csv"
    assert inside(base, "./a.csv") == base.resolve() / "a.csv"


@pytest.mark.parametrize("value", BAD_NAMES)
def test_pipeline_arguments_refuse_a_malformed_model_name_or_channel(value: str) -> None:
    settings = Settings()
    with pytest.raises(InputError) as error:
        pipeline_arguments(settings, model_name=value)
    assert error.value.problems[0].startswith(f"model_name {value!r} is not a valid name")
    bad_channel = settings.model_copy(update={"release": settings.release.model_copy(update={"channel": value})})
    with pytest.raises(InputError) as error:
        pipeline_arguments(bad_channel)
    assert error.value.problems[0].startswith(f"channel {value!r} is not a valid name")
    for dataset in Dataset:  # the defaults pass
        assert check_name("model_name", pipeline_arguments(settings, dataset=dataset)["model_name"])


@pytest.mark.parametrize("value", BAD_NAMES)
@pytest.mark.parametrize(
    ("command", "option", "field", "extra"), COMMANDS, ids=[" ".join([*c[0], c[1]]) for c in COMMANDS]
)
def test_the_cli_refuses_a_malformed_name_before_doing_anything(
    stack_settings: Settings,
    command: list[str],
    option: str,
    field: str,
    extra: list[str],
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGEOPS_OUT_DIR", str(tmp_path / "out"))
    before = objects(stack_settings)
    arguments = [*command, *(part.format(tmp=tmp_path) for part in extra), option, value]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': {field} {value!r} is not a valid name" in flat(result.output)
    assert objects(stack_settings) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", BAD_NAMES)
def test_ingest_and_its_component_refuse_a_malformed_model_name(
    stack_settings: Settings, mat_session: Path, value: str, tmp_path: Path
) -> None:
    from components.stages import ingest as component

    before = objects(stack_settings)
    out = tmp_path / "out"
    with pytest.raises(InputError) as error:
        ingest(Dataset.mat, out, stack_settings, mat_session, value)
    assert error.value.problems == [
        f"model_name {value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
        "starting with a letter or digit"
    ]
    if value:  # the component passes "" on as "the track's", by design
        artifact = SimpleNamespace(path=str(out / "dataset"), metadata={})
        with pytest.raises(InputError, match=f"model_name {re.escape(repr(value))} is not a valid name"):
            component.python_func(
                dataset_name="mat", session_manifest=str(mat_session), model_name=value, dataset=artifact
            )
    assert objects(stack_settings) == before
    assert not out.exists()


@pytest.mark.parametrize("name", ["Day 1", "a.b", "-x", "x" * 64])
def test_record_with_upload_refuses_a_session_name_that_cannot_be_a_key_before_recording(
    name: str, tmp_path: Path
) -> None:
    session = tmp_path / name
    arguments = ["record", "--address", "F0:0D:CA:FE:00:01", "--label", "occupied", "--session", str(session)]
    result = CliRunner().invoke(app, [*arguments, "--upload"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--session': session directory name {name!r} is not a valid name" in flat(result.output)
    assert list(tmp_path.iterdir()) == []
