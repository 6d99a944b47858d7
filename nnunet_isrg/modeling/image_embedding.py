"""The image embedding: what ``ISRGModel.encode_image`` computes once per crop and ``decode`` reads per click.

A record of named feature maps, each at its own resolution, so a caller caches one object per crop
and the decoder reads its inputs by name. With a grid of (d, h, w) cells (the crop over the patch
size), the voxel-level maps are at the low-res logits' resolution, 4x the grid: (4d, 4h, 4w).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class ImageEmbedding:
    """Feature maps of a batch of crops; a map is None when the component that needs it is switched off.

    Attributes:
        grid: (B, C, d, h, w) the image encoder's feature grid (C = the prompt/decoder width).
        skip_features: (B, c, 4d, 4h, 4w) the high-resolution skip's features, read by the mask head
            (and by the lesion pooling and the sub-voxel refiner).
        intensities: (B, 1, 4d, 4h, 4w) the crop's intensities averaged over each low-res voxel, read
            by the lesion pooling.
        refiner_features: (B, hidden, 4d, 4h, 4w) the image half of the sub-voxel refiner.
    """

    grid: torch.Tensor
    skip_features: torch.Tensor | None = None
    intensities: torch.Tensor | None = None
    refiner_features: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.grid.shape[0]

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ImageEmbedding:
        """A new record with ``fn`` applied to every map that is present."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if getattr(self, f.name) is not None})

    def detach(self) -> ImageEmbedding:
        """The same maps cut from the autograd graph (for decoding without gradient)."""
        return self.map_tensors(torch.Tensor.detach)

    def to(self, *args: Any, **kwargs: Any) -> ImageEmbedding:
        """Every map moved or cast like ``torch.Tensor.to`` (e.g. ``embedding.to("cuda")``)."""
        return self.map_tensors(lambda t: t.to(*args, **kwargs))
