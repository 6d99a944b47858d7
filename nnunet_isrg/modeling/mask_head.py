"""Mask head H_seg and the IoU head.

The mask token M_0 (output of the hybrid token encoder) is refined against all hybrid tokens Z by a
few cross-attention layers, M = H_seg(M_0, Z). A hypernetwork MLP maps M to a vector that is dotted
with the image tokens upsampled 4x by transposed convolutions, giving low-resolution logits on a
grid 4x finer than the feature grid; the composite then upsamples them to the crop.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import MLP, Attention, Conv3d, ConvTranspose3dK2, LayerNorm3d, MLPBlock, zero_conv
from .prompt_encoder import REGION_CHANNELS


class TokenRefineLayer(nn.Module):
    """Cross-attention of query tokens to a (masked) token set, then an MLP, both residual + LayerNorm."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, tokens: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
        q = self.norm1(q + self.attn(q, tokens, tokens, token_valid))
        return self.norm2(q + self.mlp(q))


class MaskHead(nn.Module):
    """Args: dim (token/embedding width), num_heads, mlp_dim, depth (refinement layers)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, depth: int = 1) -> None:
        super().__init__()
        self.refine_layers = nn.ModuleList(TokenRefineLayer(dim, num_heads, mlp_dim) for _ in range(depth))
        self.output_upscaling = nn.Sequential(
            ConvTranspose3dK2(dim, dim // 4),
            LayerNorm3d(dim // 4),
            nn.GELU(),
            ConvTranspose3dK2(dim // 4, dim // 8),
            nn.GELU(),
        )
        self.hypernetwork = MLP(dim, dim, dim // 8, 3)
        # previous logits and click maps at the logits' resolution, projected into the hypernetwork's
        # space: a voxel-level shortcut from the prompts to the mask (the tokens only see them coarsely)
        self.prompt_projection = Conv3d(4, dim // 8, kernel_size=1)
        # click prior: a logit term straight from the prompt maps, initialised to a blob around each
        # positive click (minus one around each negative). Without it a lesion of a few voxels is
        # predicted empty for the first hundred iterations; with it the first prediction already
        # overlaps the lesion, so the Dice loss has a gradient from the start
        self.click_prior = Conv3d(4, 1, kernel_size=1)
        with torch.no_grad():
            self.click_prior.weight.copy_(torch.tensor([0.0, 0.0, 4.0, -4.0]).view(1, 4, 1, 1, 1))
            self.click_prior.bias.fill_(-2.0)
        # the same two terms for the region maps (box, positive and negative scribbles): a projection
        # from zero, and a prior of +-4 on scribbled voxels like the clicks' (the box's is learnt)
        self.region_projection = zero_conv(REGION_CHANNELS, dim // 8)
        self.region_prior = zero_conv(REGION_CHANNELS, 1)
        with torch.no_grad():
            self.region_prior.weight.copy_(torch.tensor([0.0, 4.0, -4.0]).view(1, REGION_CHANNELS, 1, 1, 1))

    def refine(self, mask_tokens: torch.Tensor, hybrid_tokens: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
        """mask_tokens (B, 1, C), hybrid tokens Z (B, T, C) -> mask features M (B, 1, C)."""
        m = mask_tokens
        for layer in self.refine_layers:
            m = layer(m, hybrid_tokens, token_valid)
        return m

    def upscale(self, image_tokens: torch.Tensor, grid_size) -> torch.Tensor:
        """image tokens (B, d*h*w, C) -> upsampled embedding (B, C/8, 4d, 4h, 4w) (reference path)."""
        b, _, c = image_tokens.shape
        return self.output_upscaling(image_tokens.transpose(1, 2).reshape(b, c, *grid_size))

    def predict(self, mask_features: torch.Tensor, image_tokens: torch.Tensor, grid_size,
                high_res: torch.Tensor | None = None, prompt_maps: torch.Tensor | None = None,
                region_maps: torch.Tensor | None = None) -> torch.Tensor:
        """M (B, 1, C), image tokens (B, d*h*w, C) -> low-res logits (B, 1, 4d, 4h, 4w).

        Optional voxel-level terms at the logits' resolution: ``high_res`` skip features of the
        image (B, C/8, ...), ``prompt_maps`` (B, 4, ...) (previous logits, presence, click maps) and
        ``region_maps`` (B, 3, ...) (box, positive and negative scribbles).

        Equals ``hypernetwork(M) @ upscale(image_tokens)``, but the last transposed conv, its GELU
        and the dot product are done per 2x2x2 output block before the voxel shuffle, so only the
        one-channel result is shuffled (the full C/8-channel grid was the largest copy of a decode).
        """
        b, _, c = image_tokens.shape
        up1 = self.output_upscaling[:3](image_tokens.transpose(1, 2).reshape(b, c, *grid_size))
        conv2: ConvTranspose3dK2 = self.output_upscaling[3]
        _, c4, d, h, w = up1.shape
        o = conv2.out_channels
        y = up1.permute(0, 2, 3, 4, 1).reshape(b, d * h * w, c4) @ conv2.weight.reshape(c4, o * 8)
        y = self.output_upscaling[4](y.view(b, d * h * w, o, 8) + conv2.bias.view(1, 1, o, 1))
        hyper = self.hypernetwork(mask_features)[:, 0]  # (B, C/8)
        lr = torch.einsum("bnok,bo->bnk", y, hyper)
        lr = lr.reshape(b, d, h, w, 2, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, 1, 2 * d, 2 * h, 2 * w)
        # the dot product is linear, so the voxel-level features (B, C/8, 4d, 4h, 4w) add their own term
        fine = None if prompt_maps is None else self.prompt_projection(prompt_maps)
        if region_maps is not None:
            regions = self.region_projection(region_maps.to(lr.dtype))
            fine = regions if fine is None else fine + regions
        if high_res is not None:
            fine = high_res if fine is None else fine + high_res
        if fine is not None:
            lr = lr + torch.einsum("bcdhw,bc->bdhw", fine, hyper)[:, None]
        if prompt_maps is not None:
            lr = lr + self.click_prior(prompt_maps)
        if region_maps is not None:
            lr = lr + self.region_prior(region_maps.to(lr.dtype))
        return lr


class IoUHead(nn.Module):
    """Predicts the IoU of the mask with the target, in [0, 1] (sigmoid), from the IoU token."""

    def __init__(self, dim: int, hidden_dim: int, depth: int = 3) -> None:
        super().__init__()
        self.mlp = MLP(dim, hidden_dim, 1, depth, sigmoid_output=True)

    def forward(self, iou_token: torch.Tensor) -> torch.Tensor:
        """(B, C) -> (B, 1)."""
        return self.mlp(iou_token)
