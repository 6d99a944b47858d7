"""Stand-ins for the network in tests of the session's and the server's mechanics.

A model trained for a few debug iterations may predict anything, even empty masks; these give
masks known in advance, so tests of geometry, undo, lesion bookkeeping and the viewer's overlay
can assert on them. The real network is tested in test_modeling.py and test_trainer.py.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_isrg.inference.model_loading import LoadedModel, load_trained_model


class ClickSpheresStandIn(nn.Module):
    """Deterministic stand-in for the network: the mask is every voxel within ``radius`` crop voxels of a
    positive click, inside a box (corner labels 2 and 3: the voxels holding them and all between) or
    on a positive scribble, and not within ``radius / 2`` of a negative click nor on a negative
    scribble; fixed attribute probabilities. It makes the session's geometry (regions, crops,
    paste-back, undo, lesion exclusivity, prompts) testable with masks that are known to be
    non-empty, whatever the debug model learnt in its few iterations."""

    def __init__(self, crop_size, schema, radius: float = 5.5):
        super().__init__()
        self.crop_size = tuple(crop_size)
        self.schema = schema
        self.radius = radius
        self.encodes = 0

    def encode_image(self, image):
        self.encodes += 1
        return image

    def decode(self, embedding, points, labels, mask_prompt=None, scribbles=None):
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in self.crop_size],
                                          indexing="ij"), -1)
        d = torch.cdist(grid.reshape(-1, 3), points[0].float()).reshape(*self.crop_size, -1)
        pos, neg = labels[0] == 1, labels[0] == 0
        inside = (d[..., pos] <= self.radius).any(-1) if pos.any() else torch.zeros(self.crop_size, dtype=torch.bool)
        if (labels[0] == 2).any() and (labels[0] == 3).any():
            lo = torch.ceil(points[0][labels[0] == 2][0] - 0.5)
            hi = torch.floor(points[0][labels[0] == 3][0] + 0.5)
            inside |= ((grid >= lo) & (grid <= hi)).all(-1)
        if scribbles is not None:
            inside |= scribbles[0, 0] > 0
            inside &= ~(scribbles[0, 1] > 0)
        if neg.any():
            inside &= ~(d[..., neg] <= self.radius / 2).any(-1)
        logits = (inside.float() * 20 - 10)[None, None]
        low = F.interpolate(logits, size=tuple(s // 4 for s in self.crop_size), mode="trilinear")
        attrs = OrderedDict((k, torch.arange(len(v), 0, -1, dtype=torch.float32)[None]) for k, v in self.schema.items())
        return {"mask_logits": logits, "low_res_logits": low, "iou_pred": torch.ones(1, 1), "attribute_logits": attrs}


def with_network(loaded: LoadedModel, network: nn.Module) -> LoadedModel:
    return LoadedModel(loaded.folder, loaded.plans_manager, loaded.configuration_manager, loaded.dataset_json,
                       loaded.schema, network, [0], torch.device("cpu"), loaded.isrg_block,
                       prompt_kinds=loaded.prompt_kinds)


def stand_in_model(model_folder, radius: float = 5.5) -> LoadedModel:
    """The trained model folder's plans and schema with :class:`ClickSpheresStandIn` as its network."""
    loaded = load_trained_model(model_folder, folds=(0,))
    return with_network(loaded, ClickSpheresStandIn(loaded.crop_size, loaded.schema, radius))


class BrightLesionStandIn(nn.Module):
    """Deterministic stand-in that segments what is bright: the mask is every voxel of the view whose
    (normalised) intensity exceeds ``threshold``, whatever the clicks; fixed attribute probabilities.

    On an image holding one bright analytic shape (an ellipsoid of known centre and axes) its output
    is known for any view: the shape cut to the view's box at full resolution, the shape as the
    averaged-down view shows it when zoomed out. That makes the lesion predictor's zooming, tiling and
    truncation testable against the analytic shape. ``encodes`` counts the image encoder's runs."""

    def __init__(self, crop_size, schema, threshold: float = 0.25):
        super().__init__()
        self.crop_size = tuple(crop_size)
        self.schema = schema
        self.threshold = threshold
        self.encodes = 0

    def encode_image(self, image):
        self.encodes += 1
        return image

    def decode(self, embedding, points, labels, mask_prompt=None):
        logits = (embedding > self.threshold).float() * 20 - 10
        low = F.interpolate(logits, size=tuple(s // 4 for s in self.crop_size), mode="trilinear")
        attrs = OrderedDict((k, torch.arange(len(v), 0, -1, dtype=torch.float32)[None]) for k, v in self.schema.items())
        return {"mask_logits": logits, "low_res_logits": low, "iou_pred": torch.ones(1, 1), "attribute_logits": attrs}
