"""Boxes, scribbles and lassos drawn from the ground truth for training, on torch batches.

The companions of :mod:`nnunet_isrg.clicks`' training clicks, in the same conventions: masks
``(B, 1, D, H, W)`` bool, coordinates voxel (z, y, x), randomness only from the ``torch.Generator``
passed in (so a seeded run draws the same prompts on any device).

- :func:`sample_box_prompts`: the first prompt as a 3D box: the target's bounding box with each face
  moved outwards at random, as the CVPR 2025 interactive challenge draws it (up to 10 % of the box's
  extent on that axis, at most 5 voxels; :func:`nnunet_isrg.prompts.jittered_box`); in
  ``two_d_fraction`` of the samples a 2D box instead, as a reader drags one on a slice of a view: the
  box of the target's section on one slice (a random axis, the slice through a random target voxel,
  so larger sections more often), jittered in-plane the same way. Returned as the two corner points
  with labels 2 and 3 (a 2D box's corners share the slice).
- :func:`simulate_correction_scribble`: a correction as a stroke inside one error region: between
  two random voxels of one connected false-negative (positive stroke) or false-positive (negative
  stroke) component, the voxels of the straight line that lie in that component.
- :func:`simulate_correction_lasso`: a correction as the outline a reader draws around an error on
  one slice: the error component's voxels on a slice (random axis) through a random voxel of it.

Scribbles and lassos are returned as voxel masks ``(B, 2, D, H, W)`` (positive, negative), the form
the network takes them in.
"""
from __future__ import annotations

import numpy as np
import torch

from nnunet_isrg.clicks import PADDING, target_components_under
from nnunet_isrg.prompts import BOX_HIGH, BOX_LOW, jittered_box, scribble_voxels


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from the torch one (one draw), for the per-sample geometry."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return np.random.default_rng(seed)


def sample_box_prompts(target_masks: torch.Tensor, generator: torch.Generator | None = None,
                       max_shift_fraction: float = 0.1, max_shift_voxels: int = 5, two_d_fraction: float = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """A jittered bounding box of each target (a 2D one on a slice in ``two_d_fraction`` of the
    samples) -> ``points`` (B, 2, 3) float32 (lower, higher corner) and ``labels`` (B, 2) int64: 2 and
    3, or -1 (padding) for a sample with an empty target."""
    masks = target_masks.detach().bool().cpu().numpy()
    rng = _numpy_rng(generator)
    points = np.zeros((masks.shape[0], 2, 3), dtype=np.float32)
    labels = np.full((masks.shape[0], 2), PADDING, dtype=np.int64)
    for b in range(masks.shape[0]):
        mask = masks[b, 0]
        if not mask.any():
            continue
        if two_d_fraction > 0 and rng.random() < two_d_fraction:
            mask = _section(mask, rng)
        box = jittered_box(mask, rng, max_shift_fraction, max_shift_voxels)
        points[b] = [box.lo, box.hi]
        labels[b] = (BOX_LOW, BOX_HIGH)
    return torch.from_numpy(points).to(target_masks.device), torch.from_numpy(labels).to(target_masks.device)


def _section(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask's voxels on one slice: a random axis, the slice through a random voxel of the mask."""
    axis = int(rng.integers(3))
    voxels = np.argwhere(mask)
    index = int(voxels[rng.integers(len(voxels)), axis])
    out = np.zeros_like(mask)
    sl = tuple(index if a == axis else slice(None) for a in range(3))
    out[sl] = mask[sl]
    return out


def _error_components(pred_masks: torch.Tensor, target_masks: torch.Tensor, generator: torch.Generator | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: a connected error component (chosen through a voxel uniform over all errors, so
    larger ones more often), the voxel drawn, and whether it is a false negative."""
    pred, target = pred_masks.bool(), target_masks.bool()
    fn, fp = target & ~pred, pred & ~target
    errors = (fn | fp).flatten(1)
    gen_device = generator.device if generator is not None else errors.device
    scores = torch.rand(errors.shape, generator=generator, device=gen_device).to(errors.device)
    flat = torch.where(errors, scores, torch.full_like(scores, -1.0)).argmax(1)
    valid = errors.any(1)
    shape = pred_masks.shape[2:]
    voxel = torch.stack(torch.unravel_index(flat, tuple(shape)), -1)
    is_fn = fn.flatten(1).gather(1, flat[:, None])[:, 0]
    region = torch.where(is_fn[:, None, None, None, None], fn, fp)
    labels = torch.where(valid, torch.ones_like(flat), torch.full_like(flat, PADDING))
    component = target_components_under(region, voxel.float(), labels).cpu().numpy()[:, 0]
    return component, voxel.cpu().numpy(), (is_fn & valid).cpu().numpy()


def simulate_correction_scribble(pred_masks: torch.Tensor, target_masks: torch.Tensor,
                                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One stroke per sample inside one error component (see the module docstring) -> (B, 2, D, H, W)
    float masks: channel 0 positive (a false negative stroked), 1 negative; zeros without an error."""
    component, start, is_fn = _error_components(pred_masks, target_masks, generator)
    out = np.zeros((component.shape[0], 2, *component.shape[1:]), dtype=np.float32)
    rng = _numpy_rng(generator)
    for b in range(component.shape[0]):
        voxels = np.argwhere(component[b])
        if not len(voxels):
            continue
        end = voxels[rng.integers(len(voxels))]
        line = scribble_voxels([start[b], end], component.shape[1:])
        line = line[component[b][tuple(line.T)]]
        out[(b, 0 if is_fn[b] else 1, *line.T)] = 1
    return torch.from_numpy(out).to(pred_masks.device)


def simulate_correction_lasso(pred_masks: torch.Tensor, target_masks: torch.Tensor,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """One lasso per sample: an error component's voxels on the slice (random axis) through a random
    voxel of it -> (B, 2, D, H, W) float masks (positive for a false negative, negative for a false
    positive); zeros without an error."""
    component, start, is_fn = _error_components(pred_masks, target_masks, generator)
    out = np.zeros((component.shape[0], 2, *component.shape[1:]), dtype=np.float32)
    axes = torch.randint(0, 3, (component.shape[0],), generator=generator).tolist()
    for b in range(component.shape[0]):
        if not component[b].any():
            continue
        index = [slice(None)] * 3
        index[axes[b]] = int(start[b][axes[b]])
        out[(b, 0 if is_fn[b] else 1, *index)] = component[b][tuple(index)]
    return torch.from_numpy(out).to(pred_masks.device)
