"""Learning-rate schedule for the ViT: linear warm-up, then nnU-Net's polynomial decay (as Primus does)."""
from __future__ import annotations

from torch.optim.lr_scheduler import _LRScheduler


class WarmupPolyLRScheduler(_LRScheduler):
    """Stepped once per epoch with the epoch index, like nnU-Net's ``PolyLRScheduler``."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, warmup_steps: int, exponent: float = 0.9):
        self.initial_lr = initial_lr
        self.max_steps = max(1, max_steps)
        self.warmup_steps = max(0, min(warmup_steps, self.max_steps - 1))
        self.exponent = exponent
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.initial_lr * (step + 1) / (self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.initial_lr * (1 - min(progress, 1.0)) ** self.exponent

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)
