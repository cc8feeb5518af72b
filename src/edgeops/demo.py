"""The demo: run the pipeline, then fetch and run the promoted model the way a device does."""

from __future__ import annotations

import json
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeops import stack, tracking
from edgeops.agent import Agent
from edgeops.errors import VerificationError
from edgeops.ingest import read_manifest, read_recording, windows
from edgeops.pipeline import pipeline_arguments, run_local
from edgeops.promote import manifest_key
from edgeops.release import ROOT_FILE, init_keys
from edgeops.runtime import Program
from edgeops.settings import Settings
from edgeops.storage import sha256_bytes


def http_get(url: str) -> bytes:
    """Anonymous plain-HTTP GET: no credentials, as a device on the OTA bucket."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def device_check(settings: Settings, model_name: str, manifest_path: Path) -> dict[str, Any]:
    """Poll latest.json, download the model, check its hash, classify every recording's frames."""
    manifest = json.loads(http_get(settings.ota_url(manifest_key(model_name))))
    blob = http_get(settings.ota_url(manifest["model_key"]))
    actual = sha256_bytes(blob)
    if actual != manifest["sha256"] or len(blob) != manifest["size"]:
        raise VerificationError(
            f"downloaded model has sha256 {actual} ({len(blob)} bytes); manifest says {manifest['sha256']}"
        )
    window = manifest["input"]["shape"][1]
    labels = manifest["labels"]
    predictions: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.pte"
        path.write_bytes(blob)
        program = Program(path)
        for recording_path, label in read_manifest(manifest_path, settings.dataset):
            recording = read_recording(recording_path, label, settings.dataset)
            frames = torch.from_numpy(windows(recording.pressures, window, window).astype(np.float32))
            predicted = [labels[int(program(frames[i : i + 1]).argmax())] for i in range(len(frames))]
            predictions[recording.source.file] = {
                "label": label,
                "windows": len(predicted),
                "agreement": sum(p == label for p in predicted) / len(predicted),
            }
    return {"manifest": manifest, "sha256_verified": True, "predictions": predictions}


def ensure_release_keys(settings: Settings) -> Path | None:
    """The demo signs releases; on a fresh machine it creates the keys (outside the repository) first."""
    if (settings.release.keys_dir / ROOT_FILE).exists():
        return None
    return init_keys(settings.release)


def agent_install(settings: Settings, model_name: str) -> dict[str, Any]:
    """What an edge agent does with the release: install it, then poll again with nothing new."""
    agent = Agent(settings, state_dir=settings.out_dir / "demo" / "device", model_name=model_name)
    agent.check_installed()
    install = agent.poll()
    unchanged = agent.poll()
    running = agent.running_model()
    if running is None:
        raise VerificationError(f"the agent in {agent.state_dir} has no verified model after polling")
    return {
        "state_dir": str(agent.state_dir),
        "installed_version": running[0].version,
        "sha256": running[0].sha256,
        "install_poll": install.model_dump(),
        "unchanged_poll": unchanged.model_dump(),
    }


def run_demo(settings: Settings, manifest_path: Path, model_name: str) -> dict[str, Any]:
    created_keys = ensure_release_keys(settings)
    stack.start(settings)
    pipeline = run_local(settings, pipeline_arguments(settings, manifest_path, model_name), settings.out_dir / "kfp")
    device = device_check(settings, model_name, manifest_path)
    agent = agent_install(settings, model_name)
    manifest = device["manifest"]
    run = tracking.client(settings).get_run(manifest["source_run_id"])
    metrics = run.data.metrics
    summary: dict[str, Any] = {
        "model_name": model_name,
        "dataset_version": manifest["dataset_version"],
        "mlflow_tracking_uri": settings.tracking_uri,
        "mlflow_run_id": run.info.run_id,
        "mlflow_run_url": f"{settings.tracking_uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
        "eager_accuracy": metrics["eager_accuracy"],
        "fp32_accuracy": metrics["fp32_accuracy"],
        "int8_accuracy": metrics["int8_accuracy"],
        "int8_accuracy_drop": metrics["int8_accuracy_drop"],
        "test_windows": manifest["metrics"]["test_windows"],
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
        "device_check": {"sha256_verified": device["sha256_verified"], "predictions": device["predictions"]},
        "pipeline_seconds": pipeline.seconds,
        "stage_seconds": pipeline.stage_seconds,
    }
    out = settings.out_dir / "demo" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    return summary
