"""ONNX Runtime's side of the peer benchmark: export to ONNX, ORT's static INT8 quantization, ORT sessions.

ONNX Runtime is imported only where used, so that a memory-measuring process counts its own engine only.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from edgeops.errors import EdgeopsError

ONNX_OPSET = 18  # the dynamo exporter fails at opset 17 on MobileNetV2
ONNX_FP32_FILE = "model_fp32.onnx"
PREPROCESSED_FILE = "model_fp32_preprocessed.onnx"
OPTIMIZED_SUFFIX = ".optimized.onnx"
CALIBRATION_CHUNK = 64  # ORT folds min/max after at most this many windows, bounding calibration memory
ORT_LOG_ERROR = 3  # session log severity: hide the warning that an optimised graph is hardware-specific
SINGLE_THREAD = 1
ActivationType = Literal["QInt8", "QUInt8"]  # names of onnxruntime.quantization.QuantType members


class CalibrationReader:
    """Feeds ORT's calibration one window at a time, as PT2E calibration in the export stage does.

    `set_range` lets ORT calibrate in chunks (CalibStridedMinMax), folding min/max
    after each, so it never holds every activation of the whole calibration set.
    """

    def __init__(self, input_name: str, calibration: np.ndarray) -> None:
        self.input_name = input_name
        self.calibration = as_input(calibration)
        self.next = 0
        self.end = len(self.calibration)

    def __len__(self) -> int:
        return len(self.calibration)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.next, self.end = start_index, end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.next >= self.end:
            return None
        self.next += 1
        return {self.input_name: self.calibration[self.next - 1 : self.next]}


def calibration_stride(windows: int) -> int:
    """The largest chunk up to CALIBRATION_CHUNK that divides the calibration set, as ORT requires."""
    return max(d for d in range(1, min(windows, CALIBRATION_CHUNK) + 1) if windows % d == 0)


def as_input(x: np.ndarray) -> np.ndarray:
    """A float32 C-ordered copy with ordinary strides: ExecuTorch rejects the zero strides numpy gives
    axes added with np.newaxis."""
    return np.array(x, dtype=np.float32, order="C", copy=True)


def ort_session(path: Path, threads: int, optimized_path: Path | None = None) -> Any:
    """An ONNX Runtime CPU session running one operator at a time on `threads` threads.

    With `optimized_path`, ORT also writes the graph it will run there.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        options.log_severity_level = ORT_LOG_ERROR
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """ONNX through the dynamo exporter, weights inside the file so that its size compares with a `.pte`."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(
            model.eval(), (example,), path, dynamo=True, opset_version=ONNX_OPSET, external_data=False, verbose=False
        )
        onnx.checker.check_model(path)
    except Exception as error:
        raise EdgeopsError(
            f"ONNX export of {type(model).__name__} failed (torch.onnx.export, dynamo=True, opset {ONNX_OPSET}): "
            f"{type(error).__name__}: {error}. Without it there is no ONNX Runtime side to compare; "
            "the ExecuTorch benchmark does not need it."
        ) from error
    return path


def preprocess_onnx(fp32_path: Path, out_path: Path) -> Path:
    """ORT's recommended step before quantization: shape inference and graph optimisation (BN folding etc.)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path))
    return out_path


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    activation_type: ActivationType,
    preprocess: bool = True,
) -> Path:
    """Static QDQ quantization: per-channel int8 weights, min/max-calibrated activations of `activation_type`.

    Pass `preprocess=False` when `fp32_path` already went through `preprocess_onnx`.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        source = preprocess_onnx(fp32_path, Path(scratch) / PREPROCESSED_FILE) if preprocess else fp32_path
        input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
        quantize_static(
            str(source),
            str(out_path),
            CalibrationReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType[activation_type],
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # Not CalibMaxIntermediateOutputs: ORT 1.32 drops each full chunk without folding it in.
            extra_options={"CalibStridedMinMax": calibration_stride(len(calibration))},
        )
    return out_path


def ort_node_types(path: Path, optimized_path: Path) -> dict[str, int]:
    """Operator counts in the graph ORT actually runs, after its optimisations (e.g. Q/DQ fusion)."""
    import onnx

    ort_session(path, SINGLE_THREAD, optimized_path)
    graph = onnx.load(str(optimized_path)).graph
    return dict(Counter(node.op_type for node in graph.node).most_common())
