"""Shared fixtures. The stack fixture starts real SeaweedFS and MLflow servers on free
loopback ports with a throwaway state dir, and stops them at the end of the session."""

from __future__ import annotations

import os
import random
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgeops.ota.keys import init_keys
from edgeops.settings import Dataset, Settings
from edgeops.stack import supervisor

REPO = Path(__file__).resolve().parents[1]
MAT_DATA = REPO / "data" / "seroton-mat"
# Tests that use these fixtures start servers: the slow tier (`make test-fast` skips it).
SLOW_FIXTURES = {"stack_settings", "mysql_stack", "component_image"}
# PhysioNet PMD sits beside the repository (`shared/` next to the clone), here and in CI; tests
# that need it fail, not skip, when it is missing.
PMD_DATA = REPO.parent / "shared" / "data" / "pmd"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def say(request: pytest.FixtureRequest, message: str) -> None:
    """A line on pytest's terminal while a long fixture works; its own output is captured."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports p with p and p + 10000 free (SeaweedFS puts gRPC at +10000)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 29999)
        if port not in chosen and _free(port) and _free(port + 10000):
            chosen.append(port)
    return chosen


@contextmanager
def throwaway_stack(root: Path, **overrides: Any) -> Iterator[Settings]:
    """A running local stack (S3, MLflow, broker, fleet service) on free loopback ports with its state under
    `root`, stopped on exit.

    Its settings are also put in the environment, where KFP tasks pick them up.
    """
    s3, mlflow, master, volume, filer, console, mqtt, fleet = free_ports(8)
    env = {
        "EDGEOPS_STATE_DIR": str(root / "state"),
        "EDGEOPS_OUT_DIR": str(root / "out"),
        "EDGEOPS_S3_PORT": str(s3),
        "EDGEOPS_MLFLOW_PORT": str(mlflow),
        "EDGEOPS_SEAWEED_MASTER_PORT": str(master),
        "EDGEOPS_SEAWEED_VOLUME_PORT": str(volume),
        "EDGEOPS_SEAWEED_FILER_PORT": str(filer),
        "EDGEOPS_MINIO_CONSOLE_PORT": str(console),
        "EDGEOPS_FLEET__MQTT_PORT": str(mqtt),
        "EDGEOPS_FLEET__HTTP_PORT": str(fleet),
        "EDGEOPS_RELEASE__KEYS_DIR": str(root / "release-keys"),
        "EDGEOPS_RELEASE__ROOT_KEY_DIR": str(root / "release-root-key"),
        "EDGEOPS_STOP_TIMEOUT_S": "5",  # throwaway data: no need to wait for a graceful exit
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
        # Drift would start real training runs beside the tests; the drift test turns it on for its own stack.
        "EDGEOPS_FLEET__RETRAIN_ON_DRIFT": os.environ.get("EDGEOPS_FLEET__RETRAIN_ON_DRIFT", "false"),
    }
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    settings = Settings(**overrides)
    init_keys(settings.release)
    try:
        supervisor.start(settings)
        yield settings
    finally:
        supervisor.stop(settings)
        patch.undo()


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with throwaway_stack(tmp_path_factory.mktemp("stack")) as settings:
        yield settings


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def unavailable(message: str) -> None:
    """Skip a test whose tool or service is missing here, but fail it in CI, where everything must run."""
    if in_ci():
        pytest.fail(f"{message} (CI is set, so this test must not be skipped)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def component_image() -> str:
    """The component image, built from this tree (`make images`), on a Docker daemon that answers.

    `make test` runs pytest under scripts/docker_engine.py, which starts one where none answers. A bare
    `pytest` without a daemon skips the container tests, except in CI, where they must run.
    """
    import docker
    from docker.errors import DockerException, ImageNotFound

    from scripts.images import SOURCE_LABEL, source_digest

    image = Settings().component_image
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as error:
        unavailable(f"no Docker daemon answers ({error}); run the tests with `make pytest`")
    try:
        labels = client.images.get(image).labels
    except ImageNotFound:
        pytest.fail(f"{image} is not built: run `make images`")
    if labels.get(SOURCE_LABEL) != source_digest():
        pytest.fail(f"{image} was built from other sources than this tree: run `make images`")
    return image


@pytest.fixture
def mat_session(tmp_path: Path) -> Path:
    """A private copy of the real recordings and their session manifest."""
    target = tmp_path / "session"
    shutil.copytree(MAT_DATA, target)
    return target / "session.json"


def on_track(settings: Settings, dataset: Dataset = Dataset.mat, **changes: Any) -> Settings:
    """`settings` with fields of one track's row changed (model_name, experiment, train, gates, ...)."""
    track = settings.track(dataset)
    return settings.model_copy(update={track.dataset.value: track.model_copy(update=changes)})
