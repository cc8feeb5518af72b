"""The pressure-image track through the same compiled pipeline, on a small real subset.

Three subjects (one per split: every split needs a subject), one short epoch of a narrow
MobileNetV2: the plumbing, not the figures, which `make demo DATASET=pmd` and `make bench` produce.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from edgeops.bench.loso import loso
from edgeops.bench.peer import ET_INT8, PeerConfig
from edgeops.bench.production import peer_bench, production_model
from edgeops.datasets.pmd import POSTURES, labels_for, load_subjects
from edgeops.errors import EdgeopsError, InputError
from edgeops.models.training import mirrored_labels, pressure_map_augmentation
from edgeops.pipeline.arguments import pipeline_arguments
from edgeops.pipeline.demo import http_get
from edgeops.pipeline.local import run_local
from edgeops.runtime import Program
from edgeops.settings import Dataset, PostureTrainConfig, Settings, Strategy
from edgeops.stack import tracking
from edgeops.stages.benchmark import predict_all
from edgeops.stages.ingest import ingest
from edgeops.stages.verify import PATH_METRIC
from tests.conftest import PMD_DATA, say

MODEL = "pmd-posture-test"
LABELS = ["supine", "right", "left"]
POSTURES_17 = [POSTURES[number] for number in sorted(POSTURES)]
SMALL = {
    "EDGEOPS_PMD__DATA__ROOT": str(PMD_DATA),
    "EDGEOPS_PMD__MODEL_NAME": MODEL,
    "EDGEOPS_PMD__DATA__SUBJECTS": '["S1", "S2", "S3"]',
    "EDGEOPS_PMD__DATA__TEST_SUBJECTS": '["S3"]',
    "EDGEOPS_PMD__TRAIN__EPOCHS": "1",
    "EDGEOPS_PMD__TRAIN__TRAIN_STRIDE": "8",
    "EDGEOPS_PMD__TRAIN__WIDTH_MULT": "0.25",
    # The track builds per-tensor PTQ only; QAT is added (through the track's own table) so the batch-norm
    # check below runs through the pipeline too.
    "EDGEOPS_PMD__STRATEGIES": '["ptq_per_tensor", "qat"]',
    "EDGEOPS_QUANTIZE__CALIBRATION_SAMPLES": "64",
    "EDGEOPS_QUANTIZE__QAT_SAMPLES": "64",
    "EDGEOPS_BENCHMARK__LATENCY_RUNS": "50",
    "EDGEOPS_BENCHMARK__WARMUP_RUNS": "5",
    # One short epoch cannot reach the track's accuracy gate; the other gates stay.
    "EDGEOPS_PMD__GATES__MIN_INT8_ACCURACY": "0",
    "EDGEOPS_PMD__GATES__MAX_INT8_ACCURACY_DROP": "1",
    "EDGEOPS_PMD__GATES__MAX_INT8_BYTES_PER_PARAM": "0",
    "EDGEOPS_PMD__GATES__MIN_INT8_SIZE_RATIO": "2",  # a 0.25-wide network carries relatively more overhead
}


@pytest.fixture(scope="module")
def small_pmd(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """The stack's settings on the small subset, with the PMD pipeline run once (tasks read the environment)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SMALL.items():
            patch.setenv(name, value)
        settings = Settings()
        arguments = pipeline_arguments(settings, dataset=Dataset.pmd)
        assert arguments["dataset"] == "pmd" and arguments["model"] == "mobilenet_v2"
        assert arguments["model_name"] == MODEL
        gates = arguments["gates"]
        assert gates["min_int8_size_ratio"] == 2 and gates["max_int8_p95_ms"] == 20.0  # one override
        # As from the Kubeflow UI: only the dataset chosen; model, name and gates come from the pmd track's row.
        say(request, "\nsmall_pmd: running the PMD pipeline on the small subset (a few minutes) …")
        run = run_local(settings, {"dataset": "pmd"}, tmp_path_factory.mktemp("kfp"))
        assert set(run.stage_status.values()) == {"SUCCESS"}
        say(request, f"small_pmd: the PMD pipeline ran in {run.seconds:.0f} s")
        yield settings


def test_pmd_track_runs_through_the_compiled_pipeline(small_pmd: Settings, tmp_path: Path) -> None:
    settings = small_pmd

    manifest = json.loads(http_get(settings.ota_url(f"{MODEL}/latest.json")))
    assert manifest["dataset"] == "pmd"
    assert manifest["labels"] == LABELS
    assert manifest["input"]["shape"] == [1, 1, 64, 32]
    assert "raw pressure-sensor counts" in manifest["input"]["units"]

    run_info = tracking.client(settings).get_run(manifest["source_run_id"])
    params, metrics, tags = run_info.data.params, run_info.data.metrics, run_info.data.tags
    client = tracking.client(settings)
    assert client.get_experiment(run_info.info.experiment_id).name == "pmd-posture"  # the track's own experiment
    card = Path(client.download_artifacts(run_info.info.run_id, "model_card.md", str(tmp_path))).read_text()
    assert card.startswith(f"# {MODEL}\n")
    # No validation subject by default: S1 and S2 both train, and no validation figure is made up.
    assert "train S1, S2; validation none; test S3" in card and "no validation split" in card
    assert "best_val_accuracy" not in metrics and metrics["dataset_val_samples"] == 0
    assert params["train.architecture"] == "mobilenet_v2" and params["train.epochs"] == "1"
    assert tags["dataset"] == "pmd" and tags["int8_sha256"] == manifest["sha256"]
    qat = "QAT (PT2E fake quantization), symmetric int8, per-tensor weights"
    assert manifest["quantization"] in {
        "PTQ, per-tensor weights, symmetric int8",
        qat,
        "pruned to 75% of hidden channels, fine-tuned; PTQ, per-tensor weights, symmetric int8",
    }
    # EDGEOPS_PMD__STRATEGIES, then the pruned network (by settings.quantize.prune_strategy)
    assert params["export.candidates"] == "ptq_per_tensor,qat,pruned_ptq_per_tensor"
    for strategy in ("ptq_per_tensor", "qat", "pruned_ptq_per_tensor"):
        assert f"int8_{strategy}_accuracy" in metrics
        assert f"int8_{strategy}_fake_quant_accuracy" in metrics
        assert f"int8_{strategy}_accuracy_path_aarch64_cortex_a76_qemu" in metrics  # measured as phones compute
    # The pruned network is smaller, and judged (bytes per parameter) by its own parameter count.
    assert metrics["pruned_ptq_per_tensor_size_bytes"] < metrics["ptq_per_tensor_size_bytes"]
    # The release carries the promoted program's accuracy on every kernel path measured, aarch64 among them.
    on_paths = {key: value for key, value in manifest["metrics"].items() if key.startswith(PATH_METRIC)}
    assert PATH_METRIC + "aarch64_cortex_a76_qemu" in on_paths and len(on_paths) >= 2
    assert manifest["metrics"]["int8_accuracy_worst_path"] == min(on_paths.values())
    assert metrics["fp32_size_bytes"] / metrics["int8_size_bytes"] >= 2
    # Batch norm ends up folded into QAT's convolutions; no batch-norm tensor may ship beside them.
    assert metrics["qat_size_bytes"] <= metrics["ptq_per_tensor_size_bytes"] * 1.01
    assert metrics["test_samples"] == manifest["metrics"]["test_samples"] > 1000

    # The published model classifies raw maps of the held-out subject in the ExecuTorch runtime,
    # as well as the benchmark said it would.
    pte = tmp_path / "device.pte"
    pte.write_bytes(http_get(settings.ota_url(manifest["model_key"])))
    data = load_subjects(settings.pmd.data, ["S3"])
    program = Program(pte)
    x = torch.from_numpy(data.frames)
    predicted = predict_all(program, x)
    assert float((predicted == data.labels).mean()) == pytest.approx(metrics["int8_accuracy"], abs=1e-9)


def test_bench_runs_the_promoted_model_under_every_engine_and_logs_the_report(
    small_pmd: Settings, tmp_path: Path
) -> None:
    config = PeerConfig(warmup_runs=2, latency_runs=20, interleaved_rounds=20, load_repeats=1, measure_memory=False)
    result = peer_bench(small_pmd, tmp_path, config, Dataset.pmd, say=lambda _: None)
    production = production_model(small_pmd, MODEL)
    assert production is not None
    tags = tracking.client(small_pmd).get_run(production.run_id).data.tags
    int8 = result.engines[ET_INT8]
    assert int8.file == f"model_int8_{tags['int8_strategy']}.pte"  # the promoted candidate, not another
    assert int8.evaluation.accuracy == pytest.approx(
        tracking.client(small_pmd).get_run(production.run_id).data.metrics["int8_accuracy"], abs=1e-9
    )
    assert set(result.engines) == {"eager", "executorch_fp32", ET_INT8, "ort_fp32", "ort_int8_qint8", "ort_int8_quint8"}
    assert result.test_windows == len(load_subjects(small_pmd.pmd.data, ["S3"]).labels)
    logged = {a.path for a in tracking.client(small_pmd).list_artifacts(production.run_id, "peer")}
    assert {"peer/peer.md", "peer/peer.json", "peer/peer_latency.png", "peer/peer_confusion.png"} <= logged


def test_loso_trains_one_model_per_held_out_subject(small_pmd: Settings, tmp_path: Path) -> None:
    result = loso(small_pmd, tmp_path, ["S1", "S2", "S3"], Strategy.ptq_per_tensor, say=lambda _: None)
    # The recipe keeps its last epoch: no subject is spent on validation, the two others train.
    assert [(f.test_subject, f.val_subject) for f in result.folds] == [("S1", None), ("S2", None), ("S3", None)]
    data = load_subjects(small_pmd.pmd.data, ["S1", "S2", "S3"])
    for fold in result.folds:
        assert fold.test_samples == int((data.subjects == fold.test_subject).sum())
        for accuracy in (fold.int8_accuracy, fold.fp32_accuracy):  # a share of this fold's test maps, not a mean
            correct = accuracy * fold.test_samples
            assert correct == pytest.approx(round(correct), abs=1e-6)
    assert result.mean_int8 == pytest.approx(sum(f.int8_accuracy for f in result.folds) / 3)
    report = (tmp_path / "loso.md").read_text()
    assert f"**{result.mean_fp32:.4f}**" in report and (tmp_path / "loso.png").stat().st_size > 0
    with pytest.raises(EdgeopsError, match=r"at least 2 subjects \(test, training\)"):
        loso(small_pmd, tmp_path, ["S1"], Strategy.ptq_per_tensor, say=lambda _: None)
    choosing = small_pmd.model_copy(deep=True)
    choosing.pmd.train.keep_last_epoch = False
    with pytest.raises(EdgeopsError, match=r"at least 3 subjects \(test, validation, training\)"):
        loso(choosing, tmp_path, ["S1", "S2"], Strategy.ptq_per_tensor, say=lambda _: None)


def test_an_unknown_dataset_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown dataset 'faces' \(datasets: mat, pmd\)"):
        ingest("faces", tmp_path, Settings(), "unused")
    assert not any(tmp_path.iterdir())


def test_augmentation_shifts_with_zero_fill_scales_and_adds_noise_only_on_loaded_cells() -> None:
    frames = torch.zeros(64, 1, 64, 32)
    frames[:, :, 20:40, 10:20] = 1000.0  # a body in the middle of the bed
    targets = torch.zeros(64, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)

    def only(**changes: object) -> PostureTrainConfig:
        still = {"max_shift_rows": 0, "max_shift_cols": 0, "min_scale": 1.0, "max_scale": 1.0, "noise_std": 0.0}
        return PostureTrainConfig.model_validate(still | {"mirror": False, "band_share": 0.0} | changes)

    shifted, same = pressure_map_augmentation(only(max_shift_rows=3, max_shift_cols=2), LABELS)(
        frames, targets, generator
    )
    assert torch.equal(same, targets)
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), frames.sum(dim=(1, 2, 3)))  # nothing wraps or is lost
    assert set(shifted.unique().tolist()) == {0.0, 1000.0}
    rows = [int(torch.nonzero(sample[0].sum(dim=1))[0]) - 20 for sample in shifted]
    cols = [int(torch.nonzero(sample[0].sum(dim=0))[0]) - 10 for sample in shifted]
    assert set(rows) == set(range(-3, 4)) and set(cols) == set(range(-2, 3))

    scaled, _ = pressure_map_augmentation(only(min_scale=0.8, max_scale=1.25), LABELS)(frames, targets, generator)
    assert 800.0 <= float(scaled[:, 0, 30, 15].min()) < float(scaled[:, 0, 30, 15].max()) <= 1250.0

    noisy, _ = pressure_map_augmentation(only(noise_std=20.0), LABELS)(frames, targets, generator)
    assert torch.equal(noisy[frames == 0], frames[frames == 0])  # empty cells stay empty
    assert 15.0 < float((noisy - frames)[frames > 0].std()) < 25.0

    everywhere = torch.full((400, 1, 64, 32), 1000.0)
    banded, same = pressure_map_augmentation(only(band_rows=24, band_share=0.5), LABELS)(
        everywhere, targets.repeat(7)[:400], generator
    )
    empty_rows = (banded[:, 0] == 0).all(dim=2)  # [sample, row]: the whole row reads empty
    covered = empty_rows.any(dim=1)
    assert 150 < int(covered.sum()) < 250  # about half the samples
    assert set(empty_rows[covered].sum(dim=1).tolist()) == {24}  # one band of 24 whole rows, nothing else
    tops = empty_rows[covered].float().argmax(dim=1)
    assert int(tops.min()) == 0 and int(tops.max()) == 64 - 24  # anywhere from head to foot
    assert torch.equal(banded[~covered], everywhere[~covered]) and torch.equal(same, targets.repeat(7)[:400])


def test_mirroring_swaps_right_and_left_with_the_image() -> None:
    assert mirrored_labels(LABELS).tolist() == [0, 2, 1]
    assert mirrored_labels(labels_for("posture17"))[POSTURES_17.index("right_30deg")] == POSTURES_17.index("left_30deg")
    frames = torch.zeros(300, 1, 64, 32)
    frames[:, :, :, :8] = 500.0  # weight on the left-hand columns
    targets = torch.arange(300) % 3
    config = PostureTrainConfig(
        max_shift_rows=0, max_shift_cols=0, min_scale=1.0, max_scale=1.0, noise_std=0.0, band_rows=0
    )
    mirrored, labels = pressure_map_augmentation(config, LABELS)(frames, targets, torch.Generator().manual_seed(0))
    flipped = mirrored[:, 0, 0, -1] > 0
    assert 100 < int(flipped.sum()) < 200  # about half
    assert torch.equal(mirrored[flipped], frames[flipped].flip(-1)) and torch.equal(
        mirrored[~flipped], frames[~flipped]
    )
    assert torch.equal(labels[~flipped], targets[~flipped])
    assert torch.equal(labels[flipped], torch.tensor([0, 2, 1])[targets[flipped]])
