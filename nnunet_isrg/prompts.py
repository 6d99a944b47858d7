"""The prompts a reader gives beside clicks: boxes, scribbles and lassos, as voxel geometry.

Coordinates are voxel indices (z, y, x) of one image grid (numpy / ``GetArrayFromImage`` order),
continuous, voxel ``i`` centred at ``i``. What each prompt covers:

- :class:`Box`: the voxels holding two opposite corners and every voxel between them (a reader drags
  from one corner voxel to the other). A box one voxel thick along an axis is a 2D box drawn
  on that slice (:attr:`Box.slice_axis`); the CVPR 2025 challenge's 3D box is the lesion's bounding
  box, and :func:`jittered_box` draws one the way its simulator does.
- a scribble: a polyline through voxel points; :func:`scribble_voxels` are the voxels it passes
  through (sampled every half voxel, so a diagonal stroke has no gaps in 26-connectivity).
- a lasso: a closed polygon drawn on one slice; :func:`lasso_mask` is the slice's voxels whose
  centres lie inside it or on its outline (scikit-image's ``polygon`` filling plus the outline).

A prompt is positive ("this is lesion") or negative ("this is not").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

AXES = "zyx"
#: the kinds of prompt a model may have been trained with; a checkpoint states its own under
#: :data:`PROMPT_KINDS_KEY` (one without the entry was trained with clicks only)
PROMPT_KINDS = ("clicks", "boxes", "scribbles", "lassos")
PROMPT_KINDS_KEY = "isrg_prompt_kinds"
#: the network's point labels of a box's lower and higher corner (SAM's 2 and 3; clicks are 1 and 0)
BOX_LOW, BOX_HIGH = 2, 3
#: one prompt's ``kind`` as ``ISRGSession.add_prompt``, ``isrg predict``'s prompts file and the HTTP API name it
PROMPT_NAMES = ("click", "box", "scribble", "lasso")
#: a scribble is sampled every half voxel; longer strokes than this many samples are refused (a
#: request of a few KB must not allocate gigabytes)
MAX_SCRIBBLE_SAMPLES = 2_000_000


class PromptError(ValueError):
    """A prompt that cannot be placed: outside the image, too few points, a lasso off its slice."""


def _point(p: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(p, dtype=float).ravel()
    if a.shape != (3,) or not np.isfinite(a).all():
        raise PromptError(f"{what} needs three finite coordinates (z, y, x), got {p!r}")
    return a


@dataclass(frozen=True)
class Box:
    """An axis-aligned box between two corners (z, y, x), the voxels holding them included; ``lo <= hi``."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    @classmethod
    def from_corners(cls, corner_a: Sequence[float], corner_b: Sequence[float]) -> "Box":
        a, b = _point(corner_a, "a box corner"), _point(corner_b, "a box corner")
        return cls(tuple(np.minimum(a, b).tolist()), tuple(np.maximum(a, b).tolist()))

    @property
    def slice_axis(self) -> int | None:
        """The axis (0 z, 1 y, 2 x) a 2D box is drawn across (its two corners on one slice), else None."""
        first, last = self.voxel_range()
        flat = [i for i in range(3) if first[i] == last[i]]   # one voxel thick, as the box holds voxels
        return flat[0] if len(flat) == 1 else None

    def voxel_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(3,) the first and (3,) the last voxel index the box holds on each axis (inclusive)."""
        return np.ceil(np.asarray(self.lo) - 0.5), np.floor(np.asarray(self.hi) + 0.5)

    def voxel_slices(self, shape: Sequence[int]) -> tuple[slice, slice, slice]:
        """The box's voxels as slices of an array of ``shape``, clipped to it (PromptError if none)."""
        first, last = self.voxel_range()
        lo = np.maximum(first, 0).astype(int)
        hi = np.minimum(last, np.asarray(shape) - 1).astype(int)
        if np.any(hi < lo):
            raise PromptError(f"box {list(self.lo)}-{list(self.hi)} lies outside the image of shape (z, y, x) "
                              f"{tuple(shape)}")
        return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))

    def voxel_corners(self, shape: Sequence[int]) -> np.ndarray:
        """(2, 3) int: the first and the last voxel (z, y, x) of :meth:`voxel_slices`."""
        sl = self.voxel_slices(shape)
        return np.array([[s.start for s in sl], [s.stop - 1 for s in sl]])

    def excludes(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: which voxel points (N, 3) (z, y, x) a positive box says are not lesion: every
        voxel outside a 3D box; for a 2D box, the voxels of its slice outside it (a box drawn on one
        slice speaks for that slice only)."""
        first, last = self.voxel_range()
        voxels = np.floor(np.asarray(points, dtype=float).reshape(-1, 3) + 0.5)   # the voxels holding them
        within = (voxels >= first) & (voxels <= last)
        speaks = within[:, self.slice_axis] if self.slice_axis is not None else True
        return speaks & ~within.all(1)

    def overridden_by(self, *positives: np.ndarray) -> bool:
        """Whether any of the positive prompts' voxel points (each (N, 3), z y x: clicks, a stroke's
        voxels) lies where the box :meth:`excludes`: the reader drew it too tight, and it bounds nothing."""
        points = [np.asarray(p, dtype=float).reshape(-1, 3) for p in positives]
        return bool(points) and bool(self.excludes(np.concatenate(points)).any())

    def bound(self, values, region: Sequence[Sequence[int]], fill) -> None:
        """Sets the voxels of ``values`` that the box excludes (:meth:`excludes`) to ``fill``, in place.
        ``values``: a numpy array or torch tensor over ``region`` ((start, stop) per axis, half open,
        in the box's voxels); only slices are written, so no array of the region's size is made."""
        first, last = self.voxel_range()
        start, stop = (np.array([r[i] for r in region]) for i in (0, 1))
        lo = np.clip(first - start, 0, stop - start).astype(int)
        hi = np.clip(last + 1 - start, 0, stop - start).astype(int)
        base = [slice(None)] * 3
        if self.slice_axis is not None:            # a 2D box: its slice, if the region holds it
            if lo[self.slice_axis] >= hi[self.slice_axis]:
                return
            base[self.slice_axis] = slice(lo[self.slice_axis], hi[self.slice_axis])
        for axis in (a for a in range(3) if a != self.slice_axis):
            for part in (slice(0, lo[axis]), slice(hi[axis], None)):
                index = list(base)
                index[axis] = part
                values[tuple(index)] = fill
            base[axis] = slice(lo[axis], hi[axis])   # the faces already written stay out of the next axes

    def mask(self, shape: Sequence[int]) -> np.ndarray:
        out = np.zeros(tuple(shape), dtype=bool)
        out[self.voxel_slices(shape)] = True
        return out


def bounding_box(mask: np.ndarray) -> Box:
    """The tight box of a mask's voxels (PromptError for an empty mask)."""
    idx = np.argwhere(mask)
    if not len(idx):
        raise PromptError("an empty mask has no bounding box")
    return Box(tuple(idx.min(0).astype(float).tolist()), tuple(idx.max(0).astype(float).tolist()))


def jittered_box(mask: np.ndarray, rng: np.random.Generator, max_shift_fraction: float = 0.1,
                 max_shift_voxels: int = 5) -> Box:
    """The lesion's bounding box with each face moved outwards by a random amount, as the CVPR 2025
    interactive challenge draws its first prompt: up to ``max_shift_fraction`` of the box's extent on
    that axis and at most ``max_shift_voxels``, clipped to the image. It always holds the lesion."""
    tight = bounding_box(mask)
    lo, hi = np.asarray(tight.lo), np.asarray(tight.hi)
    limit = np.minimum(np.floor((hi - lo + 1) * max_shift_fraction), max_shift_voxels)
    lo = np.maximum(lo - rng.integers(0, limit + 1), 0)
    hi = np.minimum(hi + rng.integers(0, limit + 1), np.asarray(mask.shape) - 1)
    return Box(tuple(lo.astype(float).tolist()), tuple(hi.astype(float).tolist()))


def scribble_voxels(points: Sequence[Sequence[float]], shape: Sequence[int]) -> np.ndarray:
    """(M, 3) int voxels (z, y, x) a polyline through ``points`` passes through, in drawing order without
    repeats, inside ``shape``. One point is a one-voxel scribble."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 3 or not len(pts) or not np.isfinite(pts).all():
        raise PromptError(f"a scribble needs a list of finite (z, y, x) points, got {points!r}")
    steps = [max(int(np.ceil(2 * np.abs(b - a).max())), 1) for a, b in zip(pts[:-1], pts[1:])]  # every half voxel
    if sum(steps) > MAX_SCRIBBLE_SAMPLES:
        raise PromptError(f"the scribble is {sum(steps) // 2} voxels long; at most {MAX_SCRIBBLE_SAMPLES // 2} are "
                          f"taken")
    samples = [pts[:1]]
    for (a, b), n in zip(zip(pts[:-1], pts[1:]), steps):
        samples.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    vox = np.rint(np.concatenate(samples)).astype(int)
    inside = np.all((vox >= 0) & (vox < np.asarray(shape)), axis=1)
    if not inside.any():
        raise PromptError(f"the scribble lies outside the image of shape (z, y, x) {tuple(shape)}")
    vox = vox[inside]
    _, first = np.unique(vox, axis=0, return_index=True)
    return vox[np.sort(first)]


def lasso_mask(slice_axis: int, slice_index: int, polygon: Sequence[Sequence[float]],
               shape: Sequence[int]) -> np.ndarray:
    """Bool mask of ``shape``: on slice ``slice_index`` of axis ``slice_axis`` (0 z, 1 y, 2 x), the voxels
    inside the closed ``polygon`` or on its outline. ``polygon`` is (K, 2): in-plane coordinates in the
    order of the two remaining axes (for an axial lasso, ``slice_axis=0``: (y, x))."""
    from skimage.draw import polygon as fill_polygon

    if slice_axis not in (0, 1, 2):
        raise PromptError(f"slice_axis must be 0 (z), 1 (y) or 2 (x), got {slice_axis!r}")
    if not 0 <= int(slice_index) < shape[slice_axis]:
        raise PromptError(f"lasso slice {slice_index} is outside axis {AXES[slice_axis]} of the image "
                          f"(0-{shape[slice_axis] - 1})")
    poly = np.asarray(polygon, dtype=float)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.isfinite(poly).all():
        raise PromptError(f"a lasso needs at least three finite in-plane points, got {polygon!r}")
    plane = tuple(s for i, s in enumerate(shape) if i != slice_axis)
    inside = np.zeros(plane, dtype=bool)
    rr, cc = fill_polygon(poly[:, 0], poly[:, 1], shape=plane)
    inside[rr, cc] = True
    closed = np.concatenate([poly, poly[:1]])
    outline = scribble_voxels(np.insert(closed, 0, 0.0, axis=1), (1, *plane))[:, 1:]
    inside[tuple(outline.T)] = True
    out = np.zeros(tuple(shape), dtype=bool)
    index = [slice(None)] * 3
    index[slice_axis] = int(slice_index)
    out[tuple(index)] = inside
    return out
