"""The demo: run the pipeline, then fetch and run the promoted model the way a device does."""

from __future__ import annotations

import json
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from edgeops.datasets import pmd
from edgeops.datasets.mat import read_manifest, read_recording, windows
from edgeops.device.agent import Agent
from edgeops.errors import VerificationError
from edgeops.files import sha256_bytes
from edgeops.ota.keys import ensure_keys
from edgeops.ota.release import manifest_key
from edgeops.pipeline.arguments import pipeline_arguments
from edgeops.pipeline.local import run_local
from edgeops.runtime import Program
from edgeops.settings import Dataset, Runner, Settings
from edgeops.stack import supervisor, tracking
from edgeops.stages.benchmark import predict_all
from edgeops.stages.verify import CANDIDATES_ARTIFACT, PATH_METRIC

# What the simple client's check is worth, shown wherever the demo reports it.
SIMPLE_CLIENT_TRUST = (
    "simple client: latest.json over plain HTTP gives integrity, not authenticity: its sha256 catches a damaged "
    "download, but anyone who can change the bucket or the network path can change the model and the sha256 "
    "together; devices use the TUF-verified `edgeops agent`"
)


def http_get(url: str) -> bytes:
    """Anonymous plain-HTTP GET: no credentials, as a device on the OTA bucket."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def mat_samples(settings: Settings, manifest_path: Path, window: int) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(source, true label, [n, window, channels] Pa) for every recording, in non-overlapping windows."""
    config = settings.mat.data
    for recording_path, label in read_manifest(manifest_path, config):
        recording = read_recording(recording_path, label, config)
        frames = windows(recording.pressures, window, window).astype(np.float32)
        yield recording.source.file, label, torch.from_numpy(frames)


def pmd_samples(settings: Settings, labels: list[str]) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(subject/posture, true label, [n, 1, rows, cols] raw maps) for the held-out test subjects."""
    config = settings.pmd.data
    data = pmd.load_subjects(config, config.test_subjects)
    for subject in config.test_subjects:
        for index, label in enumerate(labels):
            rows = (data.subjects == subject) & (data.labels == index)
            if rows.any():
                yield f"{subject} {label}", label, torch.from_numpy(data.frames[rows])


def device_check(settings: Settings, model_name: str, manifest_path: Path) -> dict[str, Any]:
    """Poll latest.json, download the model, check its hash, classify real samples with it.

    This is the simple client: the hash shows the download is intact (integrity), not that we published it
    (authenticity); see SIMPLE_CLIENT_TRUST. `agent_install` is the device's real, TUF-verified path.
    """
    manifest = json.loads(http_get(settings.ota_url(manifest_key(model_name))))
    blob = http_get(settings.ota_url(manifest["model_key"]))
    actual = sha256_bytes(blob)
    if actual != manifest["sha256"] or len(blob) != manifest["size"]:
        raise VerificationError(
            f"downloaded model has sha256 {actual} ({len(blob)} bytes); manifest says {manifest['sha256']}"
        )
    labels = manifest["labels"]
    samples = (
        pmd_samples(settings, labels)
        if manifest["dataset"] == Dataset.pmd
        else mat_samples(settings, manifest_path, manifest["input"]["shape"][1])
    )
    predictions: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.pte"
        path.write_bytes(blob)
        program = Program(path)
        for source, label, x in samples:
            predicted = [labels[index] for index in predict_all(program, x)]
            predictions[source] = {
                "label": label,
                "samples": len(predicted),
                "agreement": sum(p == label for p in predicted) / len(predicted),
            }
    return {"manifest": manifest, "sha256_verified": True, "trust": SIMPLE_CLIENT_TRUST, "predictions": predictions}


def agent_install(settings: Settings, model_name: str, dataset: Dataset) -> dict[str, Any]:
    """What an edge agent does with the release: install it, then poll again with nothing new."""
    # One state directory per repository: a device's verified metadata belongs to the model it follows.
    state_dir = settings.out_dir / "demo" / "device" / model_name
    agent = Agent(settings, state_dir=state_dir, model_name=model_name, track=dataset)
    agent.check_installed()
    install = agent.poll()
    unchanged = agent.poll()
    running = agent.state.running_model()
    if running is None:
        raise VerificationError(f"the agent in {agent.state.root} has no verified model after polling")
    return {
        "state_dir": str(agent.state.root),
        "installed_version": running[0].version,
        "sha256": running[0].sha256,
        "install_poll": install.model_dump(),
        "unchanged_poll": unchanged.model_dump(),
    }


def verify_candidates(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """Verify's judgement of every INT8 candidate, as logged to the run."""
    with tempfile.TemporaryDirectory() as scratch:
        path = tracking.client(settings).download_artifacts(run_id, CANDIDATES_ARTIFACT, scratch)
        candidates: list[dict[str, Any]] = json.loads(Path(path).read_text())
    return candidates


def run_demo(
    settings: Settings,
    manifest_path: Path,
    model_name: str,
    dataset: Dataset = Dataset.mat,
    view: Console | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """The demo's figures; with `view`, its steps are drawn there as they happen (`edgeops.pipeline.live`)."""
    if dataset == Dataset.pmd:
        pmd.experiment_dir(settings.pmd.data)  # no data: say so before starting anything
    arguments = pipeline_arguments(settings, manifest_path, model_name, dataset)  # bad names: before anything
    created_keys = ensure_keys(settings.release)
    say = view.print if view is not None else print
    supervisor.start(settings)
    say(f"✓ local stack: S3 {settings.s3_url}, MLflow {settings.tracking_uri}, fleet {settings.fleet_url}")
    pipeline = run_local(settings, arguments, settings.out_dir / "kfp", view, log)
    device = device_check(settings, model_name, manifest_path)
    print(f"[demo] {SIMPLE_CLIENT_TRUST}", flush=True)
    agent = agent_install(settings, model_name, dataset)
    say(f"✓ device: downloaded and ran the release; the edge agent installed v{agent['installed_version']}")
    manifest = device["manifest"]
    run = tracking.client(settings).get_run(manifest["source_run_id"])
    metrics = run.data.metrics
    candidates = verify_candidates(settings, run.info.run_id)
    chosen = next(candidate for candidate in candidates if candidate["chosen"])
    summary: dict[str, Any] = {
        "model_name": model_name,
        "dataset": dataset.value,
        "model": arguments["model"],
        "dataset_version": manifest["dataset_version"],
        "mlflow_tracking_uri": settings.tracking_uri,
        "mlflow_run_id": run.info.run_id,
        "mlflow_run_url": f"{settings.tracking_uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
        "eager_accuracy": metrics["eager_accuracy"],
        "fp32_accuracy": metrics["fp32_accuracy"],
        "int8_accuracy": metrics["int8_accuracy"],
        "int8_accuracy_drop": metrics["int8_accuracy_drop"],
        # INT8 accuracy on each CPU kernel path the benchmark reached (the release descriptor carries them).
        "int8_accuracy_paths": {
            key.removeprefix(PATH_METRIC): value
            for key, value in manifest["metrics"].items()
            if key.startswith(PATH_METRIC)
        },
        "test_samples": manifest["metrics"]["test_samples"],
        "test_split": settings.track(dataset).held_out,
        "int8_strategy": chosen["strategy"],
        "int8_strategy_reason": chosen["reason"],
        "int8_candidates": {
            candidate["strategy"]: {key: candidate[key] for key in ("size_bytes", "p50_ms", "accuracy", "reason")}
            for candidate in candidates
        },
        "parameters": int(metrics["parameters"]),
        "int8_bytes_per_param": metrics["int8_bytes_per_param"],
        "int8_size_ratio": metrics["fp32_size_bytes"] / metrics["int8_size_bytes"],
        "fp32_latency_p50_ms": metrics["fp32_latency_p50_ms"],
        "int8_latency_p50_ms": metrics["int8_latency_p50_ms"],
        "int8_latency_p95_ms": metrics["int8_latency_p95_ms"],
        "fp32_size_bytes": int(metrics["fp32_size_bytes"]),
        "int8_size_bytes": int(metrics["int8_size_bytes"]),
        "promoted_version": manifest["registry_version"],
        "release": f"{manifest['channel']} v{manifest['version']}",
        "release_keys": str(settings.release.keys_dir),
        "created_release_keys": created_keys is not None,
        "agent": agent,
        "registry_alias": settings.registry_alias,
        "s3_endpoint": settings.s3_url,
        "ota_bucket": settings.ota_bucket,
        "manifest_key": manifest_key(model_name),
        "manifest_url": settings.ota_url(manifest_key(model_name)),
        "model_url": settings.ota_url(manifest["model_key"]),
        "sha256": manifest["sha256"],
        "device_check": {
            "sha256_verified": device["sha256_verified"],
            "trust": device["trust"],
            "predictions": device["predictions"],
        },
        "runner": pipeline.runner,
        "component_image": settings.component_image if pipeline.runner == Runner.docker else None,
        "signed_by_host": pipeline.signed,
        "pipeline_seconds": pipeline.seconds,
        "stage_seconds": pipeline.stage_seconds,
    }
    out = settings.out_dir / "demo" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    return summary
