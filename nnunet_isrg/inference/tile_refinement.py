"""Full-resolution refinement of a zoomed-out mask, along its border only.

A zoomed-out view sees the whole lesion at ``zoom`` times the voxel size. Its mask is right inside
the lesion and far outside it; what the coarse voxels blur is the border. So the lesion's extent is
cut into a lattice of crop-sized cells, and only the cells the coarse border passes through are
predicted again at full resolution (tiles); the rest keeps the coarse mask, upsampled. A tile costs
an encoding (about 0.1 s for the ``tiny`` preset on a CPU core), so a budget of tiles keeps the
cells that hold the most border.

:class:`LogitCanvas` assembles the lesion's logits on the volume grid from the views, in the order
they are pasted: coarse first, then the tiles (inside the zoomed view only: the lesion's region is
the largest view, so a truncated lesion is cut exactly where it says), then the crop at the clicks,
which has the last word.

Coordinates are voxels of the preprocessed volume, per axis in its own order; boxes are
``[[lo, hi], ...]`` half open.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_isrg.inference.region_preprocessing import FILL_LOGIT
from nnunet_isrg.inference.views import BoxT, View


def border_points(part: np.ndarray, view: View) -> np.ndarray:
    """(N, 3) volume coordinates of the border of ``part``, a (D, H, W) bool mask of ``view``: the point
    half way between each voxel of it and each face neighbour outside it, where the upsampled mask
    changes sign. The view's own faces are no border: beyond them the view saw nothing."""
    points = []
    for ax in range(3):
        lower = part.take(np.arange(part.shape[ax] - 1), axis=ax)
        upper = part.take(np.arange(1, part.shape[ax]), axis=ax)
        idx = np.argwhere(lower != upper).astype(float)
        idx[:, ax] += 0.5
        points.append(idx)
    return view.to_volume(np.concatenate(points)) if points else np.zeros((0, 3))


def border_tiles(part: np.ndarray, view: View, crop_size: Sequence[int], volume_shape: Sequence[int],
                 max_tiles: int | None = None, snap: Sequence[int] | None = None) -> list[BoxT]:
    """Crop boxes to refine the lesion ``part`` (a (D, H, W) bool mask of ``view``) in: the cells of a
    lattice of crop-sized cells laid over the lesion's extent (as few cells as cover it, the lattice
    centred on it and its origin snapped to ``snap`` voxels so that it stays put from click to
    click) that its border passes through. A border point between two volume voxels counts for the
    cells of both. With ``max_tiles``, the cells holding the most border come first and the rest keep
    the coarse mask. Cells outside the volume are left out."""
    points = border_points(part, view)
    if not len(points):
        return []
    crop = np.asarray(crop_size, int)
    idx = np.argwhere(part)
    lo, hi = view.to_volume(idx.min(0) - 0.5), view.to_volume(idx.max(0) + 0.5)
    n_cells = np.maximum(np.ceil((hi - lo) / crop - 1e-6), 1).astype(int)
    step = np.asarray(snap if snap is not None else np.maximum(crop // 8, 1), int)
    origin = (np.round(((lo + hi) / 2 - n_cells * crop / 2) / step) * step).astype(int)
    sides = np.concatenate([(np.floor(points).astype(int) - origin) // crop,
                            (np.ceil(points).astype(int) - origin) // crop])
    cells, counts = np.unique(sides, axis=0, return_counts=True)
    order = sorted(range(len(cells)), key=lambda i: (-counts[i], tuple(cells[i])))
    tiles = []
    for i in order:
        box = tuple((int(a), int(a + c)) for a, c in zip(origin + cells[i] * crop, crop))
        if all(a < n and b > 0 for (a, b), n in zip(box, volume_shape)):
            tiles.append(box)
    return tiles[:max_tiles] if max_tiles is not None else tiles


def upsample_logits(view: View, logits: torch.Tensor) -> torch.Tensor:
    """A view's (D, H, W) logits on the volume voxels of its box (trilinear, the view's grid mapping)."""
    size = [b - a for a, b in view.box]
    if list(logits.shape) == size:
        return logits.float()
    return F.interpolate(logits[None, None].float(), size=size, mode="trilinear", align_corners=False)[0, 0]


class LogitCanvas:
    """Logits of one lesion on the volume voxels of ``box`` (clipped to the volume), FILL_LOGIT where no
    view has spoken; each paste overwrites what was there."""

    def __init__(self, boxes: Sequence[BoxT], volume_shape: Sequence[int]):
        lo = [max(min(b[ax][0] for b in boxes), 0) for ax in range(3)]
        hi = [min(max(b[ax][1] for b in boxes), int(n)) for ax, n in enumerate(volume_shape)]
        self.box: BoxT = tuple((int(a), int(b)) for a, b in zip(lo, hi))
        self.logits = torch.full([b - a for a, b in self.box], FILL_LOGIT, dtype=torch.float32)

    def _overlap(self, box: BoxT):
        """(canvas slices, box slices) of the part of ``box`` on the canvas, or None."""
        dst, src = [], []
        for (a, b), (c0, c1) in zip(box, self.box):
            lo, hi = max(a, c0), min(b, c1)
            if lo >= hi:
                return None
            dst.append(slice(lo - c0, hi - c0))
            src.append(slice(lo - a, hi - a))
        return tuple(dst), tuple(src)

    def paste(self, box: BoxT, logits: torch.Tensor, within: BoxT | None = None) -> None:
        """Puts ``logits`` (the voxels of ``box``) on the canvas, only inside ``within`` when given."""
        if within is not None:
            part = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(box, within))
            if any(a >= b for a, b in part):
                return
            logits = logits[tuple(slice(a - b0, b - b0) for (a, b), (b0, _) in zip(part, box))]
            box = part
        where = self._overlap(box)
        if where is not None:
            self.logits[where[0]] = logits[where[1]].float()

    def read(self, box: BoxT) -> torch.Tensor:
        """The canvas' logits on ``box`` (FILL_LOGIT off the canvas)."""
        out = torch.full([b - a for a, b in box], FILL_LOGIT, dtype=torch.float32)
        where = self._overlap(box)
        if where is not None:
            out[where[1]] = self.logits[where[0]]
        return out


def mask_prompt_from(logits: torch.Tensor, low_res_size: Sequence[int]) -> torch.Tensor:
    """A crop's logits (D, H, W) as the network's mask prompt: (1, 1, *low_res_size), area averaged."""
    return F.adaptive_avg_pool3d(logits[None, None].clamp(FILL_LOGIT, -FILL_LOGIT), tuple(low_res_size))
