"""Where a lesion predictor reads the image: full-resolution crops and zoomed-out views of one
preprocessed volume.

Both kinds of volume are nnU-Net's preprocessed grid of one image (the plans' target spacing,
normalised intensities, the plans' transposed axis order, 0 outside the image):

- :class:`ArrayVolume` holds it in memory, as nnU-Net's preprocessing wrote it (the validation,
  ``isrg compare``, the benchmarks);
- :class:`ImageVolume` computes the boxes it is asked for from the original CT on demand
  (:func:`~nnunet_isrg.inference.region_preprocessing.preprocess_box`), so a click on a
  512 x 512 x 300 CT preprocesses a few crops, not the volume (the interactive session).

Boxes are ``[[lo, hi], ...]`` voxels of that grid per axis, half open, and may reach outside it.
A zoomed-out view averages a box down to a smaller shape (area averaging); where the plans do not
resample, both kinds give the same values for the same box.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from nnunet_isrg.inference.region_preprocessing import (Box, RegionGeometry, area_resize, image_grid, preprocess_box,
                                                        zoom_box)


class PreprocessedVolume(Protocol):
    """A preprocessed image the predictor reads crops and zoomed-out views of."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxels of the preprocessed grid per axis."""

    def crop(self, box: Box) -> torch.Tensor:
        """(C, *box size) float32 voxels of ``box`` at full resolution (0 outside the volume)."""

    def zoomed(self, box: Box, out_shape: Sequence[int]) -> torch.Tensor:
        """(C, *out_shape) float32: ``box`` averaged down to ``out_shape``."""


class ArrayVolume:
    """A preprocessed volume held in memory: (C, Z, Y, X) as nnU-Net's preprocessing returns it."""

    def __init__(self, volume: torch.Tensor | np.ndarray):
        volume = torch.as_tensor(np.asarray(volume) if not torch.is_tensor(volume) else volume, dtype=torch.float32)
        if volume.ndim != 4:
            raise ValueError(f"volume must be (C, Z, Y, X), got shape {tuple(volume.shape)}")
        self.data = volume

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[1:])

    def crop(self, box: Box) -> torch.Tensor:
        return crop_and_pad_nd(self.data, [list(map(int, b)) for b in box], 0)

    def zoomed(self, box: Box, out_shape: Sequence[int]) -> torch.Tensor:
        return area_resize(self.crop(box), out_shape)


class ImageVolume:
    """nnU-Net's preprocessed grid of an original CT, computed box by box when asked for.

    Args:
        image_zyx: the original CT (Z, Y, X) in HU.
        spacing_zyx: its spacing in mm, (z, y, x).
        plans_manager, configuration_manager: the model's plans and 3d_fullres configuration.
    """

    def __init__(self, image_zyx: np.ndarray, spacing_zyx: Sequence[float], plans_manager, configuration_manager):
        self.image = image_zyx
        self.plans_manager = plans_manager
        self.configuration_manager = configuration_manager
        self.grid: RegionGeometry = image_grid(image_zyx.shape, spacing_zyx, plans_manager, configuration_manager)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.grid.shape)

    def crop(self, box: Box) -> torch.Tensor:
        return torch.from_numpy(preprocess_box(self.image, self.grid, box, self.plans_manager,
                                               self.configuration_manager))

    def zoomed(self, box: Box, out_shape: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(zoom_box(self.image, self.grid, box, out_shape, self.plans_manager,
                                         self.configuration_manager))
