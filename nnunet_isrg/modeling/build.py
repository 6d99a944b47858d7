"""Named size presets and the one builder of the ISRG network.

    model = build_isrg_model("tiny")                                  # 64^3 crop, trains on a CPU
    model = build_isrg_model("base", schema=schema_from_dataset_json(ds))
    model = build_isrg_model("tiny", crop_size=32, depth=2, feature_synergy=False)

``model.config`` is a JSON-serialisable record of every resolved setting;
``build_isrg_model_from_config(model.config)`` rebuilds the same architecture (e.g. from a checkpoint).
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import Any, Mapping, Sequence

from ..attributes import DEFAULT_SCHEMA, validate_schema
from .attribute_head import AttributeHead
from .feature_synergy import FeatureSynergy
from .image_encoder import HighResolutionSkip, ImageEncoderViT3D
from .isrg_model import ISRGModel, OptionalComponents
from .lesion_pooling import LesionPooling
from .mask_head import IoUHead, MaskHead
from .point_refinement import PointRefinement
from .prompt_encoder import PromptEncoder3D
from .subvoxel_refiner import SubvoxelRefiner
from .transformer import TwoWayTransformer3D

#: Settings every preset shares. Encoder: ``mlp_ratio``, ``window_size`` (local attention window, in
#: tokens), ``conv_stem`` (two stride-2 convolutions before the ViT's patch embedding). Decoder:
#: ``decoder_depth`` (two-way blocks), ``mask_head_depth``, ``mask_in_chans``. Point refinement:
#: ``refine_window`` (w, odd, grid cells), ``refine_k`` (clusters), ``refine_max_iter``.
#: Voxel-level paths: ``high_res_skip`` (conv stem at the low-res logits' grid), ``subvoxel_refiner_chans``
#: (width of the sub-voxel refiner that gives logits at the crop's resolution; 0 = plain upsampling),
#: ``lesion_pooling`` (mask-guided pooling for the attributes), ``click_sigma`` (click map width, low-res voxels).
DEFAULT_SETTINGS: dict[str, Any] = dict(
    mlp_ratio=4.0, window_size=4, conv_stem=True, decoder_depth=2, mask_head_depth=1, mask_in_chans=16,
    refine_window=3, refine_k=3, refine_max_iter=20,
    high_res_skip=True, subvoxel_refiner_chans=8, lesion_pooling=True, click_sigma=1.5)

#: What each preset sets beyond :data:`DEFAULT_SETTINGS`: its size. ``crop_size`` (D, H, W) voxels,
#: ``patch_size``; encoder ``embed_dim`` (ViT width), ``depth``, ``num_heads``, ``global_every`` (every
#: k-th block attends globally); ``prompt_embed_dim`` (width of the embedding grid, prompts and tokens),
#: ``decoder_heads``, ``decoder_mlp_dim``, ``iou_head_hidden``, ``synergy_dim`` (common latent width).
PRESET_SIZES: "OrderedDict[str, dict[str, Any]]" = OrderedDict(
    tiny=dict(crop_size=(64, 64, 64), patch_size=8, embed_dim=192, depth=4, num_heads=6, global_every=2,
              prompt_embed_dim=128, decoder_heads=4, decoder_mlp_dim=512, iou_head_hidden=128, synergy_dim=64),
    small=dict(crop_size=(96, 96, 96), patch_size=8, embed_dim=384, depth=8, num_heads=8, global_every=4,
               prompt_embed_dim=256, decoder_heads=8, decoder_mlp_dim=1024, iou_head_hidden=256, synergy_dim=128),
    base=dict(crop_size=(128, 128, 128), patch_size=16, embed_dim=768, depth=12, num_heads=12, global_every=3,
              prompt_embed_dim=384, decoder_heads=8, decoder_mlp_dim=2048, iou_head_hidden=256, synergy_dim=192),
)

#: Every setting of each preset, resolved: :data:`DEFAULT_SETTINGS` with the preset's own on top.
PRESETS: "OrderedDict[str, dict[str, Any]]" = OrderedDict(
    (name, {**DEFAULT_SETTINGS, **sizes}) for name, sizes in PRESET_SIZES.items())

#: Settings that older models recorded and that no longer exist: {name: (the value that meant "off",
#: why it went)}. Their configs and checkpoints still load when the setting has that value.
REMOVED_SETTINGS: dict[str, tuple[Any, str]] = {
    "intensity_windows": (0, "the learned intensity windows were off in every preset and have been removed"),
}


def _crop(crop_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(crop_size, numbers.Integral):
        return (int(crop_size),) * 3
    t = tuple(int(c) for c in crop_size)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"crop_size must be an int or three positive ints (D, H, W), got {crop_size!r}")
    return t


def _without_removed_settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` less the removed settings at their "off" value; any other value is an error."""
    kept = dict(overrides)
    for name, (off, why) in REMOVED_SETTINGS.items():
        if name in kept and kept.pop(name) != off:
            raise ValueError(f"the model setting {name!r} was removed ({why}); a model that used it "
                             f"({name}={overrides[name]!r}) cannot be built by this version, only {name}={off!r}")
    return kept


def build_isrg_model(preset: str = "tiny", crop_size: int | Sequence[int] | None = None,
                     schema: Mapping[str, Sequence[str]] | None = None, point_refinement: bool = True,
                     feature_synergy: bool = True, **overrides: Any) -> ISRGModel:
    """Builds the ISRG network.

    Args:
        preset: a key of :data:`PRESETS`.
        crop_size: input crop (D, H, W) in voxels (an int means cubic); None takes the preset's.
            Every axis must be a multiple of the patch size.
        schema: {attribute: [class strings]} (only names, order and class counts matter); None takes
            :data:`nnunet_isrg.attributes.DEFAULT_SCHEMA`.
        point_refinement, feature_synergy: the ablation switches (Vanilla = both off, Full = both on).
        overrides: any setting of the preset (see :data:`DEFAULT_SETTINGS` and :data:`PRESET_SIZES`),
            e.g. ``depth=2, refine_k=2``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    cfg = dict(PRESETS[preset])
    overrides = _without_removed_settings(overrides)
    unknown = sorted(set(overrides) - set(cfg) - {"crop_size"})
    if unknown:
        raise TypeError(f"unknown model setting(s) {unknown}; allowed: {sorted(set(cfg) - {'crop_size'})}")
    cfg.update(overrides)
    cfg["crop_size"] = _crop(cfg["crop_size"] if crop_size is None else crop_size)
    schema = validate_schema(DEFAULT_SCHEMA if schema is None else schema, "model schema")
    num_classes = OrderedDict((k, len(v)) for k, v in schema.items())

    depth, ge = int(cfg["depth"]), int(cfg["global_every"])
    global_idx = [i for i in range(depth) if ge > 0 and (i + 1) % ge == 0]
    dim = int(cfg["prompt_embed_dim"])
    encoder = ImageEncoderViT3D(cfg["crop_size"], cfg["patch_size"], cfg["embed_dim"], depth, cfg["num_heads"],
                                cfg["mlp_ratio"], dim, cfg["window_size"], global_idx,
                                conv_stem=bool(cfg["conv_stem"]))
    prompt_encoder = PromptEncoder3D(dim, encoder.grid_size, encoder.img_size, cfg["mask_in_chans"],
                                     cfg["click_sigma"])
    # the voxel-level paths work at the low-res logits' resolution: 4x the feature grid = patch_size / 4 voxels
    stride = max(1, int(cfg["patch_size"]) // 4)
    skip_chans = dim // 8 if cfg["high_res_skip"] else 0  # the mask head's hypernetwork width
    # Built in this order so that a seeded build draws the same initial weights as earlier versions.
    skip = HighResolutionSkip(skip_chans, stride) if cfg["high_res_skip"] else None
    refiner = (PointRefinement(cfg["refine_window"], cfg["refine_k"], cfg["refine_max_iter"])
               if point_refinement else None)
    transformer = TwoWayTransformer3D(cfg["decoder_depth"], dim, cfg["decoder_heads"], cfg["decoder_mlp_dim"])
    mask_head = MaskHead(dim, cfg["decoder_heads"], cfg["decoder_mlp_dim"], cfg["mask_head_depth"])
    subvoxel = (SubvoxelRefiner(stride, skip_chans, hidden=int(cfg["subvoxel_refiner_chans"]))
                if cfg["subvoxel_refiner_chans"] else None)
    pooling = LesionPooling(skip_chans + 1, dim, len(num_classes)) if cfg["lesion_pooling"] else None
    iou_head = IoUHead(dim, cfg["iou_head_hidden"])
    attribute_head = AttributeHead(dim, cfg["decoder_heads"], cfg["decoder_mlp_dim"], num_classes)
    synergy = FeatureSynergy(dim, cfg["synergy_dim"], cfg["decoder_heads"]) if feature_synergy else None

    config = {"preset": preset, **cfg, "crop_size": list(cfg["crop_size"]), "point_refinement": bool(point_refinement),
              "feature_synergy": bool(feature_synergy), "num_classes": dict(num_classes)}
    optional = OptionalComponents(point_refiner=refiner, synergy=synergy, high_res_skip=skip,
                                  subvoxel_refiner=subvoxel, lesion_pooling=pooling)
    return ISRGModel(encoder, prompt_encoder, transformer, mask_head, iou_head, attribute_head, optional, config)


def build_isrg_model_from_config(config: Mapping[str, Any]) -> ISRGModel:
    """Rebuilds the architecture recorded in ``model.config`` (weights not included)."""
    cfg = dict(config)
    preset = cfg.pop("preset")
    num_classes = cfg.pop("num_classes")
    schema = OrderedDict((name, [f"class_{i}" for i in range(int(c))]) for name, c in num_classes.items())
    return build_isrg_model(preset, crop_size=cfg.pop("crop_size"), schema=schema,
                            point_refinement=cfg.pop("point_refinement"), feature_synergy=cfg.pop("feature_synergy"),
                            **cfg)
