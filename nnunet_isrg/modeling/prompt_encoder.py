"""Prompt encoder E_P: random-Fourier positional encoding of 3D clicks and box corners, label
embeddings, dense mask prompt and region maps (box, scribbles and lassos).

Point labels: 1 positive click, 0 negative click, -1 padding, and SAM's 2 and 3 for the two corners
of a box (the corner with the lower and the higher coordinates).

Coordinate convention: points are continuous voxel coordinates of the crop in (z, y, x) order, with
voxel ``i`` centred at ``i`` (so a crop axis of size S spans [-0.5, S - 0.5]). They are normalised to
[0, 1] as ``(p + 0.5) / S`` before the Fourier features. Grid cell ``g`` of a feature grid with ``n``
cells on that axis is centred at normalised ``(g + 0.5) / n``, the same place in the crop, so the
dense image PE and the click PE agree.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .common import Conv3d, LayerNorm3d, zero_conv

#: point labels of a box's two corners (SAM's convention): the lower and the higher corner
from nnunet_isrg.prompts import BOX_HIGH, BOX_LOW  # noqa: F401  (the model's corner labels)
#: region maps beside the mask prompt and the click maps: inside the box, positive and negative
#: scribble/lasso voxels
REGION_CHANNELS = 3


class PositionEmbeddingRandom3D(nn.Module):
    """Positional encoding with random spatial frequencies (SAM's PositionEmbeddingRandom, 3D)."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        # A fixed generator keeps the (non-learned) frequencies identical across processes and builds.
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("gaussian_matrix", scale * torch.randn(3, num_pos_feats, generator=g))

    def encode(self, coords01: torch.Tensor) -> torch.Tensor:
        """coords01 (..., 3) in [0, 1] -> (..., 2 * num_pos_feats)."""
        c = (2 * coords01 - 1) @ self.gaussian_matrix.to(coords01.dtype)
        c = 2 * math.pi * c
        return torch.cat([torch.sin(c), torch.cos(c)], dim=-1)

    def dense(self, grid_size: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
        """PE of every cell centre of a (d, h, w) grid -> (C, d, h, w)."""
        axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n for n in grid_size]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        return self.encode(grid).permute(3, 0, 1, 2)

    def points(self, points: torch.Tensor, crop_size: Sequence[int]) -> torch.Tensor:
        """points (B, N, 3) voxel coordinates (z, y, x) -> (B, N, C)."""
        size = torch.as_tensor(crop_size, dtype=points.dtype, device=points.device)
        return self.encode((points + 0.5) / size)


class PromptEncoder3D(nn.Module):
    """Sparse (click) and dense (previous mask) prompt embeddings.

    - Each click token is its Fourier PE plus a learned label embedding (0 negative, 1 positive).
      Padding clicks (label -1) are returned with ``valid=False``; the transformer masks them out of
      every attention, so they have no influence at all (a batch may pad its click lists freely).
    - One learned not-a-point token is always appended (SAM's padding point): it is what the decoder
      sees as prompt when every click is padding (the learned "no click" case) and keeps the sparse
      key set non-empty.
    - Dense prompt: the previous low-res logits, a presence channel and two click maps (a Gaussian
      blob of ``click_sigma`` low-res voxels around each positive / negative click) go through two
      strided convs (4x down, to the feature grid). The click maps tell every image token how far
      it is from each click, which the sparse tokens only convey through attention; with few
      training iterations this grounding is what lets the mask follow the clicks. Without a mask
      prompt the mask channels are zero, so both paths use the same parameters and DDP never sees
      an unused one.
    - Box corners (labels 2 and 3) are tokens like clicks, with their own two learned embeddings
      (SAM's), and the box is also a region map: 1 in the low-res cells the box covers.
    - Region maps (B, 3, 4d, 4h, 4w): the box, and positive / negative scribble and lasso voxels (the
      cells holding any), each a branch added to the first dense layer (:func:`zero_conv`).
    """

    def __init__(self, embed_dim: int, grid_size: Sequence[int], crop_size: Sequence[int],
                 mask_in_chans: int = 16, click_sigma: float = 1.5) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"prompt embedding width must be even for sin/cos features, got {embed_dim}")
        self.embed_dim = embed_dim
        self.grid_size = tuple(grid_size)
        self.crop_size = tuple(crop_size)
        self.mask_input_size = tuple(4 * g for g in self.grid_size)
        self.click_sigma = float(click_sigma)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 2)
        self.point_embeddings = nn.Embedding(2, embed_dim)  # row 0 negative, row 1 positive
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            Conv3d(4, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        # after every layer above, and from a generator of their own: see zero_conv
        corners = torch.randn(2, embed_dim, generator=torch.Generator().manual_seed(BOX_LOW))
        self.box_corner_embeddings = nn.Embedding(2, embed_dim, _weight=corners)
        self.region_downscaling = zero_conv(REGION_CHANNELS, mask_in_chans // 4, kernel_size=2, stride=2)

    def get_dense_pe(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """(1, C, d, h, w) positional encoding of the image embedding grid."""
        return self.pe_layer.dense(self.grid_size, device=device, dtype=dtype)[None]

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3), labels (B, N) -> tokens (B, N + 1, C) and valid (B, N + 1) bool."""
        b = points.shape[0]
        valid = labels >= 0
        is_corner = (labels >= BOX_LOW)[..., None]
        label_emb = torch.where(is_corner, self.box_corner_embeddings((labels - BOX_LOW).clamp(0, 1)),
                                self.point_embeddings(labels.clamp(0, 1)))
        emb = self.pe_layer.points(points, self.crop_size) + label_emb
        emb = torch.where(valid[..., None], emb, torch.zeros_like(emb))
        nap = self.not_a_point_embed.weight[None].expand(b, -1, -1).to(emb.dtype)
        tokens = torch.cat([emb, nap], dim=1)
        return tokens, torch.cat([valid, valid.new_ones(b, 1)], dim=1)

    def click_maps(self, points: torch.Tensor, labels: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """points (B, N, 3) crop voxels (z, y, x), labels (B, N) -> (B, 2, 4d, 4h, 4w) positive/negative blobs."""
        return gaussian_click_maps(points, labels, self.crop_size, self.mask_input_size, self.click_sigma, dtype)

    def region_maps(self, points: torch.Tensor, labels: torch.Tensor, scribbles: torch.Tensor | None = None,
                    dtype=torch.float32) -> torch.Tensor:
        """(B, 3, 4d, 4h, 4w): the box of the corner points (labels 2 and 3; none: zeros) and the
        positive / negative ``scribbles`` (B, 2, D, H, W) crop voxels (None: zeros), each cell 1 where
        any voxel of it is covered."""
        return region_maps(points, labels, scribbles, self.crop_size, self.mask_input_size, dtype)

    def dense_embedding(self, dense_input: torch.Tensor, regions: torch.Tensor | None) -> torch.Tensor:
        """The dense prompt (B, C, d, h, w) added to the image embedding, from :meth:`dense_input` and
        :meth:`region_maps` (None: no box or stroke, the region branch adds nothing)."""
        x = self.mask_downscaling[0](dense_input)
        if regions is not None:
            x = x + self.region_downscaling(regions.to(dense_input.dtype))
        return self.mask_downscaling[1:](x)

    def dense_input(self, mask_prompt: torch.Tensor | None, batch_size: int, dtype=torch.float32, device=None,
                    click_maps: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 4, 4d, 4h, 4w): previous logits, their presence, positive and negative click maps.

        ``mask_downscaling`` turns it into the dense prompt added to the image embedding.
        """
        if mask_prompt is None:
            mask = torch.zeros(batch_size, 2, *self.mask_input_size, device=device, dtype=dtype)
        else:
            mask = torch.cat([mask_prompt.to(dtype), torch.ones_like(mask_prompt, dtype=dtype)], dim=1)
        if click_maps is None:
            click_maps = torch.zeros(batch_size, 2, *self.mask_input_size, device=device, dtype=dtype)
        return torch.cat([mask, click_maps.to(dtype)], dim=1)


def gaussian_click_maps(points: torch.Tensor, labels: torch.Tensor, crop_size: Sequence[int],
                        map_size: Sequence[int], sigma: float, dtype=torch.float32) -> torch.Tensor:
    """Positive and negative click maps: (B, 2, *map_size), a Gaussian blob (peak 1, ``sigma`` in map
    voxels) at each click, the maximum over the clicks of each label; padding (label -1) adds none.

    ``points`` (B, N, 3) are voxel coordinates (z, y, x) of a crop of ``crop_size``; the maps cover
    the same crop on a grid of ``map_size`` (equal to ``crop_size`` for full resolution).
    """
    size = torch.as_tensor(tuple(crop_size), dtype=dtype, device=points.device)
    low = torch.as_tensor(tuple(map_size), dtype=dtype, device=points.device)
    p = (points.to(dtype) + 0.5) * low / size - 0.5                       # in map voxels
    axes = [torch.arange(n, device=points.device, dtype=dtype) for n in map_size]
    # separable Gaussian: exp(-(dz^2+dy^2+dx^2)/2s^2) = product of three 1D factors
    f = [torch.exp(-((a[None, None] - p[..., i:i + 1]) ** 2) / (2 * sigma ** 2))
         for i, a in enumerate(axes)]                                       # each (B, N, n_i)
    blobs = f[0][..., :, None, None] * f[1][..., None, :, None] * f[2][..., None, None, :]
    out = []
    for value in (1, 0):
        sel = (labels == value).to(dtype)[..., None, None, None]
        out.append((blobs * sel).amax(dim=1) if labels.shape[1] else blobs.new_zeros((points.shape[0], *map_size)))
    return torch.stack(out, dim=1)


def region_maps(points: torch.Tensor, labels: torch.Tensor, scribbles: torch.Tensor | None,
                crop_size: Sequence[int], map_size: Sequence[int], dtype=torch.float32) -> torch.Tensor:
    """Box and scribble maps (B, 3, *map_size) of a crop of ``crop_size`` (see
    :meth:`PromptEncoder3D.region_maps`). A sample's box spans its corner points (labels 2, 3; the
    voxels holding them included); a sample without both corners has an empty box map."""
    b, dev = points.shape[0], points.device
    maps = torch.zeros(b, REGION_CHANNELS, *crop_size, dtype=dtype, device=dev)
    low, high = labels == BOX_LOW, labels == BOX_HIGH
    has_box = low.any(1) & high.any(1)
    if bool(has_box.any()):
        big = torch.finfo(torch.float32).max
        pts = points.float()
        lo = torch.where(low[..., None], pts, torch.full_like(pts, big)).amin(1)          # (B, 3)
        hi = torch.where(high[..., None], pts, torch.full_like(pts, -big)).amax(1)
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
        first, last = torch.ceil(lo - 0.5), torch.floor(hi + 0.5)     # the voxels holding the corners
        inside = [(torch.arange(n, device=dev)[None] >= first[:, i:i + 1])
                  & (torch.arange(n, device=dev)[None] <= last[:, i:i + 1]) for i, n in enumerate(crop_size)]
        box = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
        maps[:, 0] = (box & has_box[:, None, None, None]).to(dtype)
    if scribbles is not None:
        maps[:, 1:] = scribbles.to(dtype)
    if tuple(map_size) == tuple(crop_size):
        return maps
    return torch.nn.functional.adaptive_max_pool3d(maps, tuple(map_size))
