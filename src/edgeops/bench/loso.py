"""`make bench-loso`: leave-one-subject-out on PMD, every subject the test set once; per-subject and mean
accuracy of the FP32 network and its INT8 program. Measures and prints; gates nothing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from edgeops.datasets import pmd
from edgeops.errors import EdgeopsError
from edgeops.models.training import fit_new_model, logits_of, model_spec, recipe_for
from edgeops.quantize.lowering import lower
from edgeops.quantize.pt2e import quantize
from edgeops.records import StageRecord
from edgeops.runtime import Program
from edgeops.settings import Settings, Strategy
from edgeops.stack import tracking
from edgeops.stages.benchmark import predict_all

LOSO_FILE = "loso.json"
LOSO_REPORT = "loso.md"
LOSO_PLOT = "loso.png"

Say = Callable[[str], None]


class LosoFold(BaseModel):
    test_subject: str
    val_subject: str | None  # None: the recipe keeps its last epoch, so every other subject trains
    train_samples: int
    test_samples: int
    best_epoch: int
    fp32_accuracy: float  # eager PyTorch
    int8_accuracy: float  # the INT8 ExecuTorch program, through the runtime
    seconds: float


class LosoResult(StageRecord):
    record_file = LOSO_FILE
    dataset: str
    label_set: str
    strategy: Strategy
    recipe: dict[str, float | int | str | bool]
    folds: list[LosoFold]

    @property
    def mean_fp32(self) -> float:
        return float(np.mean([fold.fp32_accuracy for fold in self.folds]))

    @property
    def mean_int8(self) -> float:
        return float(np.mean([fold.int8_accuracy for fold in self.folds]))


def loso_fold(
    data: pmd.PmdData, subject: str, val_subject: str | None, settings: Settings, strategy: Strategy, work: Path
) -> LosoFold:
    """Train on every other subject (but `val_subject`, which picks the epoch), test FP32 and INT8 on `subject`."""
    started = time.perf_counter()
    splits, split_subjects = pmd.split_by_subject(data, [subject], [val_subject] if val_subject else [])
    track = settings.pmd
    record = pmd.dataset_info(data, splits, split_subjects, 0, track.data.experiment, track.data.max_value)
    spec = model_spec(record, track.architecture, settings)
    recipe = recipe_for(track, spec.labels)
    fitted = fit_new_model(spec, splits, recipe, track.train.threads)
    x_test, y_test = splits["test"]
    x = torch.from_numpy(x_test)
    fp32_accuracy = float((logits_of(fitted.model, x).argmax(dim=1).numpy() == y_test).mean())

    quantized = quantize(fitted.model, strategy, splits, recipe, settings.quantize)
    path = work / f"{subject}_int8.pte"
    lower(quantized, x[:1], path, path.name)
    int8_accuracy = float((predict_all(Program(path), x) == y_test).mean())
    return LosoFold(
        test_subject=subject,
        val_subject=val_subject,
        train_samples=fitted.train_samples,
        test_samples=len(y_test),
        best_epoch=fitted.best_epoch,
        fp32_accuracy=fp32_accuracy,
        int8_accuracy=int8_accuracy,
        seconds=time.perf_counter() - started,
    )


def render_loso(result: LosoResult) -> str:
    lines = [
        f"# Leave-one-subject-out: PMD {result.dataset}, {result.label_set}",
        "",
        f"Each subject is the test set once; {fold_rule(result)}. "
        f"FP32 is eager PyTorch; INT8 is the {result.strategy} ExecuTorch program run by the runtime.",
        "",
        "| test subject | val subject | train samples | test samples | kept epoch | FP32 | INT8 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {f.test_subject} | {f.val_subject or '-'} | {f.train_samples} | {f.test_samples} | {f.best_epoch} | "
        f"{f.fp32_accuracy:.4f} | {f.int8_accuracy:.4f} | {f.seconds:.0f} |"
        for f in result.folds
    ]
    lines += [
        f"| **mean** | | | | | **{result.mean_fp32:.4f}** | **{result.mean_int8:.4f}** | |",
        "",
        f"Recipe: {result.recipe}",
    ]
    return "\n".join(lines) + "\n"


def fold_rule(result: LosoResult) -> str:
    if any(fold.val_subject for fold in result.folds):
        return "the next subject validates (it chooses the epoch), the rest train"
    return "all the others train (the recipe keeps its last epoch, so nothing is left to validate)"


def plot_loso(result: LosoResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = [fold.test_subject for fold in result.folds]
    positions = np.arange(len(subjects))
    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.bar(positions - 0.2, [f.fp32_accuracy for f in result.folds], 0.4, label="FP32 (eager)")
    axes.bar(positions + 0.2, [f.int8_accuracy for f in result.folds], 0.4, label=f"INT8 ({result.strategy})")
    axes.axhline(
        result.mean_int8, linestyle="--", linewidth=1, color="black", label=f"mean INT8 {result.mean_int8:.3f}"
    )
    axes.set_xticks(positions, subjects)
    axes.set_ylim(min(0.5, min(f.int8_accuracy for f in result.folds) - 0.05), 1.0)
    axes.set_ylabel("accuracy on the held-out subject")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def loso(
    settings: Settings,
    out_dir: Path,
    subjects: list[str] | None = None,
    strategy: Strategy | None = None,
    say: Say = print,
) -> LosoResult:
    """`strategy` defaults to the one the PMD track builds first (its promoted kind of program)."""
    track = settings.pmd
    if strategy is None and not track.strategies:
        raise EdgeopsError("the PMD track builds no INT8 strategy (EDGEOPS_PMD__STRATEGIES): name one with --strategy")
    strategy = strategy or track.strategies[0]
    config = track.data
    chosen = subjects or config.subjects
    recipe = recipe_for(track, pmd.labels_for(config.label_set))
    validated = not recipe.keep_last_epoch  # a validation subject only where it chooses the epoch
    needed = ["test", "validation", "training"] if validated else ["test", "training"]
    if len(chosen) < len(needed):
        raise EdgeopsError(f"leave-one-subject-out needs at least {len(needed)} subjects ({', '.join(needed)})")
    data = pmd.load_subjects(config, chosen)
    # Every quantize setting, not a chosen few: a list kept by hand left calibration out once.
    quantize_settings = settings.quantize.model_dump(mode="json")
    recipe_params = recipe.params() | {f"quantize.{key}": value for key, value in quantize_settings.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    folds: list[LosoFold] = []
    with tempfile.TemporaryDirectory() as work:
        for index, subject in enumerate(chosen):
            val_subject = chosen[(index + 1) % len(chosen)] if validated else None
            say(f"fold {index + 1}/{len(chosen)}: test {subject}, validation {val_subject or 'none'}")
            fold = loso_fold(data, subject, val_subject, settings, strategy, Path(work))
            folds.append(fold)
            result = LosoResult(
                dataset=config.experiment,
                label_set=config.label_set,
                strategy=strategy,
                recipe=recipe_params,
                folds=folds,
            )
            result.save(out_dir)  # a long run interrupted keeps its finished folds
            say(f"  FP32 {fold.fp32_accuracy:.4f}  INT8 {fold.int8_accuracy:.4f}  ({fold.seconds:.0f} s)")
    (out_dir / LOSO_REPORT).write_text(render_loso(result))
    plot_loso(result, out_dir / LOSO_PLOT)

    import mlflow

    with tracking.start_run(settings, track.experiment, run_name=f"{track.model_name}-loso"):
        mlflow.set_tags({"dataset": "pmd", "benchmark": "leave-one-subject-out"})
        mlflow.log_params({f"loso.{key}": value for key, value in recipe_params.items()} | {"loso.strategy": strategy})
        for fold in folds:
            mlflow.log_metrics(
                {
                    f"loso_{fold.test_subject}_fp32_accuracy": fold.fp32_accuracy,
                    f"loso_{fold.test_subject}_int8_accuracy": fold.int8_accuracy,
                }
            )
        mlflow.log_metrics({"loso_mean_fp32_accuracy": result.mean_fp32, "loso_mean_int8_accuracy": result.mean_int8})
        for name in (LOSO_FILE, LOSO_REPORT, LOSO_PLOT):
            mlflow.log_artifact(str(out_dir / name), "loso")
    return result
