"""Mask-guided lesion pooling for the attribute head.

A radiologist reads density, heterogeneity and margin from the voxels inside the lesion against
those around it. The attribute tokens only see the 8^3 embedding grid through attention, which
learns this slowly; this module pools image features inside the predicted mask and in a shell
around it (at the low-res logits' resolution), with the mask's size, and adds the result to the
attribute features. The mask is detached, so the attribute loss does not bend the segmentation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP


class LesionPooling(nn.Module):
    """Args: feature_chans (channels of the pooled maps), dim (attribute feature width), n_attributes,
    shell (shell thickness in low-res voxels)."""

    def __init__(self, feature_chans: int, dim: int, n_attributes: int, shell: int = 2) -> None:
        super().__init__()
        self.shell = shell
        self.n_attributes = n_attributes
        self.dim = dim
        # inside mean, shell mean, inside std per channel, plus log volume and mean confidence
        self.mlp = MLP(3 * feature_chans + 2, dim, n_attributes * dim, 2)

    def forward(self, low_res_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """logits (B, 1, d, h, w), features (B, c, d, h, w) -> attribute feature offsets (B, n_attr, dim)."""
        p = torch.sigmoid(low_res_logits.detach().float())
        k = 2 * self.shell + 1
        shell = (F.max_pool3d(p, k, stride=1, padding=self.shell) - p).clamp(min=0)
        f = features.float()
        eps = 1e-4

        def weighted_mean(w, x):
            return (w * x).flatten(2).sum(-1) / (w.flatten(2).sum(-1) + eps)

        inside = weighted_mean(p, f)
        around = weighted_mean(shell, f)
        spread = (weighted_mean(p, f * f) - inside ** 2).clamp(min=0).sqrt()
        volume = torch.log1p(p.flatten(2).sum(-1))
        confidence = weighted_mean(p, p)
        stats = torch.cat([inside, around, spread, volume, confidence], dim=1).to(low_res_logits.dtype)
        return self.mlp(stats).view(-1, self.n_attributes, self.dim)
