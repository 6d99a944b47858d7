"""Click simulation: random clicks for training (torch, batched) and deterministic clicks for evaluation (numpy).

Coordinates are voxel indices in z,y,x order (numpy / SimpleITK ``GetArrayFromImage`` order).
Click labels: 1 positive (include), 0 negative (exclude), -1 padding (no click; SAM convention).

Training (paper eq. 4, DESIGN.md section 5), on torch batches ``(B, 1, D, H, W)`` on any device:

- :func:`sample_target_and_first_click`: the target is the connected lesion component under a
  random lesion voxel; the first click is a random voxel of that component.
- :func:`sample_first_click`: a random voxel inside each target, optionally biased towards the
  interior (``interior_fraction``).
- :func:`simulate_correction_click`: a random voxel of the error region, positive when it falls in
  the false negatives ``target & ~pred``, negative in the false positives ``pred & ~target``.

Randomness comes only from the ``torch.Generator`` passed in: a uniform random score per voxel is
drawn on the generator's device and the best-scoring voxel of the allowed region is taken (a
uniform draw over the region without ``multinomial``'s 2**24 category limit), so a seeded CPU
generator gives the same clicks whether the masks live on the CPU or the GPU.

Evaluation (DESIGN.md section 7), deterministic:

- :func:`first_click_deterministic`: the interior point of the lesion farthest from its boundary.
- :func:`next_click_deterministic`: the point farthest from the boundary of the largest error
  component (false-negative and false-positive components together, largest by voxel count).

Both use the Euclidean distance transform in mm (``sampling=spacing``) of the region padded with
background, so the image border counts as boundary (the RITM / SAM-Med3D convention: a lesion cut
by the image border is clicked away from that border). Ties among the maxima go to the voxel
nearest (in mm) to the region's centroid, then to the smallest flat index.

Connected components use full 26-connectivity (``connectivity=3`` in scipy's terms) unless a
function says otherwise.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

POSITIVE, NEGATIVE, PADDING = 1, 0, -1
#: scipy ``generate_binary_structure`` rank: 1 -> 6-, 2 -> 18-, 3 -> 26-connectivity
DEFAULT_CONNECTIVITY = 3

Point = tuple[int, int, int]


# --------------------------------------------------------------------------- connected components

def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1 (6-), 2 (18-) or 3 (26-neighbourhood), got {connectivity}")
    return ndimage.generate_binary_structure(3, connectivity)


def _component_np(seg: np.ndarray, point: Sequence[int], connectivity: int) -> np.ndarray:
    if seg.ndim != 3:
        raise ValueError(f"expected a 3D z,y,x array, got shape {seg.shape}")
    p = tuple(int(round(float(c))) for c in point)
    if len(p) != 3 or not all(0 <= c < n for c, n in zip(p, seg.shape)):
        raise ValueError(f"point {tuple(point)} is outside the image of shape {seg.shape} (z,y,x)")
    value = seg[p]
    if seg.dtype == bool:
        region = seg
    elif value > 0:
        region = seg == value
    else:
        return np.zeros(seg.shape, dtype=bool)
    if not region[p]:
        return np.zeros(seg.shape, dtype=bool)
    labels, _ = ndimage.label(region, structure=_structure(connectivity))
    return labels == labels[p]


def target_component_under(seg, point: Sequence[int], connectivity: int = DEFAULT_CONNECTIVITY):
    """The connected lesion component containing ``point`` (z,y,x voxel indices), as a bool mask.

    ``seg`` is a 3D numpy array or torch tensor (the result has the same type and device). A bool
    ``seg`` is a lesion mask; a label map gives the component of voxels sharing the clicked voxel's
    label. A background voxel (False or label <= 0, e.g. nnU-Net's ignore label -1) gives an empty mask.
    """
    if isinstance(seg, torch.Tensor):
        out = _component_np(seg.detach().cpu().numpy(), point, connectivity)
        return torch.from_numpy(out).to(seg.device)
    return _component_np(np.asarray(seg), point, connectivity)


def target_components_under(seg_masks: torch.Tensor, points: torch.Tensor, labels: torch.Tensor | None = None,
                            connectivity: int = DEFAULT_CONNECTIVITY) -> torch.Tensor:
    """Batched :func:`target_component_under`: ``seg_masks`` (B,1,D,H,W), ``points`` (B,3) or (B,1,3).

    Samples whose click is padding (``labels == -1``) get an empty target. Components are labelled
    with scipy on the CPU (torch has no connected-components op); the result returns to the input's
    device as a bool tensor (B,1,D,H,W).
    """
    _check_batch(seg_masks, "seg_masks")
    pts = points.reshape(points.shape[0], -1)[:, :3]
    if pts.shape[0] != seg_masks.shape[0]:
        raise ValueError(f"points has batch size {pts.shape[0]}, seg_masks {seg_masks.shape[0]}")
    seg_np = seg_masks.detach().cpu().numpy()
    pts_np = pts.detach().cpu().numpy()
    lab = None if labels is None else labels.reshape(labels.shape[0], -1)[:, 0].detach().cpu().numpy()
    out = np.zeros(seg_np.shape, dtype=bool)
    for b in range(seg_np.shape[0]):
        if lab is not None and lab[b] == PADDING:
            continue
        out[b, 0] = _component_np(seg_np[b, 0], pts_np[b], connectivity)
    return torch.from_numpy(out).to(seg_masks.device)


# --------------------------------------------------------------------------- training clicks (torch)

def _check_batch(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 5 or t.shape[1] != 1:
        shape = tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
        raise ValueError(f"{name}: expected a torch tensor of shape (B,1,D,H,W), got {shape}")


def _random_voxel(region: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly random voxel of each sample's region. ``region`` (B,N) bool -> (flat index (B,), valid (B,))."""
    gen_device = generator.device if generator is not None else region.device
    scores = torch.rand(region.shape, generator=generator, device=gen_device).to(region.device)
    # rand is in [0, 1): any allowed voxel beats every disallowed one
    scores = torch.where(region, scores, torch.full_like(scores, -1.0))
    return scores.argmax(dim=1), region.any(dim=1)


def _unravel(flat: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    _, h, w = spatial
    z = torch.div(flat, h * w, rounding_mode="floor")
    y = torch.div(flat, w, rounding_mode="floor") % h
    x = flat % w
    return torch.stack([z, y, x], dim=-1)


def _interior_region(masks: torch.Tensor, interior_fraction: float) -> torch.Tensor:
    """Voxels of each mask at least ``interior_fraction`` x that mask's maximum boundary distance deep.

    Distances are the voxel-unit EDT of each mask's bounding box padded with background (scipy, on
    the CPU; the crop border counts as boundary as in evaluation). Never empty for a non-empty
    mask: the deepest voxels always qualify.
    """
    if interior_fraction <= 0:
        return masks
    masks_np = masks.detach().cpu().numpy()
    out = np.zeros_like(masks_np)
    for b in range(masks_np.shape[0]):
        m = masks_np[b, 0]
        idx = np.nonzero(m)
        if idx[0].size == 0:
            continue
        sl = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        dist = ndimage.distance_transform_edt(np.pad(m[sl], 1))[1:-1, 1:-1, 1:-1]
        out[b, 0][sl] = dist >= interior_fraction * dist.max()
    return torch.from_numpy(out).to(masks.device)


def sample_first_click(target_masks: torch.Tensor, generator: torch.Generator | None = None,
                       interior_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random positive click inside each target.

    ``target_masks``: (B,1,D,H,W) bool. ``interior_fraction`` in [0, 1) biases the click away from
    the boundary: only voxels whose distance to the boundary is at least that fraction of the
    target's maximum are eligible (0 = uniform over the target). Returns ``points`` (B,1,3) float32 (z,y,x voxel indices)
    and ``labels`` (B,1) int64: 1, or -1 (padding, point 0,0,0) for a sample with an empty target.
    """
    _check_batch(target_masks, "target_masks")
    if not 0.0 <= interior_fraction < 1.0:
        raise ValueError(f"interior_fraction must be in [0, 1), got {interior_fraction}")
    masks = target_masks.bool()
    region = _interior_region(masks, interior_fraction)
    flat, valid = _random_voxel(region.flatten(1), generator)
    points = _unravel(flat, masks.shape[2:]).float()
    points = torch.where(valid[:, None], points, torch.zeros_like(points))
    labels = torch.where(valid, torch.full_like(flat, POSITIVE), torch.full_like(flat, PADDING))
    return points[:, None, :], labels[:, None]


def sample_target_and_first_click(seg_masks: torch.Tensor, generator: torch.Generator | None = None,
                                  interior_fraction: float = 0.0, connectivity: int = DEFAULT_CONNECTIVITY
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target = connected lesion component under a random lesion voxel; first click inside it.

    ``seg_masks`` (B,1,D,H,W): bool lesion masks or label maps (labels <= 0 are background). The
    lesion voxel is uniform over all lesion voxels of the sample (so larger lesions are picked
    more often). Returns ``(targets (B,1,D,H,W) bool, points (B,1,3) float32, labels (B,1) int64)``;
    a sample without lesion gets an empty target and a padding click.
    """
    _check_batch(seg_masks, "seg_masks")
    fg = seg_masks.bool() if seg_masks.dtype == torch.bool else seg_masks > 0
    seed_points, seed_labels = sample_first_click(fg, generator)
    targets = target_components_under(seg_masks, seed_points, seed_labels, connectivity)
    if interior_fraction > 0:
        points, labels = sample_first_click(targets, generator, interior_fraction)
    else:  # the seed voxel is already a uniform draw over the chosen component
        points, labels = seed_points, seed_labels
    return targets, points, labels


def simulate_correction_click(pred_masks: torch.Tensor, target_masks: torch.Tensor,
                              generator: torch.Generator | None = None, mode: str = "proportional"
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per sample from the error regions of paper eq. 4.

    False negatives ``target & ~pred`` give a positive click (1), false positives ``pred & ~target``
    a negative one (0). ``mode="proportional"``: a voxel uniform over FN and FP together, so a
    region is chosen with probability proportional to its size; ``mode="larger"``: a voxel uniform
    over the larger of the two (FN on a tie); ``mode="centre"``: the evaluation protocol's click
    (:func:`next_click_deterministic` in voxel units), no randomness. A sample without error gets a
    padding click (-1 at 0,0,0). Returns ``points`` (B,1,3) float32 z,y,x and ``labels`` (B,1) int64
    on the masks' device.
    """
    _check_batch(pred_masks, "pred_masks")
    _check_batch(target_masks, "target_masks")
    if pred_masks.shape != target_masks.shape:
        raise ValueError(f"pred_masks {tuple(pred_masks.shape)} and target_masks {tuple(target_masks.shape)} differ")
    if mode == "centre":
        return _protocol_clicks(pred_masks, target_masks)
    pred, target = pred_masks.bool().flatten(1), target_masks.bool().flatten(1)
    fn, fp = target & ~pred, pred & ~target
    if mode == "proportional":
        region = fn | fp
    elif mode == "larger":
        use_fn = fn.sum(1) >= fp.sum(1)
        region = torch.where(use_fn[:, None], fn, fp)
    else:
        raise ValueError(f"mode must be 'proportional', 'larger' or 'centre', got {mode!r}")
    flat, valid = _random_voxel(region, generator)
    is_fn = fn.gather(1, flat[:, None])[:, 0]
    labels = torch.where(is_fn, torch.full_like(flat, POSITIVE), torch.full_like(flat, NEGATIVE))
    labels = torch.where(valid, labels, torch.full_like(flat, PADDING))
    points = _unravel(flat, pred_masks.shape[2:]).float()
    points = torch.where(valid[:, None], points, torch.zeros_like(points))
    return points[:, None, :], labels[:, None]


def _protocol_clicks(pred_masks: torch.Tensor, target_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred_np = pred_masks.detach().bool().cpu().numpy()
    target_np = target_masks.detach().bool().cpu().numpy()
    points = np.zeros((pred_np.shape[0], 1, 3), dtype=np.float32)
    labels = np.full((pred_np.shape[0], 1), PADDING, dtype=np.int64)
    for b in range(pred_np.shape[0]):
        found = next_click_deterministic(pred_np[b, 0], target_np[b, 0], (1.0, 1.0, 1.0))
        if found is not None:
            points[b, 0] = found[0]
            labels[b, 0] = POSITIVE if found[1] else NEGATIVE
    return torch.from_numpy(points).to(pred_masks.device), torch.from_numpy(labels).to(pred_masks.device)


# --------------------------------------------------------------------------- evaluation clicks (numpy)

def _farthest_from_boundary(region: np.ndarray, spacing_zyx: Sequence[float]) -> Point:
    """Voxel of ``region`` with the largest EDT (mm) to the background, border counted as background."""
    idx = np.nonzero(region)
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    # crop to the bounding box and pad one background voxel: exact, and makes the image border a boundary
    crop = np.pad(region[tuple(slice(a, b) for a, b in zip(lo, hi))], 1, constant_values=False)
    dist = ndimage.distance_transform_edt(crop, sampling=tuple(float(s) for s in spacing_zyx))
    best = np.argwhere(dist == dist.max())
    if len(best) > 1:
        spacing = np.asarray(spacing_zyx, dtype=float)
        centroid = np.argwhere(crop).mean(axis=0)
        d2 = (((best - centroid) * spacing) ** 2).sum(axis=1)
        best = best[d2 == d2.min()]  # argwhere is in C order, so best[0] then has the smallest flat index
    return tuple(int(c) - 1 + o for c, o in zip(best[0], lo))


def _check_spacing(spacing_zyx) -> None:
    if len(spacing_zyx) != 3 or not all(float(s) > 0 for s in spacing_zyx):
        raise ValueError(f"spacing_zyx must be three positive numbers (mm, z,y,x), got {spacing_zyx!r}")


def first_click_deterministic(gt, spacing_zyx: Sequence[float]) -> Point:
    """The interior point of ``gt`` (3D bool, z,y,x) farthest in mm from the lesion boundary."""
    gt = np.asarray(gt).astype(bool, copy=False)
    _check_spacing(spacing_zyx)
    if gt.ndim != 3:
        raise ValueError(f"gt: expected a 3D z,y,x mask, got shape {gt.shape}")
    if not gt.any():
        raise ValueError("first_click_deterministic: the ground-truth mask is empty, there is no lesion to click")
    return _farthest_from_boundary(gt, spacing_zyx)


def largest_error_component(pred, gt, connectivity: int = DEFAULT_CONNECTIVITY) -> tuple[np.ndarray, bool] | None:
    """The largest connected error component (by voxel count) and whether it is a false negative.

    FN (``gt & ~pred``) and FP (``pred & ~gt``) components compete together; on equal size FN wins,
    then the component found first in C order. None when ``pred == gt``.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    diff = gt ^ pred
    if not diff.any():
        return None
    # components never cross the bounding box of all errors: label inside it only (fast on full CT)
    idx = np.nonzero(diff)
    sl = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    g, p = gt[sl], pred[sl]
    best: tuple[int, np.ndarray, bool] | None = None
    for is_fn, err in ((True, g & ~p), (False, p & ~g)):
        if not err.any():
            continue
        labels, n = ndimage.label(err, structure=_structure(connectivity))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), labels == k + 1, is_fn)
    component = np.zeros(gt.shape, dtype=bool)
    component[sl] = best[1]
    return component, best[2]


def next_click_deterministic(pred, gt, spacing_zyx: Sequence[float],
                             connectivity: int = DEFAULT_CONNECTIVITY) -> tuple[Point, bool] | None:
    """The next evaluation click: the point farthest from the boundary of the largest error component.

    Returns ``((z, y, x), is_positive)`` (positive for a missed region, negative for an
    over-segmented one), or None when the prediction equals the ground truth.
    """
    _check_spacing(spacing_zyx)
    found = largest_error_component(pred, gt, connectivity)
    if found is None:
        return None
    component, is_fn = found
    return _farthest_from_boundary(component, spacing_zyx), bool(is_fn)
