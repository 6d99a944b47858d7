"""nnU-Net's preprocessing of a model's plans, computed on demand for the boxes a prediction reads.

nnU-Net preprocesses a whole case as: transpose (``transpose_forward``) -> crop to the non-zero
region -> normalise (the plans' scheme, e.g. ``CTNormalization`` with the dataset's foreground
intensity properties) -> resample to the 3d_fullres spacing (``resampling_fn_data``). A click on a
512 x 512 x 300 CT must not wait for all of that, so :func:`preprocess_box` computes the voxels of
nnU-Net's whole-image grid (:func:`image_grid`) inside one box only: it normalises the original
voxels around the box with the plans' own normaliser and evaluates nnU-Net's resampling (its
spline orders, its separate-z rule and its sample positions) at exactly the grid voxels of the box.
Boxes of one image therefore share one grid, so crops, tiles and zoomed-out views of a lesion line
up voxel for voxel. :func:`zoom_box` gives a box of that grid averaged down to a smaller shape
(a zoomed-out view), from the original voxels, without preprocessing the box at full resolution.

The crop-to-non-zero step is skipped: for CT the non-zero region is the whole image, and it only
decides where nnU-Net's grid starts. Two deliberate differences from whole-image preprocessing
remain, both confined to sharp edges: cubic-spline ringing from the faces of the original box
(kept ``DEFAULT_BORDER`` voxels away from the wanted voxels), and scikit-image's ``resize`` (which
nnU-Net's resampling calls) clipping its output to the range of its input, here the box's range.

Coordinates. ``zyx`` points are continuous voxel indices of the ORIGINAL image in numpy (z, y, x)
order (integer = voxel centre). The grid lives in the plans' transposed axis order at the target
spacing; grid voxel ``k`` on a transposed axis covers original (transposed) voxel position
``start + (k + 0.5) * size / shape - 0.5`` — the mapping nnU-Net's resampling (scikit-image /
scipy ``zoom`` with ``grid_mode``) uses between a resampled array and its source. Boxes are
``[[lo, hi], ...]`` grid voxels per transposed axis, half open; they may reach outside the image,
where the preprocessed value is 0 (nnU-Net's padding value).

Paste-back follows nnU-Net's export: logits on the grid are resampled to the original grid with the
plans' ``resampling_fn_probabilities`` and thresholded (logit > 0, i.e. probability > 0.5). For
nnU-Net's default function with linear/nearest interpolation (the default plans) only the
neighbourhood of the positive voxels is resampled, with the same interpolation at the same sample
positions, which gives the values of resampling the whole region (tested against it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.preprocessing.resampling.default_resampling import (compute_new_shape, determine_do_sep_z_and_axis,
                                                                  resample_data_or_seg_to_shape)
from scipy.ndimage import affine_transform, map_coordinates, spline_filter1d

#: Logits outside the crop and the clamp of crop logits before resampling: saturated enough to
#: threshold identically, small enough that interpolation between crop and fill stays well behaved.
FILL_LOGIT = -20.0
#: Extra original voxels read on each side of the wanted ones: spline interpolation (order 3)
#: reaches past its neighbours, and values this far from a box face differ from the whole-image
#: result by < 0.2 % of the intensity range (tested).
DEFAULT_BORDER = 6

Box = Sequence[Sequence[int]]  # [[lo, hi], ...] grid voxels per transposed axis, half open


@dataclass(frozen=True)
class RegionGeometry:
    """Where a grid of preprocessed voxels lies in the original image. All tuples are in TRANSPOSED
    axis order (``transpose_forward`` of the plans) except ``image_shape_zyx``."""

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

    def original_voxels_to_region(self, voxels_zyx) -> np.ndarray:
        """(M, 3) original voxels (z, y, x) -> the region voxels (transposed axes, int) whose centres lie
        inside them, at least the nearest one each: a stroke drawn on thick slices covers every region
        slice within them (mapping centres alone would leave gaps where the region grid is finer)."""
        v = np.asarray(voxels_zyx, float).reshape(-1, 3)
        if not len(v):
            return np.zeros((0, 3), dtype=int)
        lo, hi = self._edges_to_region(v, v)
        # offsets up to the most region voxels one original voxel holds, per axis, then those beyond hi dropped
        steps = [np.arange(n) for n in (hi - lo).max(0) + 1]
        offsets = np.stack(np.meshgrid(*steps, indexing="ij"), -1).reshape(-1, 3)
        out = (lo[:, None, :] + offsets[None]).reshape(-1, 3)
        keep = np.all(out <= np.repeat(hi, len(offsets), axis=0), axis=1)
        return np.unique(out[keep], axis=0)

    def original_box_to_region(self, lo_zyx, hi_zyx) -> np.ndarray:
        """A box of original voxels (inclusive corners, z, y, x) -> (2, 3) inclusive corners of the region
        voxels whose centres lie inside it (transposed axes), at least one voxel thick."""
        lo, hi = self._edges_to_region(np.asarray(lo_zyx, float)[None], np.asarray(hi_zyx, float)[None])
        return np.stack([lo[0], hi[0]])

    def _edges_to_region(self, lo_zyx: np.ndarray, hi_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive region index ranges of the original voxel boxes [lo, hi] (rows), never empty: where no
        region centre lies inside (a region voxel larger than the box), the one nearest its centre."""
        a = self.original_to_region(lo_zyx) - 0.5 / self.scale
        b = self.original_to_region(hi_zyx) + 0.5 / self.scale
        lo, hi = np.ceil(a - 1e-9).astype(int), np.floor(b + 1e-9).astype(int)
        nearest = np.rint((a + b) / 2).astype(int)
        empty = lo > hi
        lo[empty], hi[empty] = nearest[empty], nearest[empty]
        return lo, hi

    def region_to_original(self, points) -> np.ndarray:
        """(N, 3) or (3,) region coordinates (transposed) -> original continuous voxel indices (z, y, x)."""
        p = np.asarray(points, float)
        t = np.asarray(self.start) + (p + 0.5) * self.scale - 0.5
        return t[..., list(self.transpose_backward)]

    def original_slices(self, box: "Box") -> tuple[slice, slice, slice]:
        """(z, y, x) slices of the original voxels whose centres lie inside ``box`` (region voxels per
        transposed axis, half open), cut to the image."""
        lo = np.array([b[0] for b in box], float)
        hi = np.array([b[1] for b in box], float)
        # region voxel k spans original voxel edges [start + k * scale, start + (k + 1) * scale)
        o_lo = np.ceil(np.asarray(self.start) + lo * self.scale - 0.5 - 1e-9)
        o_hi = np.ceil(np.asarray(self.start) + hi * self.scale - 0.5 - 1e-9)
        sl_t = [slice(int(max(a, 0)), int(max(min(b, n), 0))) for a, b, n in zip(o_lo, o_hi, self.image_shape_t)]
        return tuple(sl_t[i] for i in self.transpose_backward)


def image_grid(image_shape_zyx: Sequence[int], spacing_zyx: Sequence[float], plans_manager,
               configuration_manager) -> RegionGeometry:
    """nnU-Net's preprocessed grid of the whole image: the shape ``compute_new_shape`` gives it at the
    configuration's spacing, in the plans' transposed axis order."""
    image_shape = tuple(int(s) for s in image_shape_zyx)
    if len(image_shape) != 3:
        raise ValueError(f"image must be a 3D (Z, Y, X) array, got shape {image_shape}")
    tf = tuple(int(i) for i in plans_manager.transpose_forward)
    tb = tuple(int(i) for i in plans_manager.transpose_backward)
    sp_t = tuple(float(np.asarray(spacing_zyx, float)[i]) for i in tf)
    tsp = tuple(float(s) for s in configuration_manager.spacing)
    size = tuple(image_shape[i] for i in tf)
    shape = tuple(int(s) for s in compute_new_shape(size, sp_t, tsp))
    return RegionGeometry(start=(0, 0, 0), size=size, shape=shape, transpose_forward=tf, transpose_backward=tb,
                          image_shape_zyx=image_shape, original_spacing=sp_t, target_spacing=tsp)


def _preprocessor(configuration_manager):
    cls = getattr(configuration_manager, "preprocessor_class", DefaultPreprocessor)
    try:
        return cls(verbose=False)
    except TypeError:
        return cls()


def _normalised_source(image_zyx: np.ndarray, grid: RegionGeometry, lo_t: Sequence[int], hi_t: Sequence[int],
                       plans_manager, configuration_manager) -> np.ndarray:
    """Original voxels ``[lo_t, hi_t)`` (transposed axes, inside the image) transposed and normalised
    as nnU-Net normalises a case: (Z', Y', X') float32."""
    sl = [slice(None)] * 3
    for j, i in enumerate(grid.transpose_forward):
        sl[i] = slice(int(lo_t[j]), int(hi_t[j]))
    data = np.array(np.asarray(image_zyx[tuple(sl)]).transpose(grid.transpose_forward), dtype=np.float32,
                    order="C", copy=True)[None]
    if any(configuration_manager.use_mask_for_norm):
        seg = np.where(create_nonzero_mask(data)[None], 0, -1).astype(np.int8)
    else:
        seg = np.zeros((1, *data.shape[1:]), dtype=np.int8)
    data = _preprocessor(configuration_manager)._normalize(
        data, seg, configuration_manager, plans_manager.foreground_intensity_properties_per_channel)
    return np.asarray(data[0], dtype=np.float32)


def _data_resampling(configuration_manager) -> tuple[int, int, Any]:
    """(order, order_z, force_separate_z) of the plans' ``resampling_fn_data``, which must be nnU-Net's
    default function (every nnU-Net and ISRG planner writes it)."""
    fn = configuration_manager.resampling_fn_data
    if getattr(fn, "func", fn) is not resample_data_or_seg_to_shape:
        raise NotImplementedError(f"on-demand preprocessing evaluates nnU-Net's resample_data_or_seg_to_shape; the "
                                  f"plans use {getattr(fn, 'func', fn)}")
    kw = dict(configuration_manager.configuration.get("resampling_fn_data_kwargs", {}))
    return int(kw.get("order", 3)), int(kw.get("order_z", 0)), kw.get("force_separate_z", False)


def _spline_along(data: np.ndarray, first: float, step: float, n: int, axis: int, order: int) -> np.ndarray:
    """``data`` (float64) sampled along ``axis`` at ``first + k * step`` (k < n) as scipy's spline
    interpolation of ``order`` in mode 'nearest' samples it (what scikit-image's ``resize`` runs):
    the input extended by 12 edge values, prefiltered, the spline evaluated. One axis at a time,
    since the tensor-product spline is separable: ``order + 1`` taps per axis instead of
    ``(order + 1) ** 3`` for a whole 3D evaluation (an axis that is not resampled is sampled at its
    knots, where the interpolating spline is the data, and needs no pass at all)."""
    pos = first + step * np.arange(n)
    if order <= 1:
        return _interp_1d(data, pos, axis, order)
    if order != 3:  # other orders: scipy's own evaluation along this axis
        matrix, offset = np.ones(data.ndim), np.zeros(data.ndim)
        matrix[axis], offset[axis] = step, first
        shape = list(data.shape)
        shape[axis] = n
        return affine_transform(data, matrix, offset=offset, output_shape=tuple(shape), order=order, mode="nearest")
    pad = 12
    widths = [(0, 0)] * data.ndim
    widths[axis] = (pad, pad)
    coef = spline_filter1d(np.pad(data, widths, mode="edge"), order=3, axis=axis, mode="nearest",
                           output=np.float64)
    p = pos + pad
    i = np.floor(p).astype(np.intp)
    t = p - i
    # cubic B-spline weights of the taps i - 1 .. i + 2
    weights = ((1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6, (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6,
               t ** 3 / 6)
    shape = [1] * data.ndim
    shape[axis] = n
    last = coef.shape[axis] - 1
    return sum(np.take(coef, np.clip(i - 1 + k, 0, last), axis=axis) * w.reshape(shape)
               for k, w in enumerate(weights))


def _resample_axes(data: np.ndarray, positions: list[np.ndarray], axes: Sequence[int], resampled: Sequence[bool],
                   order: int) -> np.ndarray:
    """``data`` at ``positions`` on ``axes``: a spline pass along each resampled axis, integer positions
    taken as they are on the others."""
    for ax in axes:
        p = positions[ax]
        if resampled[ax] and len(p):
            data = _spline_along(data, p[0], p[1] - p[0] if len(p) > 1 else 1.0, len(p), ax, order)
        else:
            data = np.take(data, np.rint(p).astype(np.intp), axis=ax)
    return data


def _resample_to_grid(src: np.ndarray, positions: list[np.ndarray], grid: RegionGeometry,
                      configuration_manager) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg_to_shape`` of a source box, evaluated at ``positions`` (per
    transposed axis, regular, in the box's voxel coordinates) only. Like scikit-image's ``resize``,
    the spline's output is clipped to the range of its input: the box's (3D), each slice's (separate z)."""
    order, order_z, force_sep = _data_resampling(configuration_manager)
    resampled = [n != m for n, m in zip(grid.size, grid.shape)]
    if not any(resampled):  # nnU-Net returns the data unchanged
        return src[np.ix_(*[np.rint(p).astype(np.intp) for p in positions])]
    do_sep, axis = determine_do_sep_z_and_axis(force_sep, list(grid.original_spacing), list(grid.target_spacing))
    data = src.astype(np.float64)
    if not do_sep:
        out = _resample_axes(data, positions, range(3), resampled, order)
        return np.clip(out, data.min(), data.max())
    # separate z: each slice resized in-plane (order, clipped to that slice's range), then order_z
    # (nearest by default) along the low-res axis
    plane = tuple(a for a in range(3) if a != axis)
    planar = np.clip(_resample_axes(data, positions, plane, resampled, order),
                     data.min(axis=plane, keepdims=True), data.max(axis=plane, keepdims=True))
    if not resampled[axis]:
        return np.take(planar, np.rint(positions[axis]).astype(np.intp), axis=axis)
    return _interp_1d(planar, positions[axis], axis, order_z)


def preprocess_box(image_zyx: np.ndarray, grid: RegionGeometry, box: Box, plans_manager, configuration_manager,
                   border: int = DEFAULT_BORDER) -> np.ndarray:
    """The voxels of nnU-Net's preprocessed ``grid`` inside ``box``, computed from the original image.

    Args:
        image_zyx: the original CT (Z, Y, X) in HU (``sitk.GetArrayViewFromImage`` order).
        grid: :func:`image_grid` of that image.
        box: ``[[lo, hi], ...]`` grid voxels per transposed axis (half open; may reach outside the
            image, where the value is 0).
        plans_manager, configuration_manager: the model's nnU-Net plans and 3d_fullres configuration.

    Returns:
        (1, *box size) float32, normalised, at the target spacing.
    """
    size = [int(hi) - int(lo) for lo, hi in box]
    out = np.zeros((1, *size), dtype=np.float32)
    inside = [(max(int(lo), 0), min(int(hi), m)) for (lo, hi), m in zip(box, grid.shape)]
    if any(a >= b for a, b in inside):
        return out
    src_lo, src_hi, positions = [], [], []
    for ax, ((a, b), n, s) in enumerate(zip(inside, grid.size, grid.scale)):
        p = (np.arange(a, b) + 0.5) * s - 0.5
        pad = border if n != grid.shape[ax] else 0
        lo = max(int(math.floor(p[0])) - pad, 0)
        hi = min(int(math.ceil(p[-1])) + 1 + pad, n)
        src_lo.append(lo)
        src_hi.append(hi)
        # positions before the first voxel centre stay as they are: nnU-Net's spline extends the
        # image ('nearest') there, and so does this one where the source box starts at the border
        positions.append(p - lo)
    src = _normalised_source(image_zyx, grid, src_lo, src_hi, plans_manager, configuration_manager)
    values = _resample_to_grid(src, positions, grid, configuration_manager)
    out[(0, *[slice(a - int(lo), b - int(lo)) for (a, b), (lo, _) in zip(inside, box)])] = values
    return out


def zoom_box(image_zyx: np.ndarray, grid: RegionGeometry, box: Box, out_shape: Sequence[int], plans_manager,
             configuration_manager) -> np.ndarray:
    """A zoomed-out view: the grid voxels of ``box`` averaged down to ``out_shape`` (area averaging,
    which does not alias), computed from the original voxels the box covers (normalised, 0 outside
    the image). Where the plans do not resample this is exactly :func:`preprocess_box` of the box
    averaged down. Returns (1, *out_shape) float32."""
    lo_src, hi_src = [], []
    for (lo, hi), s in zip(box, grid.scale):
        # grid voxel k covers original voxel edges [k * s, (k + 1) * s)
        lo_src.append(int(math.floor(int(lo) * s + 1e-9)))
        hi_src.append(int(math.ceil(int(hi) * s - 1e-9)))
    full = np.zeros([b - a for a, b in zip(lo_src, hi_src)], dtype=np.float32)
    inside = [(max(a, 0), min(b, n)) for a, b, n in zip(lo_src, hi_src, grid.size)]
    if all(a < b for a, b in inside):
        full[tuple(slice(a - lo, b - lo) for (a, b), lo in zip(inside, lo_src))] = _normalised_source(
            image_zyx, grid, [a for a, _ in inside], [b for _, b in inside], plans_manager, configuration_manager)
    return area_resize(torch.from_numpy(full)[None], out_shape).numpy()


def area_resize(image: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """(C, D, H, W) -> (C, *out_shape) by area averaging (each output voxel the mean of the input
    voxels under it; torch's adaptive average pooling)."""
    return F.adaptive_avg_pool3d(image[None].float(), tuple(int(s) for s in out_shape))[0]


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


def _positive_box(crop_logits, crop_bbox, region_shape) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounding box (region voxels, clipped to the region) of the crop's positive logits, or None."""
    logits = crop_logits.numpy() if torch.is_tensor(crop_logits) else np.asarray(crop_logits)
    box = bounding_box(logits > 0)
    if box is None:
        return None
    off = np.array([b[0] for b in crop_bbox])
    lo = np.maximum(box[0] + off, 0)
    hi = np.minimum(box[1] + off, np.asarray(region_shape))
    return None if np.any(lo >= hi) else (lo, hi)


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
        positive_box = _positive_box(crop_logits, crop_bbox, m)
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
