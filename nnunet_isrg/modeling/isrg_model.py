"""The ISRG network: image encoder, prompt encoder (+ point refinement), hybrid token encoder, mask,
IoU and attribute heads (+ feature synergy), composed by injection.

Forward contract::

    image (B, 1, D, H, W) nnU-Net-normalised ROI crop of size ``crop_size``
    points (B, N, 3) continuous voxel coordinates (z, y, x) in the crop
    labels (B, N) long: 1 positive, 0 negative, -1 padding; 2 and 3 a box's lower and higher corner
    mask_prompt (B, 1, d, h, w) previous ``low_res_logits`` or None
    scribbles (B, 2, D, H, W) positive / negative scribble and lasso voxels of the crop, or None
    -> {"mask_logits": (B, 1, D, H, W), "low_res_logits": (B, 1, d, h, w), "iou_pred": (B, 1) in [0, 1],
        "attribute_logits": {name: (B, C_name)} in schema order}

Split API for interactive use: ``emb = encode_image(image)`` once per crop, then
``decode(emb, points, labels, mask_prompt, scribbles)`` per prompt, equal to the full forward. ``emb`` is an
:class:`~nnunet_isrg.modeling.image_embedding.ImageEmbedding`, the one object a caller caches per crop.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .attribute_head import AttributeHead
from .feature_synergy import FeatureSynergy
from .image_embedding import ImageEmbedding
from .image_encoder import HighResolutionSkip, ImageEncoderViT3D
from .lesion_pooling import LesionPooling
from .mask_head import IoUHead, MaskHead
from .point_refinement import PointRefinement
from .prompt_encoder import BOX_LOW, PromptEncoder3D
from .subvoxel_refiner import SubvoxelRefiner
from .transformer import TwoWayTransformer3D

NO_CLICK_MESSAGE = (
    "ISRG models are promptable and need clicks: call model(image, points, labels[, mask_prompt]) with "
    "points (B, N, 3) voxel coordinates (z, y, x) and labels (B, N) in {1, 0, -1}. nnU-Net's stock "
    "predictor and validation call network(x) without prompts, which this network cannot answer; "
    "predict with `isrg predict` (or the interactive session) instead of nnUNetv2_predict."
)


#: parameters added with boxes and region maps (scribbles, lassos); a checkpoint trained before them
#: lacks them and, with these at their initial values, computes what it did for clicks
PROMPT_EXTENSION_PARAMETERS = ("prompt_encoder.box_corner_embeddings.weight",
                               "prompt_encoder.region_downscaling.weight", "mask_head.region_projection.weight",
                               "mask_head.region_prior.weight", "subvoxel_refiner.region_input.weight")


@dataclass
class OptionalComponents:
    """The components a setting switches off; None when off, so a variant has no unused parameters
    (DDP without ``find_unused_parameters``).

    ``point_refiner`` and ``synergy`` are the paper's ablation switches; the other three are the
    voxel-level paths (see :data:`nnunet_isrg.modeling.build.DEFAULT_SETTINGS`).
    """

    point_refiner: PointRefinement | None = None
    synergy: FeatureSynergy | None = None
    high_res_skip: HighResolutionSkip | None = None
    subvoxel_refiner: SubvoxelRefiner | None = None
    lesion_pooling: LesionPooling | None = None


class ISRGModel(nn.Module):
    """Composite model; build it with :func:`nnunet_isrg.modeling.build.build_isrg_model`.

    The attribute schema (names and class counts) is the attribute head's; ``config`` is the
    builder's record of its settings.
    """

    def __init__(self, image_encoder: ImageEncoderViT3D, prompt_encoder: PromptEncoder3D,
                 transformer: TwoWayTransformer3D, mask_head: MaskHead, iou_head: IoUHead,
                 attribute_head: AttributeHead, optional: OptionalComponents | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        optional = optional or OptionalComponents()
        # Registration order is the parameter order, which a saved optimizer state relies on: keep it.
        self.lesion_pooling = optional.lesion_pooling
        self.image_encoder = image_encoder
        self.high_res_skip = optional.high_res_skip
        self.subvoxel_refiner = optional.subvoxel_refiner
        self.prompt_encoder = prompt_encoder
        self.point_refiner = optional.point_refiner
        self.transformer = transformer
        self.mask_head = mask_head
        self.iou_head = iou_head
        self.attribute_head = attribute_head
        self.synergy = optional.synergy
        self.num_classes: "OrderedDict[str, int]" = attribute_head.num_classes
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
    def encode_image(self, image: torch.Tensor) -> ImageEmbedding:
        """(B, 1, D, H, W) crop -> its image embedding; cache it per crop."""
        if image.dim() != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != self.crop_size:
            raise ValueError(f"image must have shape (B, 1, {', '.join(map(str, self.crop_size))}) "
                             f"(the model's crop size), got {tuple(image.shape)}")
        grid = self.image_encoder(image)
        skip = self.high_res_skip(image) if self.high_res_skip is not None else None
        maps = {
            "grid": grid,
            "skip_features": skip,
            "intensities": (F.avg_pool3d(image, self._low_res_stride) if self.lesion_pooling is not None
                            else None),
            "refiner_features": (self.subvoxel_refiner.image_features(image, skip)
                                 if self.subvoxel_refiner is not None else None),
        }
        # One dtype for all maps, the widest: under autocast the intensities stay float32 while the
        # encoder's output is half, and the decoder computes its prompt maps at the embedding's dtype.
        dtype = functools.reduce(torch.promote_types, (m.dtype for m in maps.values() if m is not None))
        return ImageEmbedding(**maps).to(dtype)

    @property
    def _low_res_stride(self) -> int:
        return max(1, self.patch_size[0] // 4)

    def forward(self, image: torch.Tensor, points: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                mask_prompt: torch.Tensor | None = None, scribbles: torch.Tensor | None = None) -> dict[str, Any]:
        if points is None:
            raise RuntimeError(NO_CLICK_MESSAGE)
        self._check_prompts(image.shape[0], points, labels, mask_prompt, scribbles)
        return self.decode(self.encode_image(image), points, labels, mask_prompt, scribbles)

    def decode(self, embedding: ImageEmbedding, points: torch.Tensor | None, labels: torch.Tensor | None,
               mask_prompt: torch.Tensor | None = None, scribbles: torch.Tensor | None = None) -> dict[str, Any]:
        """Prompts + cached :meth:`encode_image` embedding -> outputs (see module docstring)."""
        if points is None:
            raise RuntimeError(NO_CLICK_MESSAGE)
        b = embedding.batch_size
        self._check_prompts(b, points, labels, mask_prompt, scribbles)
        grid, high_res = embedding.grid, embedding.skip_features
        labels = labels.long()
        # At least float32 for coordinates, also when the embedding comes out of autocast in half precision.
        points = points.to(torch.promote_types(grid.dtype, torch.float32))
        # Padding coordinates are arbitrary (even NaN); zero them so masked tokens stay finite.
        points = torch.where(labels[..., None] < 0, torch.zeros_like(points), points)
        clicks, click_labels = points, labels
        # clicks alone leave the region maps zero and their branches add nothing: skipped, so a click
        # costs what it did before boxes existed (in training they stay in the graph, for DDP)
        has_regions = scribbles is not None or bool((labels >= BOX_LOW).any())
        regions = (self.prompt_encoder.region_maps(points, labels, scribbles, dtype=grid.dtype)
                   if has_regions or self.training else None)
        if self.point_refiner is not None:   # refines clicks; box corners are no place to look around
            only_clicks = torch.where(labels >= BOX_LOW, torch.full_like(labels, -1), labels)
            ref_points, ref_labels = self.point_refiner(grid, points, only_clicks, self.patch_size)
            points = torch.cat([points, ref_points], dim=1)
            labels = torch.cat([labels, ref_labels], dim=1)
        sparse, sparse_valid = self.prompt_encoder.embed_points(points, labels)
        click_maps = self.prompt_encoder.click_maps(clicks, click_labels, dtype=grid.dtype)
        dense_input = self.prompt_encoder.dense_input(mask_prompt, b, grid.dtype, grid.device, click_maps)
        dense = self.prompt_encoder.dense_embedding(dense_input, regions)

        out_tokens = torch.cat([self.iou_token.weight, self.mask_token.weight, self.attribute_tokens.weight], 0)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)
        token_valid = torch.cat([sparse_valid.new_ones(b, out_tokens.shape[0]), sparse_valid], dim=1)
        image_pe = self.prompt_encoder.get_dense_pe(grid.device, points.dtype)

        z, image_tokens = self.transformer(grid + dense, image_pe.expand(b, -1, -1, -1, -1), tokens, token_valid)
        iou_pred = self.iou_head(z[:, 0])
        m = self.mask_head.refine(z[:, 1:2], z, token_valid)
        a = self.attribute_head.encode(z, token_valid, start=2)
        if self.synergy is not None:
            m, a = self.synergy(m, a)
        low_res = self.mask_head.predict(m, image_tokens, self.grid_size, high_res, dense_input, regions)
        if self.lesion_pooling is not None:
            intensities = embedding.intensities
            pooled = intensities if high_res is None else torch.cat([high_res, intensities], dim=1)
            a = a + self.lesion_pooling(low_res, pooled)
        if self.subvoxel_refiner is not None:
            mask_logits = self.subvoxel_refiner(low_res, embedding.refiner_features, dense_input, regions)
        else:
            mask_logits = F.interpolate(low_res, size=self.crop_size, mode="trilinear", align_corners=False)
        return {"mask_logits": mask_logits, "low_res_logits": low_res, "iou_pred": iou_pred,
                "attribute_logits": self.attribute_head.classify(a)}

    def _check_prompts(self, batch: int, points: torch.Tensor, labels: torch.Tensor | None,
                       mask_prompt: torch.Tensor | None, scribbles: torch.Tensor | None = None) -> None:
        if labels is None:
            raise ValueError("labels (B, N) are required with points: 1 positive, 0 negative, -1 padding")
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != batch:
            raise ValueError(f"points must have shape ({batch}, N, 3) (z, y, x voxel coordinates), "
                             f"got {tuple(points.shape)}")
        if tuple(labels.shape) != tuple(points.shape[:2]):
            raise ValueError(f"labels must have shape {tuple(points.shape[:2])} to match points, got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be an integer tensor (1 positive, 0 negative, -1 padding), got {labels.dtype}")
        if labels.numel() and (labels.min() < -1 or labels.max() > 3):
            raise ValueError(f"labels must be 1 (positive), 0 (negative), -1 (padding), or 2 and 3 (a box's "
                             f"lower and higher corner), got values {sorted(set(labels.unique().tolist()))}")
        if not bool(torch.isfinite(points[labels >= 0]).all()):
            raise ValueError("points of real prompts (label 0 to 3) must have finite coordinates; only padding "
                             "(label -1) may hold NaN")
        if scribbles is not None and tuple(scribbles.shape) != (batch, 2, *self.crop_size):
            raise ValueError(f"scribbles must have shape {(batch, 2, *self.crop_size)} (positive and negative "
                             f"voxels of the crop), got {tuple(scribbles.shape)}")
        if mask_prompt is not None:
            want = (batch, 1, *self.low_res_size)
            if tuple(mask_prompt.shape) != want:
                raise ValueError(f"mask_prompt must have shape {want} (the low_res_logits of the previous round), "
                                 f"got {tuple(mask_prompt.shape)}")
