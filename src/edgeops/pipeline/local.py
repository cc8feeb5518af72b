"""Run the compiled pipeline YAML with KFP's local subprocess runner and report each stage as it recorded itself.

Every component records its own wall time (from its process start) in its output artifact's
metadata, or on failure its error beside the output (`edgeops.pipeline.task`); this module reads
those records from the pipeline root afterwards.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from edgeops.errors import EdgeopsError
from edgeops.pipeline.live import LiveView, load_estimates, save_estimates, stage_order
from edgeops.pipeline.task import FAILURE, run_outcomes
from edgeops.settings import Runner, Settings
from edgeops.stack.sessions import is_session_uri


class PipelineRun(BaseModel):
    seconds: float
    stage_seconds: dict[str, float]
    stage_status: dict[str, str]
    promotion_dir: Path | None
    runner: Runner
    signed: list[str] = []  # docker: what this machine's signer did with promote's release requests


def stack_environment(settings: Settings) -> dict[str, str]:
    """What every task needs in either runner: the stack's endpoints, its S3 identity, the PMD data."""
    access_key, secret_key = settings.credentials
    return {
        "EDGEOPS_S3_ACCESS_KEY": access_key,
        "EDGEOPS_S3_SECRET_KEY": secret_key,
        "EDGEOPS_S3_ENDPOINT": settings.s3_url,
        "EDGEOPS_MLFLOW_TRACKING_URI": settings.tracking_uri,
        "EDGEOPS_PMD__DATA__ROOT": str(settings.pmd.data.root.resolve()),
        "PYTHONWARNINGS": "ignore::FutureWarning",
    }


@contextlib.contextmanager
def task_environment(settings: Settings) -> Iterator[None]:
    """Tasks inherit this process's environment, as pods get theirs from Secrets on a cluster."""
    task_env = {
        **stack_environment(settings),
        "EDGEOPS_STATE_DIR": str(settings.state_dir.resolve()),
        "EDGEOPS_RELEASE__KEYS_DIR": str(settings.release.keys_dir.expanduser().resolve()),
    }
    saved = {name: os.environ.get(name) for name in task_env}
    os.environ.update(task_env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def docker_runner(settings: Settings, read_only_paths: list[Path]) -> Any:
    """KFP's DockerRunner with the component image's own user and the chart's restrictions.

    Tasks get the stack's endpoints and S3 identity in their environment, as pods get them from
    Secrets; never a signing key (promote requests the release, `sign_requests` publishes it).
    The host paths they read (a session manifest's recordings, the PMD data) are mounted read-only
    where they are on this machine, so the same arguments work in both runners.
    """
    from docker.types import Mount
    from kfp import local

    config = settings.local_runner
    environment = {**stack_environment(settings), "EDGEOPS_RELEASE__SIGNED_BY": "signer"}
    mounts = [
        Mount(target=str(path), source=str(path), type="bind", read_only=True)
        for path in sorted({path.resolve() for path in read_only_paths if path.exists()})
    ]
    return local.DockerRunner(
        network_mode="host",  # the local stack listens on 127.0.0.1 only
        read_only=True,
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={config.tmpfs_size},mode=1777"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        shm_size=config.shm_size,
        environment=environment,
        mounts=mounts,
    )


def run_local(
    settings: Settings,
    arguments: dict[str, Any],
    pipeline_root: Path,
    view: Console | None = None,
    log: Path | None = None,
) -> PipelineRun:
    """Run `settings.pipeline_package` end to end; raise naming the failed stage and its error if one fails.

    With `settings.local_runner.runner == Runner.docker` every task runs in `settings.component_image`;
    its outputs land in `pipeline_root` all the same (KFP mounts it at the same path). With `view`, the stages
    are drawn on it as they run (`edgeops.pipeline.live`); `log` is where the tasks' own output went.
    """
    from kfp import components, local

    package = settings.pipeline_package
    if not package.is_file():
        raise EdgeopsError(f"compiled pipeline {package} not found; run `make compile`")
    pipeline_root = pipeline_root.resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    earlier = set(pipeline_root.iterdir())
    # Local tasks read the manifest from this machine (or ingest fetches it from the raw bucket); on a cluster
    # the path is inside the image.
    manifest: Path | str = arguments.get("session_manifest", settings.mat.session_manifest)
    host_paths = [settings.pmd.data.root]
    if not is_session_uri(manifest):
        manifest = Path(manifest).resolve()
        host_paths.append(manifest.parent)
    arguments = {**arguments, "session_manifest": str(manifest)}
    runner_name = settings.local_runner.runner.value
    if settings.local_runner.runner == Runner.docker:
        pipeline_root.chmod(0o1777)  # the image's user writes its outputs here, as anyone may in /tmp
        runner = docker_runner(settings, host_paths)
    else:
        runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(pipeline_root))
    pipeline = components.load_component_from_file(str(package))
    times = settings.state_dir.resolve() / "pipeline-times" / f"{arguments.get('dataset', 'mat')}-{runner_name}.json"
    live = (
        LiveView(view, pipeline_root, earlier, stage_order(package), load_estimates(times), log)
        if view is not None
        else contextlib.nullcontext()
    )
    where = f"the full output is in {log}" if log else "see the task's output above"
    started = time.perf_counter()
    try:
        with task_environment(settings), warnings.catch_warnings(), live:
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            task = pipeline(**arguments)
    except RuntimeError as error:
        failure = next((outcome for outcome in run_outcomes(pipeline_root, earlier) if outcome.status == FAILURE), None)
        if failure is None:  # the task died before its stage began (e.g. it could not import edgeops)
            raise EdgeopsError(f"pipeline failed: {error}; {where}") from None
        raise EdgeopsError(f"pipeline failed at task {failure.name}:\n{failure.error}\n({where})") from None
    seconds = time.perf_counter() - started
    outcomes = run_outcomes(pipeline_root, earlier)
    save_estimates(times, {outcome.name: outcome.seconds for outcome in outcomes})
    promotion = task.outputs if not isinstance(task.outputs, dict) else next(iter(task.outputs.values()), None)
    signed = sign_requested_releases(settings) if settings.local_runner.runner == Runner.docker else []
    return PipelineRun(
        seconds=seconds,
        stage_seconds={outcome.name: outcome.seconds for outcome in outcomes},
        stage_status={outcome.name: outcome.status for outcome in outcomes},
        promotion_dir=Path(promotion.path) if promotion is not None else None,
        runner=settings.local_runner.runner,
        signed=signed,
    )


def sign_requested_releases(settings: Settings) -> list[str]:
    """Play the cluster's release signer on this machine: publish what the containerized promote requested."""
    from edgeops.ota.keys import Keyring
    from edgeops.stages.signer import sign_requests

    handled = sign_requests(settings, Keyring.load(settings.release))
    refused = [request for request in handled if request.state != "published"]
    if refused:
        raise EdgeopsError(
            "the release signer did not publish: "
            + "; ".join(f"{r.model_name} v{r.version}: {r.outcome}" for r in refused)
        )
    return [f"{request.model_name} registry version {request.version}: {request.outcome}" for request in handled]
