"""Slices of a CT volume as PNG for the viewer: three planes, grey windows, lesion overlays.

Planes and their display orientation (the volume is a (Z, Y, X) numpy array, SimpleITK order):

- ``axial``    index z: rows = y (row 0 = y 0), columns = x;
- ``coronal``  index y: rows = z *reversed* (row 0 = the last z, the head end of a standard LPS CT),
  columns = x;
- ``sagittal`` index x: rows = z reversed, columns = y.

Pixels are voxels (no resampling): the viewer stretches them by ``pixel_spacing_mm`` from
:func:`plane_geometry` to keep the physical aspect ratio.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from scipy.ndimage import binary_erosion

from nnunet_isrg.report.key_image import WINDOWS

PLANES = ("axial", "coronal", "sagittal")
#: plane -> (volume axis sliced, axis of rows, axis of columns, rows reversed)
_PLANE_AXES = {"axial": (0, 1, 2, False), "coronal": (1, 0, 2, True), "sagittal": (2, 0, 1, True)}
_AXIS_NAMES = "zyx"

#: preset name -> (width, level) in HU; the values are the key image's (report/key_image.py)
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft": WINDOWS["soft_tissue"],   # 400 / 40
    "lung": WINDOWS["lung"],          # 1500 / -600
    "bone": WINDOWS["bone"],          # 1800 / 400
}
_WINDOW_ALIASES = {"soft_tissue": "soft", "soft-tissue": "soft"}
WINDOW_NAMES = tuple(WINDOW_PRESETS) + ("custom",)

#: colour of the current lesion, and the palette the other lesions cycle through (RGB)
CURRENT_COLOUR = (255, 48, 48)
OTHER_COLOURS = ((64, 156, 255), (72, 220, 110), (255, 200, 40), (200, 100, 255), (0, 215, 215), (255, 130, 0))


class SliceError(ValueError):
    """A slice request that cannot be served (unknown plane or window, index out of range, bad width)."""


def resolve_window(window: str = "soft", level: float | None = None, width: float | None = None) -> tuple[float, float]:
    """A preset name (``soft``, ``lung``, ``bone``) or ``custom`` with ``level``/``width`` -> (width, level) HU.

    A preset with ``level`` or ``width`` given uses those instead of the preset's values.
    """
    name = _WINDOW_ALIASES.get(window, window)
    if name == "custom":
        if level is None or width is None:
            raise SliceError("window=custom needs both 'level' and 'width' (HU), e.g. window=custom&level=50&width=350")
        w, l = float(width), float(level)
    elif name in WINDOW_PRESETS:
        w, l = WINDOW_PRESETS[name]
        w = float(width) if width is not None else w
        l = float(level) if level is not None else l
    else:
        raise SliceError(f"unknown window '{window}'; use one of {list(WINDOW_NAMES)} "
                         f"(presets width/level: {WINDOW_PRESETS})")
    if not (np.isfinite(w) and np.isfinite(l)) or w <= 0:
        raise SliceError(f"window width must be a positive number of HU and level finite, got width={width}, "
                         f"level={level}")
    return w, l


def plane_geometry(shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> dict:
    """Per plane: number of slices, PNG size (rows, columns), mm per row/column, axis names, flip."""
    out = {}
    for plane, (axis, r, c, flip) in _PLANE_AXES.items():
        out[plane] = {"axis": _AXIS_NAMES[axis], "n_slices": int(shape_zyx[axis]),
                      "rows": _AXIS_NAMES[r], "columns": _AXIS_NAMES[c], "rows_reversed": flip,
                      "size": [int(shape_zyx[r]), int(shape_zyx[c])],
                      "pixel_spacing_mm": [float(spacing_zyx[r]), float(spacing_zyx[c])]}
    return out


def extract_plane(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice of a (Z, Y, X) volume in display orientation (see the module docstring)."""
    if plane not in _PLANE_AXES:
        raise SliceError(f"unknown plane '{plane}'; use one of {list(PLANES)}")
    axis, _, _, flip = _PLANE_AXES[plane]
    n = volume.shape[axis]
    if not 0 <= int(index) < n:
        raise SliceError(f"slice index {index} is outside the {plane} plane: 0..{n - 1} "
                         f"({_AXIS_NAMES[axis]} axis of the (z, y, x) shape {tuple(volume.shape)})")
    sl = np.take(volume, int(index), axis=axis)
    return sl[::-1] if flip else sl


def window_to_uint8(slice_hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> 0..255 grey: ``level - width/2`` black, ``level + width/2`` white, linear between."""
    lo = level - width / 2.0
    g = (np.asarray(slice_hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


def lesion_colour(label: int, current: int | None) -> tuple[int, int, int]:
    """Overlay colour of lesion ``label``: :data:`CURRENT_COLOUR` for the current one, else the palette."""
    if current is not None and int(label) == int(current):
        return CURRENT_COLOUR
    return OTHER_COLOURS[(int(label) - 1) % len(OTHER_COLOURS)]


def overlay_labels(grey: np.ndarray, labels: np.ndarray, current: int | None = None, alpha: float = 0.35) -> np.ndarray:
    """RGB (rows, cols, 3) uint8: ``grey`` with each lesion filled at ``alpha`` and its outline opaque."""
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for lab in np.unique(labels):
        if lab == 0:
            continue
        m = labels == lab
        colour = np.asarray(lesion_colour(int(lab), current), np.float32)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
        # outline = mask minus its erosion; a border on the slice edge counts as outline too
        edge = m & ~binary_erosion(m, border_value=0)
        rgb[edge] = colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """A (rows, cols) grey or (rows, cols, 3) RGB uint8 array -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def render_slice_png(volume_hu: np.ndarray, plane: str, index: int, width: float, level: float,
                     labels: np.ndarray | None = None, current: int | None = None) -> bytes:
    """PNG of one slice of ``volume_hu`` (Z, Y, X, HU) windowed at ``width``/``level``; with ``labels``
    (a (Z, Y, X) label map, 0 = background) the lesions are overlaid (the ``current`` one in red)."""
    grey = window_to_uint8(extract_plane(volume_hu, plane, index), width, level)
    if labels is None:
        return encode_png(grey)
    if labels.shape != volume_hu.shape:
        raise SliceError(f"label map shape {labels.shape} does not match the image shape {volume_hu.shape}")
    return encode_png(overlay_labels(grey, extract_plane(labels, plane, index), current))


def window_presets() -> Mapping[str, dict]:
    """Presets for clients: name -> {"width", "level"} (HU)."""
    return {k: {"width": w, "level": l} for k, (w, l) in WINDOW_PRESETS.items()}
