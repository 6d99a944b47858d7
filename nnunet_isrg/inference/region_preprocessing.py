"""nnU-Net's preprocessing of a model's plans, applied to a region of the CT around a click.

nnU-Net preprocesses a whole case as: transpose (``transpose_forward``) -> crop to the non-zero
region -> normalise (the plans' scheme, e.g. ``CTNormalization`` with the dataset's foreground
intensity properties) -> resample to the 3d_fullres spacing (``resampling_fn_data``). Here the same
functions run on a box of the original image that is only as large as the network's crop (plus a
margin), so a click on a 512 x 512 x 300 CT resamples a few hundred thousand voxels, not the whole
volume. The crop-to-non-zero step is skipped: for CT the non-zero region is the whole image, and
it only decides where nnU-Net's grid starts. Two deliberate differences from whole-image
preprocessing remain, both confined to sharp edges: cubic-spline ringing from the region faces
(kept ``DEFAULT_BORDER`` voxels away from the crop), and scikit-image's ``resize`` (which nnU-Net's
resampling calls) clipping its output to the range of its input, here the region's own range.

Coordinates. ``zyx`` points are continuous voxel indices of the ORIGINAL image in numpy (z, y, x)
order (integer = voxel centre). The region lives in the plans' transposed axis order at the target
spacing; region voxel ``k`` on a transposed axis covers original (transposed) voxel position
``start + (k + 0.5) * size / shape - 0.5`` — the mapping nnU-Net's resampling (scikit-image /
scipy ``zoom`` with ``grid_mode``) uses between a resampled array and its source.

Paste-back follows nnU-Net's export: the region's mask logits are resampled to the original grid
with the plans' ``resampling_fn_probabilities`` and thresholded (logit > 0, i.e. probability > 0.5).
For nnU-Net's default function with linear/nearest interpolation (the default plans) only the
neighbourhood of the positive voxels is resampled, with the same interpolation at the same sample
positions, which gives the values of resampling the whole region (tested against it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.preprocessing.resampling.default_resampling import (compute_new_shape, determine_do_sep_z_and_axis,
                                                                  resample_data_or_seg_to_shape)
from scipy.ndimage import map_coordinates

#: Logits outside the crop and the clamp of crop logits before resampling: saturated enough to
#: threshold identically, small enough that interpolation between crop and fill stays well behaved.
FILL_LOGIT = -20.0
#: Extra voxels (on the original and on the target grid, whichever is more) resampled on each side of
#: the wanted region: spline interpolation (order 3) reaches past its neighbours, and values this far
#: from a region face differ from the whole-image result by < 0.2 % of the intensity range (tested).
DEFAULT_BORDER = 6


@dataclass(frozen=True)
class RegionGeometry:
    """Where a preprocessed region lies in the original image. All tuples are in TRANSPOSED axis order
    (``transpose_forward`` of the plans) except ``image_shape_zyx``."""

    start: tuple[int, int, int]             # first original voxel of the region (transposed axes)
    size: tuple[int, int, int]              # original voxels covered (transposed axes)
    shape: tuple[int, int, int]             # region voxels at the target spacing (transposed axes)
    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    image_shape_zyx: tuple[int, int, int]
    original_spacing: tuple[float, float, float]  # (transposed axes, mm)
    target_spacing: tuple[float, float, float]    # (transposed axes, mm)

    @property
    def scale(self) -> np.ndarray:
        """Original voxels per region voxel, per transposed axis."""
        return np.asarray(self.size, float) / np.asarray(self.shape, float)

    @property
    def image_shape_t(self) -> tuple[int, int, int]:
        return tuple(self.image_shape_zyx[i] for i in self.transpose_forward)

    def original_to_region(self, points_zyx) -> np.ndarray:
        """(N, 3) or (3,) original continuous voxel indices (z, y, x) -> region coordinates (transposed)."""
        p = np.asarray(points_zyx, float)
        t = p[..., list(self.transpose_forward)]
        return (t - np.asarray(self.start) + 0.5) / self.scale - 0.5

    def region_to_original(self, points) -> np.ndarray:
        """(N, 3) or (3,) region coordinates (transposed) -> original continuous voxel indices (z, y, x)."""
        p = np.asarray(points, float)
        t = np.asarray(self.start) + (p + 0.5) * self.scale - 0.5
        return t[..., list(self.transpose_backward)]

    def contains(self, points_zyx, margin: float = 0.0) -> bool:
        """Whether every point lies inside the region (at least ``margin`` region voxels from its faces)."""
        r = np.atleast_2d(self.original_to_region(points_zyx))
        return bool(np.all(r >= -0.5 + margin) and np.all(r <= np.asarray(self.shape) - 0.5 - margin))

    def at_image_border(self) -> list[tuple[bool, bool]]:
        """Per transposed axis: (low face is the image's border, high face is the image's border)."""
        return [(a == 0, a + n >= N) for a, n, N in zip(self.start, self.size, self.image_shape_t)]


def _preprocessor(configuration_manager):
    cls = getattr(configuration_manager, "preprocessor_class", DefaultPreprocessor)
    try:
        return cls(verbose=False)
    except TypeError:
        return cls()


def region_box(center_zyx: Sequence[float], min_shape: Sequence[int], image_shape_zyx: Sequence[int],
               spacing_zyx: Sequence[float], plans_manager, configuration_manager,
               border: int = DEFAULT_BORDER) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, size) in original voxels (transposed axes) of a region centred on ``center_zyx`` whose
    resampled shape is at least ``min_shape`` (+ ``border`` on each side where the axis is resampled),
    clipped to the image."""
    tf = list(plans_manager.transpose_forward)
    shape_t = np.asarray(image_shape_zyx)[tf]
    sp_t = np.asarray(spacing_zyx, float)[tf]
    tsp = np.asarray(configuration_manager.spacing, float)
    c_t = np.asarray(center_zyx, float)[tf]
    start, size = [], []
    for ax in range(3):
        resampled = not math.isclose(sp_t[ax], tsp[ax], rel_tol=1e-6)
        # the border is at least ``border`` voxels on both grids: spline support is counted in source voxels
        pad = max(math.ceil(border * tsp[ax] / sp_t[ax]), border) if resampled else 0
        n = max(1, math.ceil(int(min_shape[ax]) * tsp[ax] / sp_t[ax]) + 2 * pad)
        want = int(min_shape[ax]) + (2 * border if resampled else 0)
        # compute_new_shape rounds; grow until the resampled region reaches the wanted size
        while n < shape_t[ax] and compute_new_shape([n], [sp_t[ax]], [tsp[ax]])[0] < want:
            n += 1
        n = int(min(n, shape_t[ax]))
        a = int(round(c_t[ax] - n / 2 + 0.5))
        a = min(max(a, 0), int(shape_t[ax]) - n)
        start.append(a)
        size.append(n)
    return tuple(start), tuple(size)


def preprocess_region(image_zyx: np.ndarray, spacing_zyx: Sequence[float], center_zyx: Sequence[float],
                      min_shape: Sequence[int], plans_manager, configuration_manager,
                      border: int = DEFAULT_BORDER) -> tuple[np.ndarray, RegionGeometry]:
    """Preprocesses the region of ``image_zyx`` around ``center_zyx`` as nnU-Net would the whole image.

    Args:
        image_zyx: the original CT (Z, Y, X) in HU (``sitk.GetArrayViewFromImage`` order).
        spacing_zyx: its voxel spacing in mm in (z, y, x) order (SimpleITK's ``GetSpacing()[::-1]``).
        center_zyx: continuous voxel index (z, y, x) the region is centred on.
        min_shape: smallest region shape wanted at the target spacing, transposed axis order
            (e.g. the network's crop plus room to shift it).
        plans_manager, configuration_manager: the model's nnU-Net plans and 3d_fullres configuration.

    Returns:
        ``(data, geometry)``: ``data`` (1, *geometry.shape) float32 normalised at the target spacing.
    """
    image_shape = tuple(int(s) for s in image_zyx.shape)
    if len(image_shape) != 3:
        raise ValueError(f"image must be a 3D (Z, Y, X) array, got shape {image_shape}")
    tf = tuple(int(i) for i in plans_manager.transpose_forward)
    tb = tuple(int(i) for i in plans_manager.transpose_backward)
    sp_t = tuple(float(np.asarray(spacing_zyx, float)[i]) for i in tf)
    tsp = tuple(float(s) for s in configuration_manager.spacing)
    start, size = region_box(center_zyx, min_shape, image_shape, spacing_zyx, plans_manager, configuration_manager,
                             border)
    # slice in original axes first, so only the region is copied, then transpose as nnU-Net does
    sl = [slice(None)] * 3
    for j, i in enumerate(tf):
        sl[i] = slice(start[j], start[j] + size[j])
    data = np.array(np.asarray(image_zyx[tuple(sl)]).transpose(tf), dtype=np.float32, order="C", copy=True)[None]

    if any(configuration_manager.use_mask_for_norm):
        seg = np.where(create_nonzero_mask(data)[None], 0, -1).astype(np.int8)
    else:
        seg = np.zeros((1, *data.shape[1:]), dtype=np.int8)
    data = _preprocessor(configuration_manager)._normalize(
        data, seg, configuration_manager, plans_manager.foreground_intensity_properties_per_channel)
    new_shape = compute_new_shape(data.shape[1:], sp_t, tsp)
    data = configuration_manager.resampling_fn_data(data, new_shape, sp_t, tsp)
    data = np.ascontiguousarray(data, dtype=np.float32)
    geometry = RegionGeometry(start=tuple(start), size=tuple(size), shape=tuple(int(s) for s in data.shape[1:]),
                              transpose_forward=tf, transpose_backward=tb, image_shape_zyx=image_shape,
                              original_spacing=sp_t, target_spacing=tsp)
    return data, geometry


# ---------------------------------------------------------------------------------------------------
# paste-back
# ---------------------------------------------------------------------------------------------------

def _region_logits(geometry: RegionGeometry, crop_logits, crop_bbox, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Region logits on the box [lo, hi) (region voxels): the crop's logits where the crop is, fill elsewhere."""
    out = np.full([h - l for l, h in zip(lo, hi)], FILL_LOGIT, dtype=np.float32)
    logits = crop_logits.numpy() if torch.is_tensor(crop_logits) else np.asarray(crop_logits)
    src, dst = [], []
    for (c0, c1), l, h in zip(crop_bbox, lo, hi):
        a, b = max(c0, l), min(c1, h)
        if a >= b:
            return out
        src.append(slice(a - c0, b - c0))
        dst.append(slice(a - l, b - l))
    out[tuple(dst)] = np.clip(logits[tuple(src)], FILL_LOGIT, -FILL_LOGIT)
    return out


def _default_linear_resampling(configuration_manager) -> tuple[int, int, Any] | None:
    """(order, order_z, force_separate_z) if the plans resample probabilities with nnU-Net's default
    function at order <= 1 (the sub-box path is exact for those); None otherwise."""
    cfg = configuration_manager.configuration
    if configuration_manager.resampling_fn_probabilities.func is not resample_data_or_seg_to_shape:
        return None
    kw = dict(cfg.get("resampling_fn_probabilities_kwargs", {}))
    order, order_z = int(kw.get("order", 3)), int(kw.get("order_z", 0))
    if kw.get("is_seg", False) or order > 1 or order_z > 1:
        return None
    return order, order_z, kw.get("force_separate_z", False)


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) half-open bounding box of a boolean array's True voxels, or None when there are none."""
    lo, hi = [], []
    for ax in range(mask.ndim):
        nz = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if not len(nz):
            return None
        lo.append(nz[0])
        hi.append(nz[-1] + 1)
    return np.array(lo), np.array(hi)


def _positions(geometry: RegionGeometry, ax: int) -> np.ndarray:
    """Region coordinate of every original voxel of the region on transposed axis ``ax``."""
    j = np.arange(geometry.size[ax], dtype=np.float64)
    return (j + 0.5) * (geometry.shape[ax] / geometry.size[ax]) - 0.5


def resample_region_logits(geometry: RegionGeometry, crop_logits, crop_bbox, configuration_manager,
                           positive_box: tuple[Sequence[int], Sequence[int]] | None = None,
                           force_full: bool = False) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Crop logits (placed at ``crop_bbox`` in region voxels, half open, may overhang the region) ->
    logits on the original grid, as nnU-Net's export resamples them.

    Returns ``(slices, values)``: ``slices`` index the TRANSPOSED original image, ``values`` float32.
    Only the part that can hold positive logits is returned (None if nothing is positive) unless
    ``force_full`` (then the whole region, through nnU-Net's own function).
    """
    m = geometry.shape
    if positive_box is None:
        positive_box = bounding_box(_region_logits(geometry, crop_logits, crop_bbox, (0, 0, 0), m) > 0)
        if positive_box is None:
            if not force_full:
                return None
            positive_box = ((0, 0, 0), m)
    identity = tuple(geometry.size) == tuple(m)  # nnU-Net's resampling returns the data unchanged
    linear = _default_linear_resampling(configuration_manager)
    start = np.asarray(geometry.start)
    if force_full or (linear is None and not identity):
        full = _region_logits(geometry, crop_logits, crop_bbox, (0, 0, 0), m)
        vals = configuration_manager.resampling_fn_probabilities(
            full[None], list(geometry.size), list(geometry.target_spacing), list(geometry.original_spacing))[0]
        return tuple(slice(a, a + n) for a, n in zip(start, geometry.size)), np.asarray(vals, np.float32)
    if identity:
        lo, hi = np.asarray(positive_box[0]), np.asarray(positive_box[1])
        vals = _region_logits(geometry, crop_logits, crop_bbox, lo, hi)
        return tuple(slice(int(s + a), int(s + b)) for s, a, b in zip(start, lo, hi)), vals

    order, order_z, force_sep = linear
    do_sep, axis = determine_do_sep_z_and_axis(force_sep, list(geometry.target_spacing), list(geometry.original_spacing))
    orders = [order] * 3
    if do_sep:
        orders[axis] = order_z
    # original voxels whose interpolation support (clamped at the region edge, mode 'nearest' = 'edge')
    # touches a positive region voxel; everything else interpolates non-positive values only
    sel, pos_1d = [], []
    for ax in range(3):
        p = np.clip(_positions(geometry, ax), 0, m[ax] - 1)
        lo, hi = positive_box[0][ax], positive_box[1][ax]
        idx = np.nonzero((p > lo - 1) & (p < hi))[0]
        if not len(idx):
            return None
        sel.append((int(idx[0]), int(idx[-1]) + 1))
        pos_1d.append(p[idx[0]:idx[-1] + 1])
    # region voxels needed to interpolate those positions
    r_lo = [max(int(math.floor(p[0])), 0) for p in pos_1d]
    r_hi = [min(int(math.floor(p[-1])) + 2, m[ax]) for ax, p in enumerate(pos_1d)]
    sub = _region_logits(geometry, crop_logits, crop_bbox, r_lo, r_hi)
    local = [p - r for p, r in zip(pos_1d, r_lo)]
    # interpolate axis by axis: separable, so each pass is one 1-D interpolation with that axis' order,
    # as nnU-Net's separate-z path (in-plane resize, then map_coordinates along z) and skimage's
    # trilinear zoom compute it; an axis that is not resampled samples at integer positions (identity)
    for ax in range(3):
        if geometry.size[ax] == m[ax]:
            sub = np.take(sub, np.rint(local[ax]).astype(np.intp), axis=ax)
        else:
            sub = _interp_1d(sub, local[ax], ax, orders[ax])
    slices = tuple(slice(int(start[ax] + a), int(start[ax] + b)) for ax, (a, b) in enumerate(sel))
    return slices, np.ascontiguousarray(sub, dtype=np.float32)


def _interp_1d(a: np.ndarray, positions: np.ndarray, axis: int, order: int) -> np.ndarray:
    """``a`` sampled at ``positions`` along ``axis``, clamped at the ends (scipy's mode 'nearest'):
    linear for order 1, scipy's own nearest-neighbour rounding for order 0."""
    n = a.shape[axis]
    if order == 0:
        idx = map_coordinates(np.arange(n, dtype=np.float64), [positions], order=0, mode="nearest").astype(np.intp)
        return np.take(a, idx, axis=axis)
    p = np.clip(positions, 0, n - 1)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = len(p)
    w = (p - i0).reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def paste_mask(geometry: RegionGeometry, crop_logits, crop_bbox, configuration_manager
               ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Thresholded mask of the crop logits on the original grid: ``(slices_zyx, mask)`` with ``mask`` a
    bool (z, y, x) array for ``image[slices_zyx]`` (its bounding box), or None when it is empty."""
    res = resample_region_logits(geometry, crop_logits, crop_bbox, configuration_manager)
    if res is None:
        return None
    slices_t, vals = res
    mask_t = vals > 0
    # shrink to the mask's bounding box before going back to the original axis order
    box = bounding_box(mask_t)
    if box is None:
        return None
    lo, hi = box
    mask_t = mask_t[tuple(slice(a, b) for a, b in zip(lo, hi))]
    slices_t = tuple(slice(s.start + a, s.start + b) for s, a, b in zip(slices_t, lo, hi))
    tb = geometry.transpose_backward
    return tuple(slices_t[i] for i in tb), np.ascontiguousarray(mask_t.transpose(tb))
