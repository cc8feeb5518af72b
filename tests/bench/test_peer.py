"""Peer benchmark machinery on a small, briefly trained MobileNetV2 stand-in.

The stand-in is torchvision's MobileNetV2 cut to a few inverted-residual blocks
(lowering the full network takes minutes), with one input channel, 64x32 input of
raw values 0..1000 and three classes that are learnable: each class puts a blob
at its own height. Trained, its INT8 agreement with FP32 means something.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from edgeops.bench import onnx, peer, peer_report
from edgeops.latency import MemoryJob, interleaved, measure, peak_memory, peak_memory_while, ratio
from edgeops.quantize.lowering import lower
from edgeops.quantize.pt2e import ptq
from edgeops.settings import Strategy
from tests.support.allocation import allocating_runner

CLASSES = 3
ROWS, COLS = 64, 32
MAX_VALUE = 1000.0
TRAIN_WINDOWS = 384
TEST_PER_CLASS = 20
CALIBRATION_WINDOWS = 32
TRAIN_STEPS = 40
BATCH = 32
LEARNING_RATE = 1e-2
BLOCKS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s as in torchvision; n=2 gives residual adds
WIDTH = 0.5
SEED = 0
TINY = peer.PeerConfig(
    warmup_runs=5,
    latency_runs=40,
    interleaved_rounds=40,
    load_repeats=2,
    measure_memory=False,  # seconds per engine; test_memory_in_fresh_processes measures two
    memory_runs=5,
    memory_processes=2,
)


def blobs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, 1, 64, 32] raw values: a bright blob at a class-dependent height on a noisy floor."""
    rows, cols = np.mgrid[0:ROWS, 0:COLS]
    images = rng.uniform(0, 0.1, size=(len(labels), 1, ROWS, COLS))
    for (image,), label in zip(images, labels, strict=True):
        centre_row = (label + 1) * ROWS / (CLASSES + 1) + rng.normal(0, 2)
        centre_col = rng.uniform(8, COLS - 8)
        spread = rng.uniform(3, 5)
        image += rng.uniform(0.6, 0.9) * np.exp(-((rows - centre_row) ** 2 + (cols - centre_col) ** 2) / spread**2)
    return (np.clip(images, 0, 1) * MAX_VALUE).astype(np.float32)


def standin() -> torch.nn.Module:
    model = torchvision.models.mobilenet_v2(num_classes=CLASSES, width_mult=WIDTH, inverted_residual_setting=BLOCKS)
    first = model.features[0][0]
    model.features[0][0] = torch.nn.Conv2d(1, first.out_channels, 3, 2, 1, bias=False)
    return model


def make_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    train_y = rng.integers(0, CLASSES, TRAIN_WINDOWS)
    test_y = np.repeat(np.arange(CLASSES), TEST_PER_CLASS)
    return {"train_x": blobs(train_y, rng), "train_y": train_y, "test_x": blobs(test_y, rng), "test_y": test_y}


def train(data: dict[str, np.ndarray]) -> torch.nn.Module:
    torch.manual_seed(SEED)
    net = standin()
    optimiser = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    x, y = torch.from_numpy(data["train_x"]), torch.from_numpy(data["train_y"])
    net.train()
    for step in range(TRAIN_STEPS):
        batch = torch.arange(step * BATCH, (step + 1) * BATCH) % len(x)
        loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    recalibrate_batch_norm(net, x)
    return net.eval()


def recalibrate_batch_norm(net: torch.nn.Module, x: torch.Tensor) -> None:
    """Exact BatchNorm statistics over the training set: after a few dozen steps the
    running averages still remember their initial values."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        for batch in torch.split(x, BATCH * 4):
            net(batch)


def benchmark(model: torch.nn.Module, data: dict[str, np.ndarray], out: Path) -> peer.PeerResult:
    """Lower both ExecuTorch programs as the export stage does, then compare all engines."""
    calibration = data["train_x"][:CALIBRATION_WINDOWS]
    example = torch.from_numpy(calibration[:1])
    fp32 = lower(model, example, out / "model_fp32.pte", "executorch/model_fp32.pte")
    quantized = ptq(model, Strategy.ptq_per_channel, example, torch.from_numpy(calibration))
    int8 = lower(quantized, example, out / "model_int8.pte", "executorch/model_int8.pte")
    return peer.compare(
        model,
        calibration,
        data["test_x"],
        data["test_y"],
        out / fp32.file,
        out / int8.file,
        out / "bench",
        labels=["top", "middle", "bottom"],
        config=TINY,
        lowering={peer.ET_FP32: fp32, peer.ET_INT8: int8},
    )


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return make_data()


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("peer")


@pytest.fixture(scope="module")
def result(data: dict[str, np.ndarray], out: Path) -> peer.PeerResult:
    return benchmark(train(data), data, out)


def test_stand_in_learned_the_task(result: peer.PeerResult) -> None:
    assert result.engines[peer.EAGER].evaluation.accuracy >= 0.9


def test_onnx_fp32_matches_eager(result: peer.PeerResult) -> None:
    onnx = result.engines[peer.ORT_FP32]
    assert onnx.max_abs_logit_diff < 1e-3
    assert onnx.agreement_with_eager == 1.0


def test_int8_variants_run_and_agree_with_fp32(result: peer.PeerResult, data: dict[str, np.ndarray]) -> None:
    for key in (peer.ORT_INT8, peer.ORT_INT8_BEST, peer.ET_INT8):
        engine = result.engines[key]
        assert engine.agreement_with_eager >= 0.9, (key, engine.agreement_with_eager)
        assert engine.evaluation.accuracy >= 0.85, (key, engine.evaluation.accuracy)
    assert sum(map(sum, result.engines[peer.ORT_INT8_BEST].evaluation.confusion)) == len(data["test_y"])


def test_quint8_graph_runs_qlinearconv(result: peer.PeerResult) -> None:
    nodes = result.ort_nodes[peer.ORT_INT8_BEST]
    assert nodes.get("QLinearConv", 0) > 0
    assert nodes.get("Conv", 0) == 0, nodes  # every convolution runs in int8


def test_executorch_programs_are_delegated(result: peer.PeerResult) -> None:
    for key in (peer.ET_FP32, peer.ET_INT8):
        coverage = result.executorch[key]
        assert coverage.delegate_calls.get("XnnpackBackend", 0) >= 1
        assert coverage.delegated_ops is not None and coverage.delegated_ops > 0


def test_latency_memory_and_ratios_are_sane(result: peer.PeerResult) -> None:
    assert set(result.engines) == set(peer.LABELS)
    for engine in result.engines.values():
        assert set(engine.latency) == set(TINY.thread_counts)
        for stats in engine.latency.values():
            assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
            assert len(stats.samples_ms) == TINY.latency_runs
        assert engine.load_ms > 0 and engine.size_bytes > 0
    assert [(p.a, p.b) for p in result.ratios] == list(peer.RATIO_PAIRS)
    for pairing in result.ratios:
        assert pairing.ratio.rounds == TINY.interleaved_rounds
        for value in (pairing.ratio.of_medians, pairing.ratio.median_paired):
            assert math.isfinite(value) and value > 0


def test_memory_in_fresh_processes(result: peer.PeerResult, out: Path) -> None:
    engines = {
        key: peer.Engine(key=key, label=peer.LABELS[key], kind=kind, path=path)
        for key, kind, path in (
            (peer.ET_INT8, "executorch", out / "model_int8.pte"),
            (peer.ORT_INT8_BEST, "onnxruntime", out / "bench" / peer.ONNX_DIR / f"{peer.ORT_INT8_BEST}.onnx"),
        )
    }
    x = make_data()["test_x"][:1]
    memory = peak_memory({key: peer.memory_job(engine, x, TINY) for key, engine in engines.items()}, processes=2)
    for stats in memory.values():
        assert stats.peak_reset and stats.runs == TINY.memory_runs
        assert stats.peak_mib > 0 and stats.import_mib > 0  # each child imports its engine after the baseline


def test_peak_memory_is_what_loading_and_running_hold() -> None:
    mib = 64
    stats = peak_memory_while(MemoryJob(load=partial(allocating_runner, mib), x=None, runs=3))
    assert stats.runs == 3
    assert stats.peak_mib >= mib * 0.95, stats  # the block is counted
    if stats.peak_reset:  # the interpreter and its imports are not
        assert stats.peak_mib < mib + 16, stats


def test_report_and_plots(result: peer.PeerResult, tmp_path: Path) -> None:
    paths = peer_report.write_report(result, tmp_path)
    assert paths[0] == tmp_path / peer_report.REPORT_FILE
    for path in paths:
        assert path.stat().st_size > 0
    for plot in (peer_report.LATENCY_PLOT, peer_report.CONFUSION_PLOT):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
    table = [line for line in (tmp_path / peer_report.REPORT_FILE).read_text().splitlines() if line.startswith("| ")]
    for label in peer.LABELS.values():
        assert sum(line.startswith(f"| {label} |") for line in table) == 1, label
    assert peer.PeerResult.load(tmp_path) == result


class Recorder:
    """A fake runner that only notes that it was called."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def __call__(self, x: object) -> None:
        self.calls.append(self.name)


def test_interleaved_alternates_in_shuffled_rounds() -> None:
    calls: list[str] = []
    names = ("a", "b", "c")
    warmup, rounds = 2, 30
    samples = interleaved({name: Recorder(name, calls) for name in names}, None, warmup, rounds)
    assert len(calls) == len(names) * (warmup + rounds)
    orders = [tuple(calls[i : i + len(names)]) for i in range(0, len(calls), len(names))]
    assert all(sorted(order) == sorted(names) for order in orders)  # each round calls each runner once
    assert len(set(orders)) > 1  # and the order changes
    assert {name: len(values) for name, values in samples.items()} == dict.fromkeys(names, rounds)


def test_ratio_and_measure() -> None:
    paired = ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0])
    assert paired.of_medians == 1.0 and paired.median_paired == 1.0 and paired.rounds == 3
    with pytest.raises(ValueError):
        ratio([1.0], [1.0, 2.0])
    calls: list[str] = []
    stats = measure(Recorder("a", calls), [None, None], warmup=3, runs=10)
    assert len(calls) == 13 and stats.runs == 10 and stats.p50_ms <= stats.p99_ms


def test_evaluate_at_batch_one() -> None:
    def threshold(x: np.ndarray) -> np.ndarray:
        assert x.shape[0] == 1
        return np.array([[0.0, float(x.mean() > 0.5)]])

    x = np.array([0.0, 1.0, 1.0, 0.0], dtype=np.float32).reshape(4, 1, 1, 1)
    evaluation = peer.evaluate(threshold, x, np.array([0, 1, 0, 0]))
    assert evaluation.accuracy == 0.75
    assert evaluation.confusion == [[2, 1], [0, 1]]


def test_calibration_reader_chunks_cover_every_window() -> None:
    assert [onnx.calibration_stride(n) for n in (64, 100, 97, 3)] == [64, 50, 1, 3]
    reader = onnx.CalibrationReader("x", np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1))
    seen = []
    for start in range(0, len(reader), 3):
        reader.set_range(start, start + 3)
        while (feed := reader.get_next()) is not None:
            seen.append(float(feed["x"].item()))
    assert seen == [0, 1, 2, 3, 4, 5]
