"""Key image of a lesion: the axial slice of its RECIST long axis with contour and axes drawn (PNG).

The slice is shown in image index orientation (row 0 at the top, x to the right: for an LPS CT with
identity direction the radiological convention) with the correct physical aspect ratio for
anisotropic in-plane spacing: the PNG is ``width_px`` wide and as high as the field of view's
physical height requires. The grey window is chosen for the tissue around the lesion
(:func:`choose_window`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from nnunet_isrg.files import atomic_path
from nnunet_isrg.report.measurements import BONE_HU, lesion_measurements

#: name -> (width, level) in HU
WINDOWS = {"soft_tissue": (400.0, 40.0), "lung": (1500.0, -600.0), "bone": (1800.0, 400.0)}
#: the shell is "air dominated" / "bone dominated" above this fraction of its voxels
DOMINANT_FRACTION = 0.5
CONTOUR_COLOUR = (1.0, 0.0, 0.0)
LONG_AXIS_COLOUR = (1.0, 1.0, 0.0)
SHORT_AXIS_COLOUR = (0.0, 1.0, 1.0)


def choose_window(measurements: Mapping) -> str:
    """"lung" if the surrounding shell is mostly air (< -400 HU), "bone" if the lesion (mean > 300 HU)
    or its surroundings are mostly bone, else "soft_tissue"."""
    shell = measurements.get("shell") or {}
    air, bone = shell.get("air_fraction"), shell.get("bone_fraction")
    if air is not None and air > DOMINANT_FRACTION:
        return "lung"
    if measurements["hu"]["mean"] > BONE_HU or (bone is not None and bone > DOMINANT_FRACTION):
        return "bone"
    return "soft_tissue"


def _fov(center: float, half: float, lo: float, hi: float) -> tuple:
    """Interval of length 2*half around center, shifted (not shrunk) into [lo, hi] when possible."""
    a, b = center - half, center + half
    if b - a >= hi - lo:
        return lo, hi
    if a < lo:
        a, b = lo, lo + (b - a)
    if b > hi:
        a, b = hi - (b - a), hi
    return a, b


def write_key_image(image: sitk.Image, mask, out_path: str | os.PathLike, measurements: Mapping | None = None,
                    window: str | tuple | None = None, width_px: int = 512, fov_mm: float | str = "auto",
                    title: str | None = None) -> dict:
    """Writes the key-image PNG atomically and returns ``{"path", "window", "width_hu", "level_hu", "size_px",
    "slice_index"}`` (``size_px`` = (width, height)).

    ``image``: CT in HU; ``mask``: bool z,y,x array; ``measurements``: :func:`lesion_measurements`
    output or a :class:`LesionReport`'s ``measurements`` (computed when not given); ``window``: a
    name of :data:`WINDOWS`, a (width, level) pair, or None to choose; ``fov_mm``: side of the square
    field of view around the lesion, "auto" (max(4 x long axis, 80 mm)) or "full" (whole slice).
    """
    # Figure + Agg canvas directly: no pyplot, so no global backend state is touched
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.lines import Line2D

    if hasattr(measurements, "measurements"):  # a LesionReport
        measurements = measurements.measurements
    mask = np.asarray(mask, bool)
    if measurements is None:
        measurements = lesion_measurements(image, mask)
    arr = sitk.GetArrayViewFromImage(image)
    if arr.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} (z,y,x) does not match the image shape {arr.shape}")
    if window is None:
        window = choose_window(measurements)
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window '{window}'; allowed: {list(WINDOWS)} or a (width, level) pair")
        name, (ww, wl) = window, WINDOWS[window]
    else:
        name, (ww, wl) = "custom", (float(window[0]), float(window[1]))

    r = measurements["recist"]
    z = int(r["slice_index"])
    sx, sy = image.GetSpacing()[0], image.GetSpacing()[1]
    ny, nx = arr.shape[1], arr.shape[2]
    # field of view in mm of the index frame (pixel i covers [(i - 0.5) * s, (i + 0.5) * s])
    lo_x, hi_x, lo_y, hi_y = -0.5 * sx, (nx - 0.5) * sx, -0.5 * sy, (ny - 0.5) * sy
    if fov_mm == "full":
        x0, x1, y0, y1 = lo_x, hi_x, lo_y, hi_y
    else:
        side = max(4.0 * r["long_axis_mm"], 80.0) if fov_mm == "auto" else float(fov_mm)
        ys, xs = np.nonzero(mask[z])
        cx, cy = 0.5 * (xs.min() + xs.max()) * sx, 0.5 * (ys.min() + ys.max()) * sy
        x0, x1 = _fov(cx, side / 2, lo_x, hi_x)
        y0, y1 = _fov(cy, side / 2, lo_y, hi_y)
    # whole pixels only, so the drawn contour lines up with the image
    i0, i1 = int(np.floor(x0 / sx + 0.5)), int(np.ceil(x1 / sx - 0.5))
    j0, j1 = int(np.floor(y0 / sy + 0.5)), int(np.ceil(y1 / sy - 0.5))
    i0, j0, i1, j1 = max(i0, 0), max(j0, 0), min(i1, nx - 1), min(j1, ny - 1)
    crop = np.asarray(arr[z, j0:j1 + 1, i0:i1 + 1], dtype=np.float32)
    mcrop = mask[z, j0:j1 + 1, i0:i1 + 1]
    ext = ((i0 - 0.5) * sx, (i1 + 0.5) * sx, (j1 + 0.5) * sy, (j0 - 0.5) * sy)  # left, right, bottom, top
    w_mm, h_mm = ext[1] - ext[0], ext[2] - ext[3]
    width_px = int(width_px)
    height_px = max(int(round(width_px * h_mm / w_mm)), 1)

    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(crop, cmap="gray", vmin=wl - ww / 2, vmax=wl + ww / 2, extent=ext, interpolation="bilinear",
              aspect="auto")
    if mcrop.any():
        xs_mm = (np.arange(i0, i1 + 1)) * sx
        ys_mm = (np.arange(j0, j1 + 1)) * sy
        padded = np.pad(mcrop.astype(float), 1)  # closed contours also where the lesion meets the crop edge
        xs_p = np.concatenate([[xs_mm[0] - sx], xs_mm, [xs_mm[-1] + sx]])
        ys_p = np.concatenate([[ys_mm[0] - sy], ys_mm, [ys_mm[-1] + sy]])
        ax.contour(xs_p, ys_p, padded, levels=[0.5], colors=[CONTOUR_COLOUR], linewidths=1.5)
    for key, colour in (("long_axis_endpoints_voxel_zyx", LONG_AXIS_COLOUR),
                        ("short_axis_endpoints_voxel_zyx", SHORT_AXIS_COLOUR)):
        p = np.asarray(r[key], dtype=float)
        ax.plot(p[:, 2] * sx, p[:, 1] * sy, color=colour, linewidth=1.5, marker="+", markersize=6)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    handles = [Line2D([], [], color=CONTOUR_COLOUR, lw=1.5, label="lesion contour"),
               Line2D([], [], color=LONG_AXIS_COLOUR, lw=1.5, label=f"long axis {r['long_axis_mm']:.1f} mm"),
               Line2D([], [], color=SHORT_AXIS_COLOUR, lw=1.5, label=f"short axis {r['short_axis_mm']:.1f} mm")]
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6, facecolor="black", labelcolor="white",
              edgecolor="none")
    label = f"{title + '  ' if title else ''}slice {z}  W {ww:.0f} / L {wl:.0f} ({name.replace('_', ' ')})"
    ax.text(0.01, 0.99, label, transform=ax.transAxes, va="top", ha="left", fontsize=7, color="white")

    out_path = Path(out_path)
    with atomic_path(out_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return {"path": str(out_path), "window": name, "width_hu": ww, "level_hu": wl,
            "size_px": (width_px, height_px), "slice_index": z}
