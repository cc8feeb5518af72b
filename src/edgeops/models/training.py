"""How a network is fitted: the recipe, augmentation for pressure maps, and the training loop.

The train stage, QAT fine-tuning and leave-one-subject-out all fit networks through `fit`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgeops.datasets.base import DatasetRecord, Splits
from edgeops.errors import InputError
from edgeops.models.nets import MatOccupancyNet, ModelSpec, PostureNet, build_model
from edgeops.settings import Architecture, MatTrack, PmdTrack, PostureTrainConfig, Settings

EVAL_BATCH = 512

Augment = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
OnEpoch = Callable[[int, dict[str, float]], None]


@dataclass
class Recipe:
    """How one network is fitted: the mat MLP and MobileNetV2 differ only in these numbers."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    weight_decay: float = 0.0
    one_cycle: bool = False  # one-cycle learning rate (warm-up, then anneal) instead of a constant one
    label_smoothing: float = 0.0
    train_stride: int = 1  # each epoch trains on every k-th sample, starting one further along each time
    augment: Augment | None = None
    augmentation: dict[str, float | int | bool] = field(default_factory=dict)  # what `augment` does, for the record
    # Train with batch norm on its running statistics (and dropout off): QAT fine-tuning of a converged
    # network, where small augmented batches would otherwise drag the statistics around.
    freeze_norm: bool = False
    # The same for only the last epochs of a run: the weights settle on the statistics the exported
    # model will use instead of on each augmented batch's own, which new subjects otherwise pay for.
    frozen_norm_epochs: int = 0
    # Keep the weights of the last epoch instead of the one with the lowest validation loss. Under a one-cycle
    # schedule the last epoch is the annealed one; the lowest loss on one validation subject is often an epoch
    # at the peak learning rate that new subjects pay for (docs/pmd.md, leave-one-subject-out).
    keep_last_epoch: bool = False

    def params(self) -> dict[str, float | int | str | bool]:
        """The plain settings and the augmentation's, for MLflow and the records (not the augmentation function)."""
        plain = {key: value for key, value in vars(self).items() if isinstance(value, int | float | str | bool)}
        return plain | {f"augment.{key}": value for key, value in self.augmentation.items()}


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy, accuracy) in eval mode."""
    model.eval()
    logits = logits_of(model, x)
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def mirrored_labels(labels: list[str]) -> torch.Tensor:
    """Index of each label's mirror image across the bed's long axis: 'right' <-> 'left', others unchanged."""
    swapped = [label.replace("right", "\0").replace("left", "right").replace("\0", "left") for label in labels]
    return torch.tensor([labels.index(name) if name in labels else i for i, name in enumerate(swapped)])


AUGMENTATION_SETTINGS = {
    "max_shift_rows", "max_shift_cols", "min_scale", "max_scale", "noise_std", "mirror", "band_rows", "band_share"
}  # fmt: skip


def pressure_map_augmentation(config: PostureTrainConfig, labels: list[str]) -> Augment:
    """What a real bed sees: the person a few cells up/down/sideways, heavier or lighter, sensor noise,
    part of the body off the mat (a band of rows reads empty), and lying the other way round (mirrored
    left-right, with 'right' and 'left' postures swapped).

    Shifts fill with zeros (an empty cell reads 0), never wrap around; noise touches loaded cells only.
    """
    mirror = mirrored_labels(labels)

    def augment(
        frames: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, rows, cols = frames.shape
        dr, dc = config.max_shift_rows, config.max_shift_cols
        padded = nn.functional.pad(frames, (dc, dc, dr, dr))
        row0 = torch.randint(0, 2 * dr + 1, (n,), generator=generator).tolist()
        col0 = torch.randint(0, 2 * dc + 1, (n,), generator=generator).tolist()
        shifted = torch.stack(
            [padded[i, :, r : r + rows, c : c + cols] for i, (r, c) in enumerate(zip(row0, col0, strict=True))]
        )
        span = config.max_scale - config.min_scale
        scale = config.min_scale + span * torch.rand(n, 1, 1, 1, generator=generator)
        noise = config.noise_std * torch.randn(shifted.shape, generator=generator)
        augmented = (shifted * scale + noise * (shifted > 0)).clamp_min(0)
        band = min(config.band_rows, rows)
        if band and config.band_share:
            top = torch.randint(0, rows - band + 1, (n, 1, 1, 1), generator=generator)
            covered = torch.rand(n, 1, 1, 1, generator=generator) < config.band_share
            row = torch.arange(rows).view(1, 1, rows, 1)
            augmented = augmented.masked_fill(covered & (row >= top) & (row < top + band), 0.0)
        if not config.mirror:
            return augmented, targets
        flip = torch.rand(n, generator=generator) < 0.5
        augmented[flip] = augmented[flip].flip(-1)
        return augmented, torch.where(flip, mirror[targets], targets)

    return augment


def recipe_for(track: MatTrack | PmdTrack, labels: list[str]) -> Recipe:
    """The track's recipe: MobileNetV2 on pressure maps is augmented and one-cycle scheduled; the mat MLP is not."""
    config = track.train
    if isinstance(config, PostureTrainConfig):
        return Recipe(
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            one_cycle=True,
            label_smoothing=config.label_smoothing,
            train_stride=config.train_stride,
            augment=pressure_map_augmentation(config, labels),
            augmentation=config.model_dump(include=AUGMENTATION_SETTINGS),
            seed=config.seed,
            frozen_norm_epochs=config.frozen_norm_epochs,
            keep_last_epoch=config.keep_last_epoch,
        )
    return Recipe(
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed
    )


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Fresh MobileNetV2 weights produce denormals that slow training several-fold: flush them while training.

    Only while training: the flag is process-wide, and XNNPACK fails to set up quantized programs
    ("Propagating input shapes failed") in a process that flushes denormals.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def prepare_torch(recipe: Recipe, threads: int = 0) -> None:
    """Seeds, determinism and CPU settings before a network is built and trained (`threads` 0: torch's default)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    torch.use_deterministic_algorithms(True)


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    recipe: Recipe,
    on_epoch: OnEpoch | None = None,
) -> tuple[int, float | None, float | None]:
    """Train `model` in place; leave it holding the weights of the epoch with the lowest validation loss,
    or of the last epoch under `recipe.keep_last_epoch`.

    Returns (the kept epoch, its validation loss, its validation accuracy); without validation
    samples, which only the last-epoch rule allows, both are None. Also drives QAT fine-tuning.
    """
    validated = len(y_val) > 0
    if not validated and not recipe.keep_last_epoch:
        raise InputError(
            [
                "choosing the epoch with the lowest validation loss needs a validation split, and it is empty: "
                "name validation subjects, or keep the last epoch"
            ]
        )
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    stride = recipe.train_stride
    steps_per_epoch = max(-(-len(range(phase, len(x_train), stride)) // recipe.batch_size) for phase in range(stride))
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.learning_rate, total_steps=recipe.epochs * steps_per_epoch
        )
        if recipe.one_cycle
        else None
    )
    best: tuple[int, dict[str, float], dict[str, torch.Tensor] | None] | None = None
    for epoch in range(1, recipe.epochs + 1):
        model.train(not (recipe.freeze_norm or epoch > recipe.epochs - recipe.frozen_norm_epochs))
        rows = torch.arange((epoch - 1) % stride, len(x_train), stride)
        order = rows[torch.randperm(len(rows), generator=generator)]
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            inputs, targets = x_train[batch], y_train[batch]
            if recipe.augment is not None:
                inputs, targets = recipe.augment(inputs, targets, generator)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), targets, label_smoothing=recipe.label_smoothing)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(batch)
        metrics = {"train_loss": total / len(rows)}
        if validated:
            metrics["val_loss"], metrics["val_accuracy"] = evaluate(model, x_val, y_val)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if recipe.keep_last_epoch:
            best = (epoch, metrics, None)  # the model holds these weights already
        elif best is None or metrics["val_loss"] < best[1]["val_loss"]:
            best = (epoch, metrics, copy.deepcopy(model.state_dict()))
    assert best is not None
    kept_epoch, kept_metrics, state = best
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    return kept_epoch, kept_metrics.get("val_loss"), kept_metrics.get("val_accuracy")


def training_tensors(splits: Splits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x_train, y_train = (torch.from_numpy(a) for a in splits["train"])
    x_val, y_val = (torch.from_numpy(a) for a in splits["val"])
    return x_train, y_train, x_val, y_val


def model_spec(dataset: DatasetRecord, architecture: Architecture, settings: Settings) -> ModelSpec:
    return ModelSpec(
        architecture=architecture,
        dataset=dataset.dataset,
        labels=dataset.labels,
        input_shape=dataset.input_shape,
        input_units=dataset.input_units,
        input_layout=dataset.input_layout,
        hidden=settings.mat.train.hidden,
        width_mult=settings.pmd.train.width_mult,
        full_scale=settings.pmd.data.max_value,
    )


@dataclass
class Fitted:
    """A network fitted from scratch, holding the weights of its best epoch."""

    model: MatOccupancyNet | PostureNet
    best_epoch: int
    val_loss: float | None  # None: no validation split
    val_accuracy: float | None
    train_samples: int  # seen per epoch


def fit_new_model(
    spec: ModelSpec, splits: Splits, recipe: Recipe, threads: int = 0, on_epoch: OnEpoch | None = None
) -> Fitted:
    """Build a fresh network for `spec`, fit its normalisation and weights on the training split,
    keep the epoch the recipe chooses."""
    prepare_torch(recipe, threads)
    model = build_model(spec)
    x_train, y_train, x_val, y_val = training_tensors(splits)
    model.fit(x_train)
    with denormals_flushed():
        best_epoch, val_loss, val_accuracy = fit(model, x_train, y_train, x_val, y_val, recipe, on_epoch)
    return Fitted(model, best_epoch, val_loss, val_accuracy, len(x_train) // recipe.train_stride)
