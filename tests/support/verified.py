"""What verify leaves for promote, around a tiny real program and a real MLflow run, without training anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from edgeops.datasets import signature_for
from edgeops.models.nets import ModelSpec
from edgeops.settings import Architecture, Dataset, Settings
from edgeops.stages.verify import Gate, VerifiedModel, gate_limits
from tests.support.releases import tiny_model


def verified_dir(settings: Settings, root: Path, name: str, **changes: Any) -> Path:
    """A verified directory for `name` whose recorded gates sit exactly on the mat track's limits."""
    model = tiny_model(3)
    signature = signature_for(Dataset.mat, settings)
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name("tiny-verified") or client.get_experiment(
        client.create_experiment("tiny-verified")
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id
    root.mkdir(parents=True)
    (root / "model.pte").write_bytes(model.data)
    gates = [Gate(name=n, value=v, limit=v, passed=True) for n, v in gate_limits(settings.mat.gates).items()]
    fields: dict[str, Any] = {
        "spec": ModelSpec(**signature.model_dump(), architecture=Architecture.mat_mlp, input_layout="frames"),
        "dataset_version": "tiny",
        "run_id": run_id,
        "model_name": name,
        "strategy": "ptq_per_tensor",
        "quantization": "test",
        "candidates": [],
        "file": "model.pte",
        "sha256": model.sha256,
        "size_bytes": len(model.data),
        "artifact_path": "model",
        "gates": gates,
        "metrics": {},
        "reference_input": model.reference_input,
        "reference_output": model.reference_output,
    }
    VerifiedModel(**(fields | changes)).save(root)
    return root
