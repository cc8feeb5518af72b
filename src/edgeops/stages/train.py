"""Train: fit the track's network on the training split, keep the epoch its recipe chooses."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgeops import progress
from edgeops.datasets.base import DatasetRecord, load_splits
from edgeops.errors import InputError
from edgeops.models.nets import ModelSpec, build_model
from edgeops.models.training import fit_new_model, model_spec, recipe_for
from edgeops.records import StageRecord
from edgeops.settings import Architecture, Settings, parse_choice
from edgeops.stack import tracking

WEIGHTS_FILE = "model.pt"
INFO_FILE = "model.json"
MODEL_ARTIFACT_DIR = "model"


class TrainedModel(StageRecord):
    record_file = INFO_FILE
    spec: ModelSpec
    dataset_version: str
    run_id: str
    model_name: str = ""
    best_epoch: int
    val_accuracy: float | None  # None: the dataset has no validation split
    val_loss: float | None
    parameters: int
    train_samples: int
    recipe: dict[str, float | int | str | bool]


def load_model(directory: Path) -> tuple[TrainedModel, nn.Module]:
    info = TrainedModel.load(directory)
    model = build_model(info.spec)
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True))
    return info, model.eval()


def model_card(info: TrainedModel, dataset: DatasetRecord) -> str:
    spec = info.spec
    return f"""# {info.model_name}

{dataset.description}

- **Network**: {spec.architecture}, {info.parameters:,} parameters, trained from scratch.
- **Input**: float32 `{spec.input_shape}` {spec.input_layout}; {spec.input_units}.
  Normalisation is inside the model: a device feeds raw readings.
- **Output**: logits `{spec.output_shape}` in the order {spec.labels}.
- **Data**: dataset `{dataset.version}`, samples per split {dataset.samples}; trained on {info.train_samples}.
- **Training**: {info.recipe}; kept epoch {info.best_epoch}, {kept_by(info.recipe)}
  ({validation_summary(info)}).
"""


def kept_by(recipe: dict[str, float | int | str | bool]) -> str:
    return "the last of the schedule" if recipe.get("keep_last_epoch") else "the lowest validation loss"


def validation_summary(info: TrainedModel) -> str:
    if info.val_accuracy is None:
        return "no validation split"
    return f"validation accuracy {info.val_accuracy:.4f}"


def train(
    dataset_dir: Path, out_dir: Path, settings: Settings, architecture: Architecture | str | None = None
) -> TrainedModel:
    """`architecture` defaults to the dataset's track (the track table pairs each dataset with one network)."""
    dataset = DatasetRecord.load(dataset_dir)
    track = settings.track(dataset.dataset)
    chosen = parse_choice(Architecture, architecture) if architecture else track.architecture
    if chosen != track.architecture:
        raise InputError(
            [f"model '{chosen}' does not fit dataset '{dataset.dataset}' (its model is '{track.architecture}')"]
        )
    recipe = recipe_for(track, dataset.labels)
    spec = model_spec(dataset, chosen, settings)

    import mlflow

    recipe_params = recipe.params()
    with tracking.resume_run(settings, dataset.run_id):
        mlflow.log_params({"train.architecture": chosen})
        mlflow.log_params({f"train.{key}": value for key, value in recipe_params.items()})

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            figures = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            progress.report(f"epoch {epoch}/{recipe.epochs}: {figures}", epoch, recipe.epochs)

        fitted = fit_new_model(spec, load_splits(dataset_dir), recipe, track.train.threads, log_epoch)
        info = TrainedModel(
            spec=spec,
            dataset_version=dataset.version,
            run_id=dataset.run_id,
            model_name=dataset.model_name,
            best_epoch=fitted.best_epoch,
            val_accuracy=fitted.val_accuracy,
            val_loss=fitted.val_loss,
            parameters=sum(p.numel() for p in fitted.model.parameters()),
            train_samples=fitted.train_samples,
            recipe=recipe_params,
        )
        kept: dict[str, float] = {"best_epoch": fitted.best_epoch, "parameters": info.parameters}
        if fitted.val_accuracy is not None:
            kept["best_val_accuracy"] = fitted.val_accuracy
        mlflow.log_metrics(kept)
        mlflow.log_text(model_card(info, dataset), "model_card.md")

        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(fitted.model.state_dict(), out_dir / WEIGHTS_FILE)
        info.save(out_dir)
        # The trained weights go with the run: benchmarks later rebuild the eager model from them.
        mlflow.log_artifacts(str(out_dir), MODEL_ARTIFACT_DIR)
    return info
