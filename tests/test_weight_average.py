"""The moving average of the weights against a hand-computed exponential average."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_isrg.training.weight_average import WeightAverage


def _set(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(-value)


def test_average_follows_the_exponential_recursion_from_the_first_update():
    model = nn.Linear(3, 2)
    _set(model, 10.0)
    average = WeightAverage(model, decay=0.9)
    _set(model, 1.0)
    average.update(model)          # the first update starts the average at the current weights
    _set(model, 3.0)
    average.update(model)          # 0.9 * 1 + 0.1 * 3
    _set(model, 5.0)
    average.update(model)          # 0.9 * 1.2 + 0.1 * 5
    state = average.state_dict()
    torch.testing.assert_close(state["weight"], torch.full((2, 3), 1.58))
    torch.testing.assert_close(state["bias"], torch.full((2,), -1.58))
    assert model.weight[0, 0].item() == 5.0  # the model itself is untouched


def test_swapped_into_holds_the_average_inside_and_restores_the_weights_after():
    model = nn.Linear(3, 2)
    _set(model, 2.0)
    average = WeightAverage(model, decay=0.5)
    average.update(model)
    _set(model, 4.0)
    with average.swapped_into(model) as own:
        assert torch.all(model.weight == 2.0)
        assert torch.all(own["weight"] == 4.0)
    assert torch.all(model.weight == 4.0) and torch.all(model.bias == -4.0)


def test_a_loaded_average_is_continued_not_restarted():
    model = nn.Linear(3, 2)
    _set(model, 0.0)
    average = WeightAverage(model, decay=0.75)
    saved = {k: torch.full_like(v, 8.0) for k, v in model.state_dict().items()}
    average.load_state_dict(saved)
    average.update(model)          # 0.75 * 8 + 0.25 * 0, not a copy of the model's zeros
    torch.testing.assert_close(average.state_dict()["weight"], torch.full((2, 3), 6.0))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        WeightAverage(nn.Linear(1, 1), decay)
