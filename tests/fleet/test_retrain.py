"""Drift starts retraining: a fleet whose mats read 3 kPa high starts the pipeline on the newest session in the
raw bucket, once per cool-down; the same fleet on the original recordings, for as long, starts nothing."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgeops.errors import EdgeopsError
from edgeops.fleet.retrain import start_training
from edgeops.settings import Settings
from edgeops.stack.sessions import upload_session
from tests.conftest import MAT_DATA, REPO, throwaway_stack
from tests.support.releases import mat_model, release, unique_model_name


@pytest.fixture(scope="module")
def drift_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    patch = pytest.MonkeyPatch()
    for name, value in {
        "EDGEOPS_FLEET__RETRAIN_ON_DRIFT": "true",
        "EDGEOPS_FLEET__DRIFT_MIN_SAMPLES": "300",
        "EDGEOPS_FLEET__DRIFT_CHECK_S": "2",
    }.items():
        patch.setenv(name, value)
    try:
        with throwaway_stack(tmp_path_factory.mktemp("drift")) as settings:
            yield settings
    finally:
        patch.undo()


def fleet(settings: Settings) -> dict[str, Any]:
    with urllib.request.urlopen(f"{settings.fleet_url}/api/fleet", timeout=20) as response:
        return dict(json.loads(response.read()))


def simulate(settings: Settings, model: str, prefix: str, offset: float) -> None:
    command = [
        sys.executable, "-m", "edgeops", "fleet", "simulate", "--devices", "6", "--duration", "25", "--speed", "5",
        "--report-interval", "1", "--workers", "1", "--prefix", prefix, "--model", model, "--offset", str(offset),
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=300)


def test_drifting_mats_start_one_training_run_and_the_original_ones_none(drift_stack: Settings, tmp_path: Path) -> None:
    settings = drift_stack
    name = unique_model_name("drift")
    release(settings, name, mat_model("baseline"))
    session = tmp_path / "newest-session"
    shutil.copytree(MAT_DATA, session)
    uri = upload_session(session, settings)

    simulate(settings, name, "steady", 0.0)
    quiet = fleet(settings)
    assert quiet["retraining"] == []
    assert all(d["samples"] >= 300 and not d["flagged"] for d in quiet["drift"]), quiet["drift"]

    simulate(settings, name, "shifted", 3000.0)
    drifted = fleet(settings)
    assert any(d["flagged"] for d in drifted["drift"])
    (trigger,) = drifted["retraining"]
    assert trigger["session"] == uri and trigger["status"] == "running", trigger
    time.sleep(5)  # still drifting, checked every 2 s: the cool-down holds
    assert len(fleet(settings)["retraining"]) == 1

    # The run trains on that session: ingest records it, and the service links the run's MLflow page by it.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (linked := fleet(settings)["retraining"][0])["mlflow_run"]:
        time.sleep(2)
    log = Path(trigger["log"])
    assert linked["mlflow_run"], log.read_text(errors="replace")[-3000:]
    run_id = linked["mlflow_run"].rsplit("/", 1)[1]
    with urllib.request.urlopen(f"{settings.tracking_uri}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=20) as got:
        params = {p["key"]: p["value"] for p in json.loads(got.read())["run"]["data"]["params"]}
    assert params["dataset.session"] == uri
    print(f"\ndrift {trigger['chambers']} started the pipeline on {uri}: {linked['mlflow_run']} (log {log})")


def test_on_a_cluster_drift_submits_to_kubeflow_pipelines(drift_stack: Settings) -> None:
    """The cluster path is `pipeline submit`: with no Kubeflow Pipelines API answering, the trigger says so."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{closed.getsockname()[1]}"
    settings = drift_stack.model_copy(
        update={
            "fleet": drift_stack.fleet.model_copy(update={"retrain_runner": "cluster"}),
            "cluster": drift_stack.cluster.model_copy(
                update={"kfp_host": host, "pipeline_package": REPO / "pipelines" / "edgeops_cluster.yaml"}
            ),
        }
    )
    with pytest.raises(EdgeopsError, match=f"Kubeflow Pipelines API not reachable at {host}"):
        start_training(settings, "s3://raw/sessions/x/session.json", datetime.now(UTC))
