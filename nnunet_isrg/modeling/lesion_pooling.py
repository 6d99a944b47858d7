"""Mask-guided lesion pooling for the attribute head.

A radiologist reads density, heterogeneity and margin from the voxels inside the lesion against
those around it. The attribute tokens only see the 8^3 embedding grid through attention, which
learns this slowly; this module pools image features inside the predicted mask and in a shell
around it (at the low-res logits' resolution), with the mask's size and form, and adds the result to
the attribute features. Shape is read from the mask's second moments (a flat wall patch has one small
axis, a lobulated mass fills its moment ellipsoid poorly) and its surface-to-volume ratio; invasion
from the spread of the shell (fat, vessel and organ side by side). The mask is detached, so the
attribute loss does not bend the segmentation.
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
        # inside mean, shell mean, inside std, shell std per channel, plus log volume, mean confidence
        # and GEOMETRY_FEATURES form features
        self.mlp = MLP(4 * feature_chans + 2 + self.GEOMETRY_FEATURES, dim, n_attributes * dim, 2)

    GEOMETRY_FEATURES = 5

    @staticmethod
    def geometry(p: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """Soft mask (B, 1, d, h, w) in [0, 1] -> (B, 5): log of the three moment eigenvalues over
        volume^(2/3) (ascending), log of the moment ellipsoid's volume over the mask's volume, and log
        of the surface (summed gradient magnitude) over volume^(2/3). Scale-free, voxel units."""
        b = p.shape[0]
        w = p.flatten(1)
        volume = w.sum(1) + eps
        axes = [torch.arange(n, device=p.device, dtype=p.dtype) for n in p.shape[2:]]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)    # (N, 3)
        mean = (w @ coords) / volume[:, None]                                                # (B, 3)
        centred = coords[None] - mean[:, None]                                               # (B, N, 3)
        cov = torch.einsum("bn,bni,bnj->bij", w, centred, centred) / volume[:, None, None]
        eig = torch.linalg.eigvalsh(cov + eps * torch.eye(3, device=p.device, dtype=p.dtype)).clamp(min=eps)
        v23 = volume[:, None] ** (2 / 3)
        # a solid ellipsoid with moment eigenvalues l_i has volume 4/3 pi sqrt(125 l1 l2 l3)
        ellipsoid = 4 / 3 * torch.pi * torch.sqrt(125 * eig.prod(1))
        gz, gy, gx = torch.gradient(p[:, 0], dim=(1, 2, 3))
        surface = torch.sqrt(gz ** 2 + gy ** 2 + gx ** 2 + eps ** 2).reshape(b, -1).sum(1)
        return torch.cat([torch.log(eig / v23), torch.log(ellipsoid / volume)[:, None],
                          torch.log(surface / volume ** (2 / 3) + eps)[:, None]], dim=1)

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
        shell_spread = (weighted_mean(shell, f * f) - around ** 2).clamp(min=0).sqrt()
        volume = torch.log1p(p.flatten(2).sum(-1))
        confidence = weighted_mean(p, p)
        stats = torch.cat([inside, around, spread, shell_spread, volume, confidence, self.geometry(p)],
                          dim=1).to(low_res_logits.dtype)
        return self.mlp(stats).view(-1, self.n_attributes, self.dim)
