"""Inter-task feature synergy (paper eq. 3).

    Z_seg = Attn(M, Proj(A)),    Z_attr = Attn(A, Proj(M))

Mask features M (B, n_mask, C) and attribute features A (B, n_attr, C) are projected into a common
latent space (one linear projection per task), and each task cross-attends to the other's projected
features. Both directions read the *input* M and A (no order between them); the results are added
residually (then LayerNorm) and feed the final mask and attribute predictions.

Each key set also holds one learned "null" token in the common space: attention may then take
nothing from the other task, and the softmax never runs over a single key (where its query/key
projections would get no gradient, e.g. M is one token and a schema may have one attribute).
"""
from __future__ import annotations

import torch
from torch import nn

from .common import Attention


class FeatureSynergy(nn.Module):
    """Args: dim (feature width), common_dim (shared latent width), num_heads."""

    def __init__(self, dim: int, common_dim: int, num_heads: int) -> None:
        super().__init__()
        self.proj_mask = nn.Linear(dim, common_dim)
        self.proj_attr = nn.Linear(dim, common_dim)
        self.null_mask = nn.Parameter(torch.randn(1, 1, common_dim) * 0.02)
        self.null_attr = nn.Parameter(torch.randn(1, 1, common_dim) * 0.02)
        self.attn_seg = Attention(dim, num_heads, kv_in_dim=common_dim)   # M attends to Proj(A)
        self.attn_attr = Attention(dim, num_heads, kv_in_dim=common_dim)  # A attends to Proj(M)
        self.norm_seg = nn.LayerNorm(dim)
        self.norm_attr = nn.LayerNorm(dim)

    def forward(self, mask_features: torch.Tensor, attribute_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M (B, n_mask, C), A (B, n_attr, C) -> (M', A') of the same shapes."""
        b = mask_features.shape[0]
        pa = torch.cat([self.proj_attr(attribute_features), self.null_attr.expand(b, -1, -1)], dim=1)
        pm = torch.cat([self.proj_mask(mask_features), self.null_mask.expand(b, -1, -1)], dim=1)
        z_seg = self.attn_seg(mask_features, pa, pa)
        z_attr = self.attn_attr(attribute_features, pm, pm)
        return self.norm_seg(mask_features + z_seg), self.norm_attr(attribute_features + z_attr)
