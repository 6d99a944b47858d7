"""Spacing-aware segmentation metrics (Dice, HD95, NSD) and per-click curve summaries (AUC, NoC).

Arrays are numpy z,y,x; ``spacing_zyx`` is the voxel size in mm in the same order (SimpleITK's
``GetSpacing()`` is x,y,z: reverse it).

Conventions (chosen once, used everywhere):

- Surfaces are voxel surfaces: the mask voxels that have a 6-neighbour outside the mask, with the
  outside of the image counting as background (a mask touching the image border has a surface
  there), as in DeepMind's ``surface-distance`` and MONAI.
- HD95 is the larger of the two directed 95th percentiles of surface-to-surface distances
  (MONAI ``compute_hausdorff_distance(percentile=95)`` / DeepMind ``compute_robust_hausdorff``),
  in mm.
- NSD at tolerance tau is the fraction of surface voxels of both masks lying within tau mm of the
  other surface: ``(|{a: d(a,S_gt) <= tau}| + |{b: d(b,S_pred) <= tau}|) / (|S_pred| + |S_gt|)``
  (voxel-counted, not surfel-area-weighted).
- Empty masks: both empty -> Dice 1, HD95 0, NSD 1. Exactly one empty -> Dice 0, NSD 0 and
  HD95 ``nan`` (undefined, not a large number that would silently dominate a mean); the
  :func:`summarise_values` helper skips NaN and reports how many it skipped, and
  :func:`segmentation_metrics` flags the case (``pred_empty`` / ``gt_empty``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage

_SURFACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


def _as_bool(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a 3D z,y,x mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _check_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_bool(pred, "pred"), _as_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return p, g


def _check_spacing(spacing_zyx) -> tuple[float, float, float]:
    s = tuple(float(v) for v in spacing_zyx)
    if len(s) != 3 or not all(v > 0 and math.isfinite(v) for v in s):
        raise ValueError(f"spacing_zyx must be three positive numbers (mm, z,y,x order), got {spacing_zyx!r}")
    return s


def dice(pred, gt) -> float:
    """Dice coefficient 2|P&G| / (|P|+|G|); 1.0 when both masks are empty."""
    p, g = _check_pair(pred, gt)
    denom = np.count_nonzero(p) + np.count_nonzero(g)
    if denom == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(np.logical_and(p, g)) / denom)


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: beyond the image is background, so voxels on the image border are surface
    return mask & ~ndimage.binary_erosion(mask, structure=_SURFACE_STRUCTURE, border_value=0)


def _crop_to_union(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel.

    Exact for surface distances: every surface voxel lies in the box, so the nearest surface voxel
    to any point of the box does too; and where the box is clipped by the image border the mask
    touches that border, which the surface convention treats as background either way.
    """
    union = p | g
    idx = np.nonzero(union.any(axis=(1, 2)))[0], np.nonzero(union.any(axis=(0, 2)))[0], np.nonzero(union.any(axis=(0, 1)))[0]
    sl = tuple(slice(max(int(i[0]) - 1, 0), min(int(i[-1]) + 2, n)) for i, n in zip(idx, p.shape))
    return p[sl], g[sl]


def surface_distances(pred, gt, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to the surface of ``gt`` and vice versa.

    Both masks must be non-empty. Returns ``(d_pred_to_gt, d_gt_to_pred)``.
    """
    p, g = _check_pair(pred, gt)
    spacing = _check_spacing(spacing_zyx)
    if not p.any() or not g.any():
        raise ValueError("surface_distances needs two non-empty masks")
    p, g = _crop_to_union(p, g)
    sp, sg = _surface(p), _surface(g)
    dt_to_g = ndimage.distance_transform_edt(~sg, sampling=spacing)
    dt_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dt_to_g[sp], dt_to_p[sg]


def hd95(pred, gt, spacing_zyx) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (max of the two directed percentiles).

    0.0 when both masks are empty, ``nan`` when exactly one is.
    """
    p, g = _check_pair(pred, gt)
    _check_spacing(spacing_zyx)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return float("nan")
    d_pg, d_gp = surface_distances(p, g, spacing_zyx)
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def nsd(pred, gt, spacing_zyx, tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice at ``tolerance_mm``; 1.0 when both masks are empty, 0.0 when one is."""
    p, g = _check_pair(pred, gt)
    _check_spacing(spacing_zyx)
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    if not p.any() and not g.any():
        return 1.0
    if not p.any() or not g.any():
        return 0.0
    d_pg, d_gp = surface_distances(p, g, spacing_zyx)
    return float((np.count_nonzero(d_pg <= tolerance_mm) + np.count_nonzero(d_gp <= tolerance_mm))
                 / (d_pg.size + d_gp.size))


def segmentation_metrics(pred, gt, spacing_zyx, tolerance_mm: float = 2.0) -> dict:
    """Dice, HD95 (mm) and NSD at ``tolerance_mm`` in one pass, with empty-mask flags.

    Keys: ``dice``, ``hd95``, ``nsd``, ``pred_empty``, ``gt_empty``. HD95 is ``nan`` when exactly one
    mask is empty (see the module docstring).
    """
    p, g = _check_pair(pred, gt)
    spacing = _check_spacing(spacing_zyx)
    pe, ge = not p.any(), not g.any()
    out = {"dice": dice(p, g), "pred_empty": pe, "gt_empty": ge}
    if pe and ge:
        out.update(hd95=0.0, nsd=1.0)
    elif pe or ge:
        out.update(hd95=float("nan"), nsd=0.0)
    else:
        d_pg, d_gp = surface_distances(p, g, spacing)
        out["hd95"] = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
        out["nsd"] = float((np.count_nonzero(d_pg <= tolerance_mm) + np.count_nonzero(d_gp <= tolerance_mm))
                           / (d_pg.size + d_gp.size))
    return out


def auc_over_clicks(values: Sequence[float]) -> float:
    """Normalised area under a per-click curve: trapezoid over click index 1..n divided by (n - 1).

    The result is on the metric's own scale (a constant curve at v gives v), so it is comparable
    across different numbers of clicks. One value gives that value; any NaN gives NaN (e.g. HD95
    with an empty prediction at some click); no values raises.
    """
    v = np.asarray(list(values), dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"auc_over_clicks needs a non-empty 1D sequence, got shape {v.shape}")
    if np.isnan(v).any():
        return float("nan")
    if v.size == 1:
        return float(v[0])
    return float(np.trapezoid(v, dx=1.0) / (v.size - 1))


class NoC(NamedTuple):
    """Number of clicks to reach a threshold; ``failed`` when it was never reached (then clicks = max_clicks)."""

    clicks: int
    failed: bool


def noc_at(dice_per_click: Sequence[float], threshold: float, max_clicks: int | None = None) -> NoC:
    """Number of clicks (1-based) until Dice first reaches ``threshold`` (>=).

    Standard NoC convention: if it is never reached within ``max_clicks`` (default: the length of the
    curve), the count is ``max_clicks`` and ``failed`` is True.
    """
    d = np.asarray(list(dice_per_click), dtype=float)
    if max_clicks is None:
        max_clicks = int(d.size)
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    hits = np.nonzero(d[:max_clicks] >= threshold)[0]
    if hits.size:
        return NoC(int(hits[0]) + 1, False)
    return NoC(int(max_clicks), True)


def summarise_values(values: Sequence[float]) -> dict:
    """Mean and (population, ddof=0) std over the finite values; ``n`` counts them, ``n_nan`` the skipped ones."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    finite = v[np.isfinite(v)]
    n_nan = int(v.size - finite.size)
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0, "n_nan": n_nan}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size), "n_nan": n_nan}
