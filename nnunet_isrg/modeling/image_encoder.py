"""Vision encoder E_I: a 3D ViT with windowed local attention and interleaved global attention blocks.

Patch embedding is a strided Conv3d, optionally behind a small convolutional stem (two stride-2
3x3x3 convolutions: "early convolutions help transformers see better", Xiao et al. 2021; a ViT
trained from scratch on a few thousand crops converges much faster with it), 3D position information is a learned absolute embedding on the
token grid, and a neck maps the ViT width to the prompt/decoder width. The output is an isotropic
feature grid (B, out_chans, D/p, H/p, W/p) in z, y, x order, one cell per p^3 voxel patch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import Conv3d, LayerNorm3d, MLPBlock


def window_partition3d(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B, D, H, W, C) -> (B * n_windows, ws^3, C), zero-padding the grid to a multiple of ``ws``."""
    b, d, h, w, c = x.shape
    pd, ph, pw = (-d) % ws, (-h) % ws, (-w) % ws
    if pd or ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    dp, hp, wp = d + pd, h + ph, w + pw
    x = x.view(b, dp // ws, ws, hp // ws, ws, wp // ws, ws, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws ** 3, c), (dp, hp, wp)


def window_unpartition3d(windows: torch.Tensor, ws: int, padded: tuple[int, int, int],
                         size: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition3d`; crops the padding away. Returns (B, D, H, W, C)."""
    dp, hp, wp = padded
    c = windows.shape[-1]
    b = windows.shape[0] // ((dp // ws) * (hp // ws) * (wp // ws))
    x = windows.view(b, dp // ws, hp // ws, wp // ws, ws, ws, ws, c)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, dp, hp, wp, c)
    d, h, w = size
    return x[:, :d, :h, :w].contiguous()


class EncoderAttention(nn.Module):
    """Fused-qkv multi-head self-attention over a token sequence (B, L, C)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"image encoder width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block3D(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 means global attention over the whole grid."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EncoderAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D, H, W, C) token grid."""
        b, d, h, w, c = x.shape
        y = self.norm1(x)
        if self.window_size > 0:
            win, padded = window_partition3d(y, self.window_size)
            y = window_unpartition3d(self.attn(win), self.window_size, padded, (d, h, w))
        else:
            y = self.attn(y.reshape(b, d * h * w, c)).view(b, d, h, w, c)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """3D ViT image encoder.

    Args:
        img_size: crop size (D, H, W) in voxels, each a multiple of ``patch_size``.
        patch_size: edge of the cubic voxel patch that becomes one token.
        embed_dim, depth, num_heads, mlp_ratio: ViT width, number of blocks, heads, MLP expansion.
        out_chans: width of the output feature grid (the prompt/decoder width).
        window_size: edge (in tokens) of the local attention windows.
        global_attn_indexes: blocks that attend globally instead of within windows.
        conv_stem: two stride-2 convolutions before the patch embedding (patch_size a multiple of 4).
    """

    def __init__(self, img_size: Sequence[int], patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, out_chans: int, window_size: int, global_attn_indexes: Sequence[int],
                 in_chans: int = 1, conv_stem: bool = False) -> None:
        super().__init__()
        self.img_size = tuple(int(s) for s in img_size)
        self.patch_size = int(patch_size)
        bad = [s for s in self.img_size if s % self.patch_size]
        if bad:
            raise ValueError(f"crop size {self.img_size} must be a multiple of the patch size {self.patch_size} "
                             f"on every axis")
        self.grid_size = tuple(s // self.patch_size for s in self.img_size)
        if conv_stem:
            if self.patch_size % 4:
                raise ValueError(f"a convolutional stem needs a patch size divisible by 4, got {self.patch_size}")
            # narrow, whatever the ViT width: the stem's job is local edges, and at the crop's
            # resolution width is what costs (a 768-wide ViT's stem at embed_dim/6 doubled base's encode)
            c1, c2, rest = 16, 32, self.patch_size // 4
            self.patch_embed = nn.Sequential(
                Conv3d(in_chans, c1, kernel_size=3, stride=2, padding=1), LayerNorm3d(c1), nn.GELU(),
                Conv3d(c1, c2, kernel_size=3, stride=2, padding=1), LayerNorm3d(c2), nn.GELU(),
                Conv3d(c2, embed_dim, kernel_size=rest, stride=rest))
        else:
            self.patch_embed = Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, *self.grid_size, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.global_attn_indexes = tuple(sorted(int(i) for i in global_attn_indexes))
        self.blocks = nn.ModuleList(
            Block3D(embed_dim, num_heads, mlp_ratio, 0 if i in self.global_attn_indexes else window_size)
            for i in range(depth))
        self.neck = nn.Sequential(
            Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, D, H, W) -> (B, out_chans, D/p, H/p, W/p)."""
        x = self.patch_embed(x).permute(0, 2, 3, 4, 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))


class HighResolutionSkip(nn.Module):
    """Voxel-level image features for the mask head, at the resolution of its low-res logits.

    The ViT sees the crop in patches of ``patch_size``^3 voxels; upsampling its tokens alone has to
    learn every boundary inside a patch. Like HQ-SAM's early-layer fusion, a small conv stem on the
    crop gives the mask head local intensity edges directly (``out_chans`` = the hypernetwork width).
    """

    def __init__(self, out_chans: int, stride: int) -> None:
        super().__init__()
        self.out_chans = out_chans
        self.net = nn.Sequential(
            Conv3d(1, out_chans, kernel_size=3 if stride == 1 else stride, stride=stride,
                   padding=1 if stride == 1 else 0),
            LayerNorm3d(out_chans),
            nn.GELU(),
            Conv3d(out_chans, out_chans, kernel_size=3, padding=1),
            LayerNorm3d(out_chans),
            nn.GELU(),
            Conv3d(out_chans, out_chans, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, out_chans, D/stride, H/stride, W/stride)."""
        return self.net(x)
