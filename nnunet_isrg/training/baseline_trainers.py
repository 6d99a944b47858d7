"""nnU-Net UNet baselines sized for this project's CPU runs and tests (the "nnUNetTrainer" rows of the tables).

Each is nnU-Net's own ``nnUNetTrainer`` (its plans, UNet, loss, augmentation, sliding-window
validation) with a shorter schedule and, for CPU, a narrower UNet: ``features_per_stage`` of the
plans' architecture is scaled by ``feature_scale`` (topology, patch size and batch size unchanged).
The changed widths are written into the plans the trainer saves next to its checkpoint, so
``nnUNetv2_predict`` rebuilds exactly this network.

Budgets (state them with every number produced by these trainers):

- ``nnUNetTrainer_CPUBudget``: 40 epochs x 10 iterations = 400 iterations, UNet widths x 1/2
  (``[16, 32, 64, 128, 160]`` instead of ``[32, 64, 128, 256, 320]`` on the 64^3 phantom's plans),
  nnU-Net's batch size and patch (batch 2, 64^3 on the 64^3 phantom), 2 validation iterations per
  epoch, everything else nnU-Net's defaults (SGD, poly LR from 1e-2, deep supervision, DA,
  mirroring at test time). Sized for the wall-clock budget of ``ISRGTrainer_Tiny`` (1,800
  iterations at about 0.5 s, about 16 minutes on the project's 2-core CPU): nnU-Net's full-width
  UNet needs about 6 s per iteration there (issue 4), the half-width one roughly 2 s, so 400
  iterations take about 13 minutes. ``scripts/benchmark_phantom.py`` reports the measured
  training time of every trainer next to its results.
- ``nnUNetTrainer_ISRGDebug``: 1 epoch x 2 iterations, widths x 1/4, no mirroring (training and
  test-time): for tests of the comparison pipeline only.

The class names are checked not to exist in nnunetv2 2.8.1 (``nnunetv2/training/nnUNetTrainer``).
"""
from __future__ import annotations

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

__all__ = ["nnUNetTrainer_CPUBudget", "nnUNetTrainer_ISRGDebug"]


class _ScaledUNetTrainer(nnUNetTrainer):
    """nnUNetTrainer with a class-level schedule and a width factor for the plans' UNet."""

    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    checkpoint_every: int | None = None
    feature_scale: float = 1.0
    min_features: int = 4
    disable_mirroring: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs or self.num_epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch or self.num_val_iterations_per_epoch
        self.save_every = self.checkpoint_every or self.save_every
        if self.feature_scale != 1.0:
            self._scale_features(configuration)

    def _scale_features(self, configuration: str) -> None:
        arch = self.configuration_manager.configuration.get("architecture", {})
        kwargs = arch.get("arch_kwargs", {})
        if "features_per_stage" not in kwargs:
            raise RuntimeError(f"{self.__class__.__name__}: configuration '{configuration}' of plans "
                               f"'{self.plans_manager.plans_name}' has no architecture.arch_kwargs.features_per_stage "
                               f"to scale; use nnUNetTrainer with these plans")
        scaled = [max(self.min_features, int(round(f * self.feature_scale))) for f in kwargs["features_per_stage"]]
        # The saved plans.json must describe the trained network (nnUNetv2_predict rebuilds it from there);
        # the configuration manager holds a resolved copy, so both are updated. A configuration that
        # inherits its architecture gets an explicit (scaled) one.
        stored = self.plans_manager.plans["configurations"][configuration]
        for cfg in (self.configuration_manager.configuration, stored):
            new_arch = dict(cfg.get("architecture") or arch)
            new_arch["arch_kwargs"] = dict(new_arch["arch_kwargs"], features_per_stage=scaled)
            cfg["architecture"] = new_arch

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rot, do_dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.disable_mirroring:
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rot, do_dummy_2d, initial_patch_size, mirror_axes


class nnUNetTrainer_CPUBudget(_ScaledUNetTrainer):
    """nnU-Net's UNet at half width, 400 iterations: the CPU baseline with ISRGTrainer_Tiny's wall-clock budget."""

    epochs = 40
    iterations_per_epoch = 10
    val_iterations_per_epoch = 2
    checkpoint_every = 10
    feature_scale = 0.5


class nnUNetTrainer_ISRGDebug(_ScaledUNetTrainer):
    """A few iterations of a quarter-width UNet without mirroring: for tests of the comparison pipeline."""

    epochs = 1
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1
    checkpoint_every = 1
    feature_scale = 0.25
    disable_mirroring = True
