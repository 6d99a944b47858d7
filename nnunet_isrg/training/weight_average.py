"""Exponential moving average of the network's weights, the model that validation and inference use.

A short CPU schedule leaves the raw weights noisy: between two checkpoints 200 iterations apart the
first-click Dice of single validation cases swings by up to 0.6 while the predicted blob grows and
shrinks. The average over the last ~1/(1 - decay) steps does not swing
(``python scripts/experiments/quick_fold_fit.py --iterations 1000 --every 200 --ema 0.99``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """``averaged = decay * averaged + (1 - decay) * weights`` after every optimiser step.

    Args:
        model: the bare network (not wrapped by DDP or torch.compile); it is copied once.
        decay: in (0, 1); the average spans about ``1 / (1 - decay)`` steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight average decay must be in (0, 1), got {decay!r}")
        self._averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)

    def update(self, model: nn.Module) -> None:
        self._averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, with the keys of the model's own ``state_dict``."""
        return self._averaged.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._averaged.module.load_state_dict(state)
        # AveragedModel copies the weights on its first update; a loaded average must be kept
        self._averaged.n_averaged.fill_(max(1, int(self._averaged.n_averaged)))

    @contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """Inside the block ``model`` holds the averaged weights; yields a copy of its own weights,
        which it holds again after the block."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state_dict())
        try:
            yield own
        finally:
            model.load_state_dict(own)
