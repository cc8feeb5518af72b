"""Export: the FP32 ExecuTorch program and the INT8 candidates, lowered to XNNPACK.

One candidate per quantization strategy, plus (for MobileNetV2) a channel-pruned network quantized by
`settings.quantize.prune_strategy`. Each program is built in its own worker process, so the candidates
lower in parallel. Verify later promotes the smallest, fastest candidate that passes the gates.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import torch

from edgeops import progress
from edgeops.datasets.base import DatasetRecord, Splits, load_splits
from edgeops.errors import InputError
from edgeops.models.nets import ModelSpec, PostureNet
from edgeops.models.pruning import parameter_count, prune_posture_net
from edgeops.models.training import Recipe, denormals_flushed, fit, recipe_for, training_tensors
from edgeops.quantize.lowering import FP32_LOWERING_TOLERANCE, LoweredProgram, check_lowering, lower
from edgeops.quantize.pt2e import STRATEGY_DESCRIPTIONS, evenly_spaced, quantize, save_reference
from edgeops.records import StageRecord
from edgeops.settings import Architecture, QuantizeConfig, Settings, Strategy, TrackConfig
from edgeops.stack import tracking
from edgeops.stages.train import TrainedModel, load_model

INFO_FILE = "export.json"
ARTIFACT_DIR = "executorch"
LOWERING_CHECK_SAMPLES = 16
FP32 = "fp32"
PRUNED_PREFIX = "pruned_"


class Candidate(LoweredProgram):
    """An INT8 program built by one strategy, from the trained network or a pruned copy of it."""

    strategy: Strategy
    description: str
    parameters: int  # of the network this program computes (fewer when pruned)
    pruned_keep: float = 1.0  # share of hidden channels kept
    reference_file: str = ""  # the quantized graph as a torch.export program: what the `.pte` should compute


class ExportedModels(StageRecord):
    record_file = INFO_FILE
    spec: ModelSpec
    dataset_version: str
    run_id: str
    model_name: str = ""
    parameters: int
    fp32: LoweredProgram
    candidates: dict[str, Candidate]  # candidate name (a strategy, or pruned_<strategy>) -> INT8 program
    calibration_samples: int


def candidate_names(track: TrackConfig, config: QuantizeConfig) -> list[str]:
    """The INT8 programs export builds for a track, by name; the pruned one only for MobileNetV2."""
    names = [str(strategy) for strategy in dict.fromkeys(track.strategies)]
    if config.prune_keep and track.architecture == Architecture.mobilenet_v2:
        names.append(PRUNED_PREFIX + config.prune_strategy)
    return names


def program_file(name: str) -> str:
    return "model_fp32.pte" if name == FP32 else f"model_int8_{name}.pte"


def build_program(name: str, dataset_dir: Path, model_dir: Path, out_dir: Path, settings: Settings) -> LoweredProgram:
    """Build one program (FP32 or an INT8 candidate) in this process; a worker's whole job."""
    started = time.perf_counter()
    trained, model = load_model(model_dir)
    splits = load_splits(dataset_dir)
    x_train = splits["train"][0]
    example = torch.from_numpy(x_train[:1])
    file = program_file(name)
    if name == FP32:
        program = lower(model, example, out_dir / file, f"{ARTIFACT_DIR}/{file}")
        samples = torch.from_numpy(x_train[evenly_spaced(len(x_train), LOWERING_CHECK_SAMPLES)])
        check_lowering(out_dir / file, model.eval(), samples, FP32_LOWERING_TOLERANCE)
        program.seconds = time.perf_counter() - started
        return program

    config = settings.quantize
    recipe = recipe_for(settings.track(trained.spec.dataset), trained.spec.labels)
    strategy = Strategy(name.removeprefix(PRUNED_PREFIX))
    description = STRATEGY_DESCRIPTIONS[strategy]
    if strategy == Strategy.qat:
        description += f", {'per-channel' if config.qat_per_channel else 'per-tensor'} weights"
    if strategy != Strategy.ptq_per_channel and config.depthwise_per_channel:
        description += " (per-channel depthwise)"
    keep = 1.0
    if name.startswith(PRUNED_PREFIX):
        assert isinstance(model, PostureNet), "candidate_names prunes MobileNetV2 only"
        keep = config.prune_keep
        model = pruned_and_fine_tuned(model, keep, splits, recipe, config)
        description = f"pruned to {keep:.0%} of hidden channels, fine-tuned; " + description
    quantized = quantize(model, strategy, splits, recipe, config)
    reference = file.removesuffix(".pte") + ".pt2"
    program = lower(quantized, example, out_dir / file, f"{ARTIFACT_DIR}/{file}")
    save_reference(quantized, example, out_dir / reference)
    program.seconds = time.perf_counter() - started
    return Candidate(
        **program.model_dump(),
        strategy=strategy,
        description=description,
        parameters=parameter_count(model),
        pruned_keep=keep,
        reference_file=reference,
    )


def pruned_and_fine_tuned(
    model: PostureNet, keep: float, splits: Splits, recipe: Recipe, config: QuantizeConfig
) -> PostureNet:
    """A copy of `model` with `keep` of each block's hidden channels, fine-tuned in FP32 to recover."""
    pruned = prune_posture_net(model, keep)
    tuning = replace(
        recipe,
        epochs=config.prune_epochs,
        learning_rate=config.prune_learning_rate,
        one_cycle=True,
        freeze_norm=False,
        frozen_norm_epochs=config.prune_epochs // 2,
    )
    with denormals_flushed():
        fit(pruned, *training_tensors(splits), tuning)
    return pruned


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def export(dataset_dir: Path, model_dir: Path, out_dir: Path, settings: Settings) -> ExportedModels:
    config = settings.quantize
    trained = TrainedModel.load(model_dir)
    track = settings.track(trained.spec.dataset)
    if not track.strategies:
        raise InputError([f"settings.{trained.spec.dataset}.strategies is empty: no INT8 candidate to export"])
    names = [FP32, *candidate_names(track, config)]
    out_dir.mkdir(parents=True, exist_ok=True)

    cores = os.cpu_count() or 1
    workers = min(len(names), config.workers or cores)
    # Longest first: QAT and the pruned candidate fine-tune, the others only calibrate.
    order = sorted(names, key=lambda name: (name.startswith(PRUNED_PREFIX), Strategy.qat in name), reverse=True)
    progress.report(f"lowering {len(names)} programs in {workers} worker processes: {', '.join(order)}", 0, len(names))
    programs: dict[str, LoweredProgram] = {}
    # spawn, not fork: torch's thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    threads = max(1, cores // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(build_program, name, dataset_dir, model_dir, out_dir, settings): name for name in order}
        for future in as_completed(futures):
            name = futures[future]
            programs[name] = program = future.result()
            progress.report(
                f"{name}: {program.size_bytes:,} bytes in {program.seconds:.1f} s", len(programs), len(names)
            )

    candidates = {name: program for name, program in programs.items() if isinstance(program, Candidate)}
    calibration = config.calibration_count(DatasetRecord.load(dataset_dir).samples["train"])
    result = ExportedModels(
        spec=trained.spec,
        dataset_version=trained.dataset_version,
        run_id=trained.run_id,
        model_name=trained.model_name,
        parameters=trained.parameters,
        fp32=programs[FP32],
        candidates={name: candidates[name] for name in names if name in candidates},
        calibration_samples=calibration,
    )

    import mlflow

    with tracking.resume_run(settings, trained.run_id):
        for name, program in (("fp32", result.fp32), *result.candidates.items()):
            mlflow.log_artifact(str(out_dir / program.file), ARTIFACT_DIR)
            mlflow.set_tag(f"{name}_sha256", program.sha256)
            mlflow.log_metrics(
                {
                    f"{name}_size_bytes": program.size_bytes,
                    f"{name}_delegated_ops": program.delegated_ops,
                    f"{name}_non_delegated_ops": program.non_delegated_ops,
                    f"{name}_export_seconds": program.seconds,
                }
            )
        for candidate in result.candidates.values():
            mlflow.log_artifact(str(out_dir / candidate.reference_file), ARTIFACT_DIR)
        mlflow.log_params(
            {
                "export.quantizer": "XNNPACKQuantizer symmetric",
                "export.candidates": ",".join(result.candidates),
                "export.depthwise_per_channel": config.depthwise_per_channel,
                "export.calibration_samples": result.calibration_samples,
                "export.qat_epochs": config.qat_epochs,
                "export.qat_samples": config.qat_samples,
                "export.qat_learning_rate": config.qat_learning_rate,
                "export.qat_one_cycle": config.qat_one_cycle,
                "export.qat_freeze_norm": config.qat_freeze_norm,
                "export.prune_keep": config.prune_keep,
                "export.prune_epochs": config.prune_epochs,
            }
        )
        mlflow.log_dict(result.model_dump(mode="json"), f"{ARTIFACT_DIR}/export.json")
    result.save(out_dir)
    return result
