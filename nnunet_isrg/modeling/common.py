"""Small building blocks shared by the ISRG components (channels-first LayerNorm, MLPs, masked attention)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, D, H, W) tensor (SAM's LayerNorm2d in 3D)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x  # statistics in float32 under autocast
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return (self.weight[:, None, None, None] * x + self.bias[:, None, None, None]).to(dtype)


class MLPBlock(nn.Module):
    """Linear -> GELU -> Linear, the feed-forward part of a transformer block."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (SAM's hypernetwork / IoU head MLP)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 sigmoid_output: bool = False) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections, an optional internal down-projection
    (SAM's ``downsample_rate``) and an optional key mask.

    ``key_mask`` (B, Lk) bool is True for keys that take part. Masked keys get exactly zero weight,
    so padding prompts have no influence at all (the caller guarantees at least one valid key per row).
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1,
                 kv_in_dim: int | None = None) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"attention width {self.internal_dim} (= {embedding_dim} / downsample_rate "
                             f"{downsample_rate}) is not divisible by num_heads={num_heads}")
        kv_in_dim = kv_in_dim or embedding_dim
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs oneDNN's kernel for a single CPU crop.

    PyTorch picks its kernel with a heuristic written for 2D: a float32 batch of one whose first four
    sizes multiply to at most 20,480 (every interactive crop: 1 x C x D x H) goes to
    ``slow_conv3d``, about 10x slower than oneDNN for a 3x3x3 kernel (54 vs 4.7 ms for 16 channels
    at 32^3 on one core). A batch of two already takes oneDNN, so training is unchanged; this
    routes the interactive single-crop case there too. Same parameters, same result.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (input.device.type == "cpu" and input.dtype == torch.float32 and weight.dtype == torch.float32
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and any(k > 1 for k in self.kernel_size) and torch.backends.mkldnn.is_available()):
            return torch.mkldnn_convolution(input.contiguous(), weight.contiguous(), bias, self.padding,
                                            self.stride, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)


class ConvTranspose3dK2(nn.ConvTranspose3d):
    """ConvTranspose3d with kernel 2 and stride 2, computed as one matmul plus a voxel shuffle.

    Same parameters and result as ``nn.ConvTranspose3d(cin, cout, 2, 2)`` (kernel == stride means the
    output blocks do not overlap), but several times faster on CPU than PyTorch's slow_conv_transpose3d,
    which dominated the per-click decode time.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, c, d, h, w = x.shape
        o = self.out_channels
        y = x.permute(0, 2, 3, 4, 1).reshape(-1, c) @ self.weight.reshape(c, o * 8)
        y = y.view(b, d, h, w, o, 2, 2, 2).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, o, 2 * d, 2 * h, 2 * w)
        return y + self.bias.view(1, o, 1, 1, 1)


def zero_conv(in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1) -> nn.Conv3d:
    """A bias-free conv whose weights start at zero, without drawing from the global random generator.

    For a branch added to an existing layer (the region maps beside the mask prompt and click maps):
    starting at zero it adds nothing until trained, a checkpoint from before the branch existed
    computes what it did, and a seeded build draws the same initial weights as before it existed.
    """
    conv = nn.Conv3d(in_chans, out_chans, kernel_size, stride=stride, bias=False, device="meta")
    conv.weight = nn.Parameter(torch.zeros(conv.weight.shape))
    return conv
