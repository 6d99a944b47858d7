"""Intensity windows: the crop seen through several learned display windows, as a radiologist reads CT.

nnU-Net's CT normalisation maps the foreground's whole HU range (here about -340 to 680 HU) to a
few units, so a 35 HU lesion-to-organ contrast arrives as 0.2 units next to 2-3 unit edges of bone,
fat and air. A window (a sigmoid of the intensity around a level, with a width) stretches one
range and flattens the rest; a bank of them hands the first convolutions every soft-tissue contrast
at full scale. Levels and widths are learned (initialised evenly over the normalised soft-tissue to
bone range of nnU-Net's CT normalisation), so they can move to whatever range the data needs.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class IntensityWindows(nn.Module):
    """(B, 1, D, H, W) normalised intensities -> (B, 1 + n_windows, D, H, W): the input followed by
    ``n_windows`` windowed copies in [-1, 1].

    Args:
        n_windows: number of windows.
        levels: (first, last) window level in normalised units; the levels are spread evenly between.
        width: initial window width (normalised units; the sigmoid's scale).
    """

    def __init__(self, n_windows: int, levels: tuple[float, float] = (-1.0, 1.5), width: float = 0.12) -> None:
        super().__init__()
        if n_windows < 1:
            raise ValueError(f"n_windows must be at least 1, got {n_windows}")
        self.out_chans = 1 + int(n_windows)
        self.level = nn.Parameter(torch.linspace(float(levels[0]), float(levels[1]), int(n_windows)))
        self.log_width = nn.Parameter(torch.full((int(n_windows),), math.log(width)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        level = self.level.view(1, -1, 1, 1, 1).to(image.dtype)
        width = self.log_width.exp().view(1, -1, 1, 1, 1).to(image.dtype)
        return torch.cat([image, 2 * torch.sigmoid((image - level) / width) - 1], dim=1)
