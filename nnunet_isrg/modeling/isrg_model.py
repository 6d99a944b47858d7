"""The ISRG network: image encoder, prompt encoder (+ point refinement), hybrid token encoder, mask,
IoU and attribute heads (+ feature synergy), composed by injection.

Forward contract::

    image (B, 1, D, H, W) nnU-Net-normalised ROI crop of size ``crop_size``
    points (B, N, 3) continuous voxel coordinates (z, y, x) in the crop
    labels (B, N) long: 1 positive, 0 negative, -1 padding
    mask_prompt (B, 1, d, h, w) previous ``low_res_logits`` or None
    -> {"mask_logits": (B, 1, D, H, W), "low_res_logits": (B, 1, d, h, w), "iou_pred": (B, 1) in [0, 1],
        "attribute_logits": {name: (B, C_name)} in schema order}

Split API for interactive use: ``emb = encode_image(image)`` once per crop, then
``decode(emb, points, labels, mask_prompt)`` per click, equal to the full forward. ``emb`` is one
tensor (B, C', d, h, w): the grid embedding (C channels) followed, when the high-resolution skip is
on, by its voxel-level features folded into the grid (space-to-depth), so callers cache one tensor.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .attribute_head import AttributeHead
from .feature_synergy import FeatureSynergy
from .image_encoder import HighResolutionSkip, ImageEncoderViT3D, fold_to_grid, unfold_from_grid
from .intensity_windows import IntensityWindows
from .lesion_pooling import LesionPooling
from .mask_head import IoUHead, MaskHead
from .point_refinement import PointRefinement
from .prompt_encoder import PromptEncoder3D
from .subvoxel_refiner import SubvoxelRefiner
from .transformer import TwoWayTransformer3D

NO_CLICK_MESSAGE = (
    "ISRG models are promptable and need clicks: call model(image, points, labels[, mask_prompt]) with "
    "points (B, N, 3) voxel coordinates (z, y, x) and labels (B, N) in {1, 0, -1}. nnU-Net's stock "
    "predictor and validation call network(x) without prompts, which this network cannot answer; "
    "predict with `isrg predict` (or the interactive session) instead of nnUNetv2_predict."
)


class ISRGModel(nn.Module):
    """Composite model; build it with :func:`nnunet_isrg.modeling.build.build_isrg_model`.

    ``point_refiner`` and ``synergy`` are None when switched off, so the ablation variants have no
    unused parameters (DDP without ``find_unused_parameters``).
    """

    def __init__(self, image_encoder: ImageEncoderViT3D, prompt_encoder: PromptEncoder3D,
                 point_refiner: PointRefinement | None, transformer: TwoWayTransformer3D, mask_head: MaskHead,
                 iou_head: IoUHead, attribute_head: AttributeHead, synergy: FeatureSynergy | None,
                 num_classes: Mapping[str, int], config: Mapping[str, Any] | None = None,
                 high_res_skip: HighResolutionSkip | None = None,
                 subvoxel_refiner: SubvoxelRefiner | None = None,
                 lesion_pooling: LesionPooling | None = None,
                 intensity_windows: IntensityWindows | None = None) -> None:
        super().__init__()
        self.intensity_windows = intensity_windows
        self.lesion_pooling = lesion_pooling
        self.image_encoder = image_encoder
        self.high_res_skip = high_res_skip
        self.subvoxel_refiner = subvoxel_refiner
        self.prompt_encoder = prompt_encoder
        self.point_refiner = point_refiner
        self.transformer = transformer
        self.mask_head = mask_head
        self.iou_head = iou_head
        self.attribute_head = attribute_head
        self.synergy = synergy
        self.num_classes: "OrderedDict[str, int]" = OrderedDict((str(k), int(v)) for k, v in num_classes.items())
        self.attribute_names: list[str] = list(self.num_classes)
        self.config: dict[str, Any] = dict(config or {})
        dim = prompt_encoder.embed_dim
        self.iou_token = nn.Embedding(1, dim)
        self.mask_token = nn.Embedding(1, dim)
        self.attribute_tokens = nn.Embedding(len(self.attribute_names), dim)

    # --- geometry -------------------------------------------------------------------------------
    @property
    def crop_size(self) -> tuple[int, int, int]:
        """Input crop (D, H, W) in voxels."""
        return self.image_encoder.img_size

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Image embedding grid (d, h, w)."""
        return self.image_encoder.grid_size

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Voxels per embedding grid cell on (z, y, x)."""
        return tuple(c // g for c, g in zip(self.crop_size, self.grid_size))

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        """Size of ``low_res_logits`` and of ``mask_prompt``: 4x the embedding grid."""
        return self.prompt_encoder.mask_input_size

    # --- API ------------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) crop -> image embedding (B, C, d, h, w); cache it per crop."""
        if image.dim() != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != self.crop_size:
            raise ValueError(f"image must have shape (B, 1, {', '.join(map(str, self.crop_size))}) "
                             f"(the model's crop size), got {tuple(image.shape)}")
        windowed = self.intensity_windows(image) if self.intensity_windows is not None else image
        parts = [self.image_encoder(windowed)]
        skip = self.high_res_skip(windowed) if self.high_res_skip is not None else None
        if skip is not None:
            parts.append(fold_to_grid(skip, 4))
        if self.lesion_pooling is not None:  # the crop's intensities at the logits' resolution
            parts.append(fold_to_grid(F.avg_pool3d(image, self._low_res_stride), 4))
        if self.subvoxel_refiner is not None:  # the image half of the sub-voxel refinement
            parts.append(fold_to_grid(self.subvoxel_refiner.image_features(windowed, skip), 4))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @property
    def _low_res_stride(self) -> int:
        return max(1, self.patch_size[0] // 4)

    def _split_embedding(self, embedding: torch.Tensor):
        """Packed embedding -> (grid embedding, skip features, intensities and sub-voxel refiner
        features, all three at 4x the grid); the last three are None when their module is off."""
        c = self.prompt_encoder.embed_dim
        grid, rest = embedding[:, :c], embedding[:, c:]
        out = []
        for module, chans in ((self.high_res_skip, getattr(self.high_res_skip, "out_chans", 0)),
                              (self.lesion_pooling, 1),
                              (self.subvoxel_refiner, getattr(self.subvoxel_refiner, "out_chans", 0))):
            if module is None:
                out.append(None)
                continue
            n = chans * 4 ** 3
            out.append(unfold_from_grid(rest[:, :n], chans, 4))
            rest = rest[:, n:]
        return (grid, *out)

    def forward(self, image: torch.Tensor, points: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                mask_prompt: torch.Tensor | None = None) -> dict[str, Any]:
        if points is None:
            raise RuntimeError(NO_CLICK_MESSAGE)
        self._check_prompts(image.shape[0], points, labels, mask_prompt)
        return self.decode(self.encode_image(image), points, labels, mask_prompt)

    def decode(self, embedding: torch.Tensor, points: torch.Tensor | None, labels: torch.Tensor | None,
               mask_prompt: torch.Tensor | None = None) -> dict[str, Any]:
        """Prompts + cached embedding -> outputs (see module docstring)."""
        if points is None:
            raise RuntimeError(NO_CLICK_MESSAGE)
        b = embedding.shape[0]
        self._check_prompts(b, points, labels, mask_prompt)
        embedding, high_res, intensity, refiner_features = self._split_embedding(embedding)
        labels = labels.long()
        # At least float32 for coordinates, also when the embedding comes out of autocast in half precision.
        points = points.to(torch.promote_types(embedding.dtype, torch.float32))
        # Padding coordinates are arbitrary (even NaN); zero them so masked tokens stay finite.
        points = torch.where(labels[..., None] < 0, torch.zeros_like(points), points)
        clicks, click_labels = points, labels
        if self.point_refiner is not None:
            ref_points, ref_labels = self.point_refiner(embedding, points, labels, self.patch_size)
            points = torch.cat([points, ref_points], dim=1)
            labels = torch.cat([labels, ref_labels], dim=1)
        sparse, sparse_valid = self.prompt_encoder.embed_points(points, labels)
        click_maps = self.prompt_encoder.click_maps(clicks, click_labels, dtype=embedding.dtype)
        dense_input = self.prompt_encoder.dense_input(mask_prompt, b, embedding.dtype, embedding.device, click_maps)
        dense = self.prompt_encoder.mask_downscaling(dense_input)

        out_tokens = torch.cat([self.iou_token.weight, self.mask_token.weight, self.attribute_tokens.weight], 0)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)
        token_valid = torch.cat([sparse_valid.new_ones(b, out_tokens.shape[0]), sparse_valid], dim=1)
        image_pe = self.prompt_encoder.get_dense_pe(embedding.device, points.dtype)

        z, image_tokens = self.transformer(embedding + dense, image_pe.expand(b, -1, -1, -1, -1), tokens, token_valid)
        iou_pred = self.iou_head(z[:, 0])
        m = self.mask_head.refine(z[:, 1:2], z, token_valid)
        a = self.attribute_head.encode(z, token_valid, start=2)
        if self.synergy is not None:
            m, a = self.synergy(m, a)
        low_res = self.mask_head.predict(m, image_tokens, self.grid_size, high_res, dense_input)
        if self.lesion_pooling is not None:
            pooled = intensity if high_res is None else torch.cat([high_res, intensity], dim=1)
            a = a + self.lesion_pooling(low_res, pooled)
        if self.subvoxel_refiner is not None:
            mask_logits = self.subvoxel_refiner(low_res, refiner_features, dense_input)
        else:
            mask_logits = F.interpolate(low_res, size=self.crop_size, mode="trilinear", align_corners=False)
        return {"mask_logits": mask_logits, "low_res_logits": low_res, "iou_pred": iou_pred,
                "attribute_logits": self.attribute_head.classify(a)}

    def _check_prompts(self, batch: int, points: torch.Tensor, labels: torch.Tensor | None,
                       mask_prompt: torch.Tensor | None) -> None:
        if labels is None:
            raise ValueError("labels (B, N) are required with points: 1 positive, 0 negative, -1 padding")
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != batch:
            raise ValueError(f"points must have shape ({batch}, N, 3) (z, y, x voxel coordinates), "
                             f"got {tuple(points.shape)}")
        if tuple(labels.shape) != tuple(points.shape[:2]):
            raise ValueError(f"labels must have shape {tuple(points.shape[:2])} to match points, got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be an integer tensor (1 positive, 0 negative, -1 padding), got {labels.dtype}")
        if labels.numel() and (labels.min() < -1 or labels.max() > 1):
            raise ValueError(f"labels must be 1 (positive), 0 (negative) or -1 (padding), got values "
                             f"{sorted(set(labels.unique().tolist()))}")
        if not bool(torch.isfinite(points[labels >= 0]).all()):
            raise ValueError("points of real clicks (label 0 or 1) must have finite coordinates; only padding "
                             "(label -1) may hold NaN")
        if mask_prompt is not None:
            want = (batch, 1, *self.low_res_size)
            if tuple(mask_prompt.shape) != want:
                raise ValueError(f"mask_prompt must have shape {want} (the low_res_logits of the previous round), "
                                 f"got {tuple(mask_prompt.shape)}")
