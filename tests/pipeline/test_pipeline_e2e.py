"""The compiled pipeline, run by KFP's local runner against a real stack, checked where it lands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import docker
import numpy as np
import torch

from edgeops.cli.pipeline import with_runner
from edgeops.datasets.mat import read_recording, windows
from edgeops.files import sha256_bytes
from edgeops.pipeline.arguments import pipeline_arguments
from edgeops.pipeline.local import docker_runner, run_local
from edgeops.runtime import Program
from edgeops.settings import Runner, Settings
from edgeops.stack import tracking
from edgeops.stack.s3 import s3_client
from edgeops.stages.promote import Promotion
from tests.conftest import REPO

STAGES = ["ingest", "train", "export", "benchmark", "verify", "promote"]
MODEL = "mat-occupancy"


def http_get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def test_committed_pipeline_yaml_is_current(tmp_path: Path) -> None:
    script = (
        "import sys, pathlib; from pipelines.edgeops_pipeline import compile_all; "
        "compile_all(pathlib.Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, check=True, timeout=120)
    for name in ("edgeops.yaml", "edgeops_cluster.yaml"):
        fresh, committed = (tmp_path / name).read_text(), (REPO / "pipelines" / name).read_text()
        assert fresh == committed, f"pipelines/{name} is stale: run `make compile` and commit it"


def test_pipeline_end_to_end(stack_settings: Settings, mat_session: Path, tmp_path: Path) -> None:
    settings = Settings()  # the stack fixture's environment, which the KFP tasks inherit too
    run = run_local(settings, pipeline_arguments(settings, mat_session, MODEL), tmp_path / "kfp")
    assert run.runner == Runner.subprocess and not run.signed
    assert list(run.stage_status) == STAGES
    assert set(run.stage_status.values()) == {"SUCCESS"}
    assert run.promotion_dir is not None
    promotion = Promotion.model_validate_json((run.promotion_dir / "promotion.json").read_text())
    assert promotion.state == "published"
    manifest = check_release_landed(settings, mat_session, tmp_path, promotion.version)
    assert manifest["version"] == promotion.release_version


def test_pipeline_runs_every_task_in_the_component_image(
    stack_settings: Settings, mat_session: Path, tmp_path: Path, component_image: str
) -> None:
    """KFP's DockerRunner: each task in our image as its non-root user, read-only root, no key in any task."""
    settings = with_runner(Settings(), Runner.docker)
    assert settings.component_image == component_image
    run = run_local(settings, pipeline_arguments(settings, mat_session, MODEL), tmp_path / "kfp")
    assert run.runner == Runner.docker
    assert list(run.stage_status) == STAGES
    assert set(run.stage_status.values()) == {"SUCCESS"}
    assert run.promotion_dir is not None
    # Promote only asked for the release: the tasks held no signing key, this machine signed it.
    promotion = Promotion.model_validate_json((run.promotion_dir / "promotion.json").read_text())
    assert promotion.state == "requested" and promotion.release_version is None
    assert len(run.signed) == 1
    assert re.fullmatch(rf"{MODEL} registry version {promotion.version}: published as stable v\d+", run.signed[0])
    # Every task wrote its outputs as the image's user, not as this machine's.
    image_uid = int(docker.from_env().images.get(component_image).attrs["Config"]["User"].split(":")[0])
    assert image_uid != 0
    for stage in STAGES:
        record = next((run.promotion_dir.parents[1] / stage).rglob("executor_output.json"))
        assert record.stat().st_uid == image_uid, f"{stage} did not run as uid {image_uid}"
    manifest = check_release_landed(settings, mat_session, tmp_path, promotion.version)
    version = tracking.client(settings).get_model_version(MODEL, str(promotion.version))
    assert version.tags["release_state"] == "published" and version.tags["release"] == f"stable v{manifest['version']}"


def test_the_docker_runner_confines_each_task(stack_settings: Settings, component_image: str) -> None:
    """The runner's own container options, applied to a probe in the same image: the restrictions hold."""
    runner = docker_runner(with_runner(Settings(), Runner.docker), [])
    probe = (
        "id -u; touch /opt/edgeops/x 2>/dev/null && echo root-writable || echo root-read-only; "
        "touch /tmp/x && echo tmp-writable; grep CapEff /proc/self/status; "
        "python -c \"import os; print(os.environ['EDGEOPS_RELEASE__SIGNED_BY'])\""
    )
    output = docker.from_env().containers.run(
        component_image, ["sh", "-c", probe], remove=True, **runner.container_run_args
    )
    lines = output.decode().split()
    assert lines[0] != "0" and lines[1:3] == ["root-read-only", "tmp-writable"]
    assert lines[3:5] == ["CapEff:", "0000000000000000"] and lines[5] == "signer"


def check_release_landed(settings: Settings, mat_session: Path, tmp_path: Path, registry_version: int) -> dict:
    """What both runners must leave behind: objects and hashes in S3, MLflow, the alias, a release an agent installs."""
    # A device's view: anonymous HTTP only.
    manifest_bytes = http_get(settings.ota_url(f"{MODEL}/latest.json"))
    assert manifest_bytes is not None
    manifest = json.loads(manifest_bytes)
    assert manifest["registry_version"] == registry_version
    model = http_get(settings.ota_url(manifest["model_key"]))
    assert model is not None and sha256_bytes(model) == manifest["sha256"] and len(model) == manifest["size"]
    assert manifest["model_key"] == f"{MODEL}/models/{manifest['sha256']}.pte"
    assert manifest["labels"] == ["empty_or_cat", "occupied"]
    assert manifest["input"]["shape"] == [1, 8, 4] and manifest["input"]["units"] == "Pa"

    # The raw recordings and the dataset landed in the raw bucket, content-addressed.
    s3 = s3_client(settings)
    raw_keys = {item["Key"] for item in s3.list_objects_v2(Bucket="raw")["Contents"]}
    for file in ("occupied.csv", "empty_or_cat.csv"):
        assert f"recordings/{sha256_bytes((mat_session.parent / file).read_bytes())}.csv" in raw_keys
    assert f"datasets/{manifest['dataset_version']}/dataset.npz" in raw_keys

    # MLflow holds the run, the figures, the hash and the registry alias.
    client = tracking.client(settings)
    mlflow_run = client.get_run(manifest["source_run_id"])
    metrics = mlflow_run.data.metrics
    assert metrics["int8_accuracy"] >= 0.98
    assert metrics["fp32_accuracy"] - metrics["int8_accuracy"] <= 0.005
    assert metrics["int8_accuracy"] == manifest["metrics"]["int8_accuracy"]
    assert mlflow_run.data.tags["int8_sha256"] == manifest["sha256"]
    assert mlflow_run.data.tags["promoted_version"] == str(manifest["registry_version"])
    alias = client.get_model_version_by_alias(MODEL, "production")
    assert alias.version == str(manifest["registry_version"]) and alias.run_id == mlflow_run.info.run_id
    assert alias.tags["sha256"] == manifest["sha256"]

    # The published model runs in the ExecuTorch runtime on raw frames of a real recording.
    pte = tmp_path / "device.pte"
    pte.write_bytes(model)
    recording = read_recording(mat_session.parent / "occupied.csv", "occupied", settings.mat.data)
    frames = torch.from_numpy(windows(recording.pressures, 8, 8).astype(np.float32))
    predictions = [int(Program(pte)(frames[i : i + 1]).argmax()) for i in range(len(frames))]
    assert np.mean(np.array(predictions) == 1) >= 0.95

    # The edge agent installs the signed release (smoke test on the published reference input
    # included), then classifies a recording replayed at ten times its pace.
    device = tmp_path / "device"
    agent = [sys.executable, "-m", "edgeops", "agent", "--state-dir", str(device), "--model", MODEL]
    once = subprocess.run([*agent, "--once"], capture_output=True, text=True, timeout=300, check=False)
    assert once.returncode == 0, once.stdout + once.stderr
    status = json.loads((device / "status.json").read_text())
    assert status["installed"]["sha256"] == manifest["sha256"] and status["running"] == "current"
    assert status["installed"]["version"] == manifest["version"]
    return manifest


def pipeline_cli(mat_session: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`edgeops pipeline run` as a person runs it, in the stack fixture's environment."""
    environment = {**os.environ, "EDGEOPS_OUT_DIR": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "edgeops", "pipeline", "run", "--manifest", str(mat_session)],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def full_output(stdout: str) -> Path:
    found = re.search(r"full output: (\S+\.log)", stdout)
    assert found, stdout
    return Path(found.group(1))


def test_the_cli_shows_the_stages_and_keeps_the_runners_output_in_a_log(
    stack_settings: Settings, mat_session: Path, tmp_path: Path
) -> None:
    done = pipeline_cli(mat_session, tmp_path)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # Without a terminal: the log's path, a line as each stage starts and ends, the total.
    assert [line.split()[1] for line in lines if line.startswith("✓ ")] == STAGES
    assert len(lines) <= 2 + 2 * len(STAGES), lines
    assert re.fullmatch(r"pipeline done in \d+\.\d s", lines[-1])
    assert "executor_input" not in done.stdout + done.stderr and "Warning" not in done.stdout + done.stderr
    log = full_output(done.stdout).read_text()
    assert "executor_input" in log and "epoch 1/" in log  # KFP's and the tasks' own output, all of it


def test_a_failed_gate_stops_the_pipeline_before_promotion(
    stack_settings: Settings, mat_session: Path, tmp_path: Path
) -> None:
    settings = Settings()
    manifest_before = http_get(settings.ota_url(f"{MODEL}/latest.json"))
    done = pipeline_cli(mat_session, tmp_path, EDGEOPS_MAT__GATES__MIN_INT8_ACCURACY="1.5")
    print(done.stdout, done.stderr)
    assert done.returncode == 1
    assert "✗ verify failed: GateError: no INT8 candidate passed the quality gates" in done.stdout
    error = done.stderr
    assert "error: pipeline failed at task verify" in error
    assert "GateError: no INT8 candidate passed the quality gates, nothing will be promoted" in error
    # Judged on the worst CPU kernel path measured, which the message names.
    assert re.search(r"min_int8_accuracy: [\d.]+ on \S.* \(must be >= 1\.5\) FAILED by 0\.[5-9]", error)
    assert f"the full output is in {full_output(done.stdout)}" in " ".join(error.split())
    assert http_get(settings.ota_url(f"{MODEL}/latest.json")) == manifest_before
