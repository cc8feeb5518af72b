"""Which epoch `fit` keeps: the lowest validation loss, or the last one of the schedule."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeops.errors import InputError
from edgeops.models.training import Recipe, fit


@pytest.mark.parametrize("keep_last_epoch", [False, True])
def test_fit_keeps_the_lowest_validation_loss_or_the_last_epoch(keep_last_epoch: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    wrong = 1 - y  # validation labels are the opposite: the better the fit, the worse the validation loss
    model = nn.Linear(4, 2)
    states: list[dict[str, torch.Tensor]] = []
    recipe = Recipe(epochs=4, batch_size=32, learning_rate=0.05, seed=0, keep_last_epoch=keep_last_epoch)
    kept, val_loss, _ = fit(model, x, y, x, wrong, recipe, lambda *_: states.append(copy.deepcopy(model.state_dict())))

    def loss_of(state: dict[str, torch.Tensor]) -> float:
        return nn.functional.cross_entropy(x @ state["weight"].T + state["bias"], wrong).item()

    losses = [loss_of(state) for state in states]
    assert losses == sorted(losses)  # the first epoch has the lowest validation loss
    expected = 4 if keep_last_epoch else 1
    assert kept == expected and val_loss == pytest.approx(losses[expected - 1], rel=1e-5)
    assert all(torch.equal(tensor, states[expected - 1][name]) for name, tensor in model.state_dict().items())
    assert not model.training


def test_fit_without_validation_keeps_the_last_epoch_and_reports_no_validation() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(4, 2)
    seen: list[dict[str, float]] = []
    recipe = Recipe(epochs=3, batch_size=32, learning_rate=0.05, seed=0, keep_last_epoch=True)
    assert fit(model, x, y, x[:0], y[:0], recipe, lambda _, metrics: seen.append(metrics)) == (3, None, None)
    assert [set(metrics) for metrics in seen] == [{"train_loss"}] * 3

    choosing = Recipe(epochs=3, batch_size=32, learning_rate=0.05, seed=0, keep_last_epoch=False)
    untouched = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match="needs a validation split, and it is empty"):
        fit(model, x, y, x[:0], y[:0], choosing)
    assert all(torch.equal(tensor, untouched[name]) for name, tensor in model.state_dict().items())
