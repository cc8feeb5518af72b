"""Train: fit the network on the training split, pick the epoch with the best validation loss."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeops import tracking
from edgeops.ingest import DatasetInfo, load_splits
from edgeops.model import MatOccupancyNet, ModelSpec
from edgeops.records import StageRecord
from edgeops.settings import Settings

WEIGHTS_FILE = "model.pt"
INFO_FILE = "model.json"


class TrainedModel(StageRecord):
    record_file = INFO_FILE
    spec: ModelSpec
    dataset_version: str
    run_id: str
    best_epoch: int
    val_accuracy: float
    val_loss: float
    parameters: int


def load_model(directory: Path) -> tuple[TrainedModel, MatOccupancyNet]:
    info = TrainedModel.load(directory)
    model = MatOccupancyNet(info.spec)
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True))
    return info, model.eval()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.inference_mode():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


def model_card(info: TrainedModel, dataset: DatasetInfo, settings: Settings) -> str:
    return f"""# {settings.model_name}

Decides whether a person is on the haptic mat from {info.spec.window} consecutive BLE frames
of its {info.spec.channels} air-chamber pressures.

- **Input**: float32 `{info.spec.input_shape}` = [batch, frame, chamber], raw pressure in Pa,
  oldest frame first. Normalisation is inside the model.
- **Output**: logits `{info.spec.output_shape}` in the order {info.spec.labels}.
- **Data**: dataset `{dataset.version}` from {len(dataset.sources)} recordings; windows per split
  {dataset.windows}; split by time blocks inside each recording (train oldest, test newest).
- **Training**: seed {settings.train.seed}, {settings.train.epochs} epochs, Adam lr {settings.train.learning_rate},
  best epoch {info.best_epoch} by validation loss (val accuracy {info.val_accuracy:.4f}); {info.parameters} parameters.
- **Limits**: trained on one session of one mat and one person. The features cancel the common
  pressure offset weather adds, but new people, mats and postures are untested.
"""


def train(dataset_dir: Path, out_dir: Path, settings: Settings) -> TrainedModel:
    config = settings.train
    dataset = DatasetInfo.load(dataset_dir)
    splits = load_splits(dataset_dir)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    torch.use_deterministic_algorithms(True)

    x_train, y_train = (torch.from_numpy(a) for a in splits["train"])
    x_val, y_val = (torch.from_numpy(a) for a in splits["val"])
    spec = ModelSpec(labels=dataset.labels, window=dataset.window, channels=len(dataset.channels), hidden=config.hidden)
    model = MatOccupancyNet(spec)
    model.features.fit(x_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)

    import mlflow

    best: tuple[float, int, float, dict[str, torch.Tensor]] | None = None
    with tracking.resume_run(settings, dataset.run_id):
        mlflow.log_params({f"train.{key}": value for key, value in config.model_dump().items()})
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(x_train), generator=generator)
            total = 0.0
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            model.eval()
            val_loss, val_accuracy = evaluate(model, x_val, y_val)
            mlflow.log_metrics(
                {"train_loss": total / len(x_train), "val_loss": val_loss, "val_accuracy": val_accuracy},
                step=epoch,
            )
            if best is None or val_loss < best[0]:
                best = (val_loss, epoch, val_accuracy, copy.deepcopy(model.state_dict()))
        assert best is not None
        val_loss, best_epoch, val_accuracy, state = best
        model.load_state_dict(state)
        info = TrainedModel(
            spec=spec,
            dataset_version=dataset.version,
            run_id=dataset.run_id,
            best_epoch=best_epoch,
            val_accuracy=val_accuracy,
            val_loss=val_loss,
            parameters=sum(p.numel() for p in model.parameters()),
        )
        mlflow.log_metrics({"best_epoch": best_epoch, "best_val_accuracy": val_accuracy, "parameters": info.parameters})
        mlflow.log_text(model_card(info, dataset, settings), "model_card.md")

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
    info.save(out_dir)
    return info
