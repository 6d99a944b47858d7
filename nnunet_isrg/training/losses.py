"""Training losses: soft Dice (paper eq. 5) + BCE for the mask, IoU regression, per-attribute
cross-entropy with unknown labels masked (eq. 6), and the adaptive weight lambda between them."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_isrg.attributes import IGNORE_INDEX


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample soft Dice loss of sigmoid(logits) against a binary target, both (B,1,...). Returns (B,).

    An empty target with an empty prediction scores 0 loss (eps in numerator and denominator), so
    no-lesion crops teach the model to predict nothing.
    """
    prob = torch.sigmoid(logits.float()).flatten(1)
    tgt = target.float().flatten(1)
    inter = (prob * tgt).sum(1)
    return 1 - (2 * inter + eps) / (prob.sum(1) + tgt.sum(1) + eps)


def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded prediction with the target, per sample (B,); 1 when both are empty."""
    pred = (logits > 0).flatten(1)
    tgt = target.bool().flatten(1)
    inter = (pred & tgt).sum(1).float()
    union = (pred | tgt).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def attribute_cross_entropy(attribute_logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the attributes that are known; labels (B, n_attributes) with IGNORE_INDEX.

    Every head takes part in the graph even when no label of the batch is known (weight 0), so DDP
    without unused-parameter search still sees a gradient for it.
    """
    total, n_terms = 0.0, 0
    for i, logits in enumerate(attribute_logits.values()):
        y = labels[:, i]
        known = y != IGNORE_INDEX
        if known.any():
            total = total + F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
            n_terms += 1
        else:
            total = total + 0.0 * logits.sum()
    return total / max(n_terms, 1)


class UncertaintyWeighting(nn.Module):
    """Adaptive lambda (Kendall et al. 2018): L = L_seg + exp(-s) * L_attr + s, with s learned.

    s is a submodule parameter of the network, so it is saved in the checkpoint and synchronised by
    DDP; with ``learn=False`` lambda stays fixed at ``initial_lambda``.
    """

    def __init__(self, initial_lambda: float = 1.0, learn: bool = True):
        super().__init__()
        s = -torch.log(torch.tensor(float(initial_lambda)))
        if learn:
            self.log_variance = nn.Parameter(s)
        else:
            self.register_buffer("log_variance", s)

    @property
    def lam(self) -> float:
        return float(torch.exp(-self.log_variance).detach())

    def forward(self, segmentation_loss: torch.Tensor, attribute_loss: torch.Tensor) -> torch.Tensor:
        s = self.log_variance
        regulariser = s if isinstance(s, nn.Parameter) else 0.0
        return segmentation_loss + torch.exp(-s) * attribute_loss + regulariser


class ISRGLoss(nn.Module):
    """The dual objective of paper section 2.3 plus IoU-prediction regression (as in SAM)."""

    def __init__(self, bce_weight: float = 1.0, iou_weight: float = 1.0):
        super().__init__()
        self.bce_weight = bce_weight
        self.iou_weight = iou_weight

    def forward(self, out: Mapping, target: torch.Tensor, attribute_labels: torch.Tensor,
                weighting: UncertaintyWeighting) -> tuple[torch.Tensor, dict[str, float]]:
        logits = out["mask_logits"]
        seg = soft_dice_loss(logits, target).mean()
        if self.bce_weight:
            seg = seg + self.bce_weight * F.binary_cross_entropy_with_logits(logits.float(), target.float())
        iou_loss = F.mse_loss(out["iou_pred"].float().squeeze(1), hard_iou(logits.detach(), target))
        attr = attribute_cross_entropy(out["attribute_logits"], attribute_labels)
        total = weighting(seg + self.iou_weight * iou_loss, attr)
        parts = {"seg": float(seg.detach()), "iou": float(iou_loss.detach()), "attr": float(attr.detach()),
                 "lambda": weighting.lam}
        return total, parts
