"""What the network sees of a volume: a view is a box of the preprocessed volume resampled to the
network's crop size, at full resolution (scale 1, a crop) or zoomed out (scale > 1).

Coordinates are voxel indices of the preprocessed volume, per axis in the volume's own order
(``(z, y, x)`` of the preprocessed array, i.e. the plans' transposed axes); boxes are
``[[lo, hi], ...]`` per axis, half open, and may reach outside the volume (padded there). A view
voxel ``j`` covers volume position ``lo + (j + 0.5) * scale - 0.5`` — the mapping of area averaging
and of ``grid_mode`` resampling, so a click keeps its place in every view.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

#: zoom factors tried, in order, when a lesion reaches a face of the view that is not the volume's
#: border; the last one is the largest field of view (4 crops per axis, 64 times the crop's volume)
DEFAULT_ZOOM_FACTORS = (1.5, 2.0, 3.0, 4.0)
AXIS_NAMES = ("z", "y", "x")

BoxT = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def centred_bbox(centre: Sequence[float], size: Sequence[int], volume_shape: Sequence[int]) -> list[list[int]]:
    """A box of ``size`` around ``centre``, shifted to lie inside the volume where it fits (and centred
    on the volume, overhanging both sides, where it does not)."""
    bbox = []
    for c, s, n in zip(centre, size, volume_shape):
        lo = int(round(c - s / 2))
        lo = min(max(lo, 0), n - s) if n >= s else -((s - n) // 2)
        bbox.append([lo, lo + s])
    return bbox


@dataclass(frozen=True)
class View:
    """A box of the volume (volume voxels, half open) seen by the network at ``crop_size``."""

    box: BoxT
    crop_size: tuple[int, int, int]

    @classmethod
    def around(cls, centre: Sequence[float], crop_size: Sequence[int], volume_shape: Sequence[int],
               factor: float = 1.0) -> "View":
        """The view of ``factor`` times the crop (rounded to whole voxels) centred on ``centre``."""
        size = [int(round(c * factor)) for c in crop_size]
        box = centred_bbox(centre, size, volume_shape)
        return cls(tuple((int(a), int(b)) for a, b in box), tuple(int(c) for c in crop_size))

    @property
    def scale(self) -> np.ndarray:
        """Volume voxels per view voxel, per axis (1 for a full-resolution crop)."""
        return np.array([(b - a) / c for (a, b), c in zip(self.box, self.crop_size)], float)

    @property
    def zoom(self) -> float:
        """The view's zoom factor (its largest scale)."""
        return float(self.scale.max())

    @property
    def is_crop(self) -> bool:
        return bool(np.all(self.scale == 1.0))

    @property
    def lo(self) -> np.ndarray:
        return np.array([a for a, _ in self.box], float)

    def to_view(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) volume coordinates -> view coordinates (continuous voxel indices of the crop)."""
        return (np.asarray(points, float) - self.lo + 0.5) / self.scale - 0.5

    def to_volume(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) view coordinates -> volume coordinates."""
        return self.lo + (np.asarray(points, float) + 0.5) * self.scale - 0.5

    def contains(self, points: np.ndarray) -> bool:
        """Whether every (N, 3) volume point lies inside the box."""
        p = np.atleast_2d(np.asarray(points, float))
        lo = self.lo - 0.5
        hi = np.array([b for _, b in self.box], float) - 0.5
        return bool(np.all(p >= lo) and np.all(p <= hi))

    def clipped(self, volume_shape: Sequence[int]) -> BoxT:
        """The box cut to the volume."""
        return tuple((max(a, 0), min(b, int(n))) for (a, b), n in zip(self.box, volume_shape))

    def cut_faces(self, crop_mask: torch.Tensor, volume_shape: Sequence[int]) -> list[str]:
        """Faces of the view that ``crop_mask`` (its (D, H, W) bool mask) touches and that are not the
        volume's border: where the lesion goes on beyond what the view saw. Named ``"z-"``, ``"x+"``...
        after the volume's axes (``-`` the low face)."""
        faces = []
        for ax, ((lo, hi), n) in enumerate(zip(self.box, volume_shape)):
            size = crop_mask.shape[ax]
            if lo > 0 and bool(crop_mask.narrow(ax, 0, 1).any()):
                faces.append(f"{AXIS_NAMES[ax]}-")
            if hi < n and bool(crop_mask.narrow(ax, size - 1, 1).any()):
                faces.append(f"{AXIS_NAMES[ax]}+")
        return faces
