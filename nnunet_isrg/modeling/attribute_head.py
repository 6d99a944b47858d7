"""Attribute head H_attr: residual block over the hybrid tokens, self-attention, one classifier per attribute.

Each attribute of the report schema has its own learned token in the hybrid token encoder. Here the
hybrid tokens Z pass a residual MLP block, then the attribute tokens attend to all (valid) hybrid
tokens, attribute tokens included (self-attention over Z, read out at the attribute positions),
A = H_attr(Z). Attribute i is classified from its own feature A_i by its own linear layer. The
attributes are mutually exclusive categories, so the logits are meant for softmax/cross-entropy
per attribute (the paper's "sigmoid" multi-label wording describes the concatenated one-hot target).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from .common import Attention, MLPBlock


class AttributeHead(nn.Module):
    """Args: dim, num_heads, mlp_dim, num_classes {attribute name: number of classes} (schema order)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, num_classes: Mapping[str, int]) -> None:
        super().__init__()
        self.names = list(num_classes)
        self.res_norm = nn.LayerNorm(dim)
        self.res_mlp = MLPBlock(dim, mlp_dim)
        self.attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm2 = nn.LayerNorm(dim)
        # ModuleList, not ModuleDict: schema names are free text and must keep their order.
        self.classifiers = nn.ModuleList(nn.Linear(dim, int(c)) for c in num_classes.values())

    @property
    def num_classes(self) -> "OrderedDict[str, int]":
        """{attribute name: number of classes} in schema order."""
        return OrderedDict((name, head.out_features) for name, head in zip(self.names, self.classifiers))

    def encode(self, hybrid_tokens: torch.Tensor, token_valid: torch.Tensor, start: int) -> torch.Tensor:
        """Z (B, T, C), valid (B, T); attribute tokens at [start, start + n_attr) -> A (B, n_attr, C)."""
        z = hybrid_tokens + self.res_mlp(self.res_norm(hybrid_tokens))
        a = z[:, start:start + len(self.names)]
        a = self.norm1(a + self.attn(a, z, z, token_valid))
        return self.norm2(a + self.mlp(a))

    def classify(self, attribute_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """A (B, n_attr, C) -> {name: logits (B, C_name)} in schema order."""
        return {name: head(attribute_features[:, i]) for i, (name, head) in enumerate(zip(self.names, self.classifiers))}
