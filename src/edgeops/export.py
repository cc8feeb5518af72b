"""PTQ export: FP32 and INT8 ExecuTorch programs lowered to XNNPACK.

INT8 follows PT2E post-training quantization: export, insert observers with
XNNPACKQuantizer (symmetric, per-channel weights), calibrate on training
windows, convert, lower.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel

from edgeops import tracking
from edgeops.ingest import load_splits
from edgeops.model import ModelSpec
from edgeops.records import StageRecord
from edgeops.settings import Settings
from edgeops.storage import sha256_file
from edgeops.train import load_model

INFO_FILE = "export.json"
ARTIFACT_DIR = "executorch"


class Program(BaseModel):
    """One `.pte` file and what lowering did to it."""

    file: str
    sha256: str
    size_bytes: int
    delegated_ops: int
    non_delegated_ops: int
    artifact_path: str  # inside the MLflow run

    @property
    def delegated_fraction(self) -> float:
        return self.delegated_ops / max(1, self.delegated_ops + self.non_delegated_ops)


class ExportedModels(StageRecord):
    record_file = INFO_FILE
    spec: ModelSpec
    dataset_version: str
    run_id: str
    fp32: Program
    int8: Program
    calibration_windows: int


def lower(exported: torch.export.ExportedProgram, path: Path, artifact_path: str) -> Program:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    delegation = get_delegation_info(edge.exported_program().graph_module)
    path.write_bytes(edge.to_executorch().buffer)
    return Program(
        file=path.name,
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        delegated_ops=delegation.num_delegated_nodes,
        non_delegated_ops=delegation.num_non_delegated_nodes,
        artifact_path=artifact_path,
    )


def quantize(model: torch.nn.Module, example: tuple[torch.Tensor], calibration: torch.Tensor) -> torch.nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        for sample in calibration:
            prepared(sample.unsqueeze(0))
    return convert_pt2e(prepared)


def export(dataset_dir: Path, model_dir: Path, out_dir: Path, settings: Settings) -> ExportedModels:
    trained, model = load_model(model_dir)
    calibration = torch.from_numpy(load_splits(dataset_dir)["train"][0])
    example = (calibration[:1],)
    out_dir.mkdir(parents=True, exist_ok=True)

    fp32 = lower(torch.export.export(model, example), out_dir / "model_fp32.pte", f"{ARTIFACT_DIR}/model_fp32.pte")
    quantized = quantize(model, example, calibration)
    int8 = lower(torch.export.export(quantized, example), out_dir / "model_int8.pte", f"{ARTIFACT_DIR}/model_int8.pte")
    result = ExportedModels(
        spec=trained.spec,
        dataset_version=trained.dataset_version,
        run_id=trained.run_id,
        fp32=fp32,
        int8=int8,
        calibration_windows=len(calibration),
    )

    import mlflow

    with tracking.resume_run(settings, trained.run_id):
        for name, program in (("fp32", fp32), ("int8", int8)):
            mlflow.log_artifact(str(out_dir / program.file), ARTIFACT_DIR)
            mlflow.set_tag(f"{name}_sha256", program.sha256)
            mlflow.log_metrics(
                {
                    f"{name}_size_bytes": program.size_bytes,
                    f"{name}_delegated_ops": program.delegated_ops,
                    f"{name}_non_delegated_ops": program.non_delegated_ops,
                }
            )
        mlflow.log_params(
            {
                "export.quantizer": "XNNPACKQuantizer symmetric per-channel",
                "export.calibration_windows": len(calibration),
            }
        )
        mlflow.log_dict(result.model_dump(mode="json"), f"{ARTIFACT_DIR}/export.json")
    result.save(out_dir)
    return result
