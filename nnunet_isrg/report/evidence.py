"""Measured evidence behind each report attribute, from an HU image, a binary lesion mask and spacing.

All arrays are (z, y, x); ``spacing_zyx`` is in mm in the same order (reverse of SimpleITK's
``GetSpacing()``). Distances are in mm, intensities in HU. The quantities are deliberately simple
and explainable, so they can be printed as the "evidence" lines of a report and serve as the
features of the non-deep attribute baseline (:mod:`nnunet_isrg.evaluation.attribute_baseline`).

Regions used:

* **interior**: mask voxels deeper than ``min(1.5 mm, half the lesion's depth)`` from the boundary
  (the whole mask for tiny lesions), so partial volume at the edge does not bias the lesion's HU.
* **shell**: voxels outside the mask at a distance in ``shell_mm`` (default 1-4 mm).
* **host**: the shell voxels of the shell's dominant tissue class (:data:`TISSUE_CLASSES`), i.e.
  the tissue the lesion sits in; density contrast is measured against it.

Keys of :func:`lesion_evidence` (units in the name or below):

=============================  ===============================================================
size                           ``volume_mm3``, ``equivalent_diameter_mm``, ``max_inscribed_radius_mm``,
                               ``extent_z_mm``/``extent_y_mm``/``extent_x_mm``, ``n_components``
density                        ``mean_hu_inside`` (whole mask), ``median_hu_inside`` (interior,
                               denoised), ``mean_hu_shell``/``median_hu_shell`` (host voxels),
                               ``contrast_hu`` = median inside - median host, ``contrast_hu_mean``
                               = mean inside - mean host, ``contrast_z`` = contrast / host spread
heterogeneity                  ``std_hu_inside`` (interior, denoised with a 1 mm Gaussian),
                               ``texture_std_hu`` (whole mask, denoised, after removing the mean
                               radial profile: texture without edge ramp or partial volume),
                               ``bandpass_std_hu`` (interior, 1-3 mm band-pass), ``iqr_hu_inside``, ``std_hu_shell`` (host, same
                               denoising), ``heterogeneity_ratio`` = std inside / std host,
                               ``noise_hu`` (robust noise estimate in the host)
margin                         ``margin_gradient_hu_per_mm`` (mean gradient magnitude on the
                               boundary); a blurred step fitted to the mean radial HU profile
                               (-4..+6 mm from the boundary, :func:`fit_edge`) gives ``edge_step_hu``
                               and ``edge_width_mm`` (10-90 % rise distance, 2.56 sigma);
                               ``margin_sharpness_per_mm`` = 1 / width, and
                               ``margin_gradient_normalised_per_mm`` = gradient / step;
                               ``rim_contrast_hu`` = mean of the outermost mask layer - interior
                               median (a capsule or enhancing rim); ``outer_spill_fraction`` =
                               (median of the first outside layer - host) / contrast (NaN when
                               |contrast| < 15 HU): lesion-like HU spilling past the label
shape                          ``sphericity`` (marching cubes: pi^(1/3) (6V)^(2/3) / A, 1 for a
                               sphere), ``solidity`` (V / convex hull V), ``elongation`` and
                               ``flatness`` (sqrt of PCA eigenvalue ratios minor/major and
                               least/major, 1 for a sphere), ``thickness_ratio`` (max inscribed
                               radius / equivalent-sphere radius: 1 for a ball, small for a wall)
invasion                       ``shell_fraction_<class>`` for each tissue class, ``contact_fraction``
                               = 1 - fraction of the host class in the shell (other tissue touching
                               the lesion), ``shell_class_entropy`` (bits); with ``organ_labels``:
                               ``organ_contact_fraction`` (shell voxels in another structure than the
                               lesion's own) and ``n_adjacent_structures`` (others covering >= 2 %)
=============================  ===============================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

#: HU bins used to classify shell tissue (upper bounds; the last class is open-ended)
TISSUE_CLASSES: dict[str, tuple[float, float]] = {
    "air": (-np.inf, -400.0),
    "fat": (-400.0, -30.0),
    "soft": (-30.0, 150.0),
    "enhanced": (150.0, 450.0),
    "dense": (450.0, np.inf),
}

DEFAULT_SHELL_MM = (1.0, 4.0)


class EvidenceError(ValueError):
    """Input that cannot be measured (empty mask, shape mismatch, bad spacing)."""


def _check(image_hu: np.ndarray, mask: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray, tuple]:
    image = np.asarray(image_hu, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if image.ndim != 3 or image.shape != m.shape:
        raise EvidenceError(f"image {image.shape} and mask {m.shape} must be 3D arrays (z, y, x) of one shape")
    sp = tuple(float(v) for v in spacing_zyx)
    if len(sp) != 3 or min(sp) <= 0:
        raise EvidenceError(f"spacing_zyx must be three positive numbers (mm, z y x), got {spacing_zyx!r}")
    if not m.any():
        raise EvidenceError("the lesion mask is empty")
    if not np.isfinite(image[m]).all():
        raise EvidenceError("the image has NaN/inf values inside the lesion")
    return image, m, sp


def crop_to_lesion(mask: np.ndarray, spacing_zyx, pad_mm: float) -> tuple[slice, ...]:
    """Slices of the mask's bounding box grown by ``pad_mm`` (clipped to the image)."""
    box = ndi.find_objects(np.asarray(mask).astype(np.uint8))[0]
    return tuple(slice(max(s.start - int(np.ceil(pad_mm / d)), 0), min(s.stop + int(np.ceil(pad_mm / d)), n))
                 for s, d, n in zip(box, spacing_zyx, mask.shape))


def signed_distance_mm(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Negative inside, positive outside: distance (mm) to the nearest voxel of the other side."""
    inside = ndi.distance_transform_edt(mask, sampling=spacing_zyx)
    outside = ndi.distance_transform_edt(~mask, sampling=spacing_zyx)
    return np.where(mask, -inside, outside).astype(np.float32)


def _classes(values_hu: np.ndarray) -> np.ndarray:
    """Index into :data:`TISSUE_CLASSES` of each value."""
    uppers = [hi for lo, hi in TISSUE_CLASSES.values()][:-1]
    return np.digitize(values_hu, uppers)


def _class_of(value_hu: float) -> str:
    return list(TISSUE_CLASSES)[int(_classes(np.array([value_hu]))[0])]


def tissue_class_fractions(values_hu: np.ndarray) -> dict[str, float]:
    """Fraction of values in each :data:`TISSUE_CLASSES` bin."""
    n = max(values_hu.size, 1)
    return {name: float(np.count_nonzero((values_hu >= lo) & (values_hu < hi))) / n
            for name, (lo, hi) in TISSUE_CLASSES.items()}


def mesh_sphericity(mask: np.ndarray, spacing_zyx) -> tuple[float, float, float, np.ndarray]:
    """(sphericity, surface area mm^2, volume mm^3, vertices) from a marching-cubes mesh.

    The mask is lightly smoothed (Gaussian, 0.75 voxel) before meshing at 0.5 so the voxel
    staircase does not inflate the area; a voxelised sphere of radius 10 voxels gives ~0.99.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask.astype(np.float32), 3)
    smooth = ndi.gaussian_filter(padded, 0.75)
    verts, faces, _, _ = marching_cubes(smooth, 0.5, spacing=tuple(spacing_zyx))
    area = float(mesh_surface_area(verts, faces))
    # volume enclosed by the mesh (divergence theorem); orientation-independent via abs
    tri = verts[faces]
    volume = float(abs(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) / 6.0)
    if area <= 0 or volume <= 0:
        return float("nan"), area, volume, verts
    return float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area), area, volume, verts


def _solidity(verts: np.ndarray, volume: float) -> float:
    from scipy.spatial import ConvexHull, QhullError

    try:
        return float(min(volume / ConvexHull(verts).volume, 1.0))
    except (QhullError, ValueError):
        return float("nan")


def _pca_shape(mask: np.ndarray, spacing_zyx) -> tuple[float, float]:
    pts = np.argwhere(mask) * np.asarray(spacing_zyx)
    if len(pts) < 4:
        return 1.0, 1.0
    ev = np.sort(np.clip(np.linalg.eigvalsh(np.cov(pts.T)), 1e-9, None))[::-1]
    return float(np.sqrt(ev[1] / ev[0])), float(np.sqrt(ev[2] / ev[0]))


def radial_profile(image: np.ndarray, sd_mm: np.ndarray, bins_mm: np.ndarray,
                   region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean HU per signed-distance bin: (bin centre of mass in mm, mean HU); empty bins dropped."""
    sel = np.ones(image.shape, bool) if region is None else region
    sel = sel & (sd_mm >= bins_mm[0]) & (sd_mm < bins_mm[-1])
    d, v = sd_mm[sel], image[sel]
    idx = np.digitize(d, bins_mm) - 1
    count = np.bincount(idx, minlength=len(bins_mm) - 1)
    keep = count >= 3
    centre = np.bincount(idx, d, minlength=len(bins_mm) - 1)[keep] / count[keep]
    mean = np.bincount(idx, v, minlength=len(bins_mm) - 1)[keep] / count[keep]
    return centre, mean


def fit_edge(d_mm: np.ndarray, profile: np.ndarray,
             sigmas_mm: np.ndarray = np.geomspace(0.3, 6.0, 40)) -> tuple[float, float, float]:
    """Least-squares fit of a Gaussian-blurred step ``b + A * Phi(-d / sigma)`` to a radial profile.

    Returns ``(sigma_mm, A, rms_residual)``; A > 0 means the lesion is brighter than outside.
    A sharp edge is limited by the voxel size (sigma ~ half a voxel), an ill-defined margin gives
    a larger sigma whatever the contrast. Fewer than 3 points give ``(nan, 0, nan)``.
    """
    from scipy.special import ndtr

    d, p = np.asarray(d_mm, float), np.asarray(profile, float)
    if d.size < 3:
        return float("nan"), 0.0, float("nan")
    best = (np.inf, float("nan"), 0.0)
    for s in sigmas_mm:
        basis = np.stack([ndtr(-d / s), np.ones_like(d)], 1)
        coef, *_ = np.linalg.lstsq(basis, p, rcond=None)
        rss = float(((basis @ coef - p) ** 2).sum())
        if rss < best[0] - 1e-9:
            best = (rss, float(s), float(coef[0]))
    return best[1], best[2], float(np.sqrt(best[0] / d.size))


@dataclass
class _Regions:
    """The regions of one lesion on its crop (see the module docstring)."""
    sd: np.ndarray               # signed distance to the boundary, mm (negative inside)
    depth: float                 # the deepest mask voxel, mm (max inscribed radius)
    interior: np.ndarray
    shell: np.ndarray
    host: np.ndarray
    fractions: dict[str, float]  # tissue classes of the shell
    host_class: str


def lesion_evidence(image_hu: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float],
                    organ_labels: np.ndarray | None = None,
                    shell_mm: tuple[float, float] = DEFAULT_SHELL_MM) -> dict[str, float]:
    """Measured quantities of one lesion (see the module docstring for keys and units).

    Args:
        image_hu: CT image in HU, (z, y, x).
        mask: the lesion (non-zero = lesion), same shape. Several components are measured together.
        spacing_zyx: voxel size in mm, (z, y, x).
        organ_labels: optional label map of surrounding structures (same shape), for the
            organ-contact keys; the lesion's own structure is the most frequent label under it.
        shell_mm: inner and outer distance (mm) of the surrounding shell.
    """
    image, m, sp = _check(image_hu, mask, spacing_zyx)
    pad = max(shell_mm[1], 6.0) + 4.0
    bb = crop_to_lesion(m, sp, pad)
    image, m = image[bb], m[bb]
    organs = None if organ_labels is None else np.asarray(organ_labels)[bb]
    den = _gaussian_mm(image, 1.0, sp)  # denoised
    regions = _lesion_regions(m, sp, den, shell_mm)
    out = _size_evidence(m, sp, regions.depth)
    out.update(_density_evidence(image, den, m, sp, regions))
    out.update(_margin_evidence(image, den, m, sp, regions, out["median_hu_inside"], out["median_hu_shell"]))
    out.update(_shape_evidence(m, sp))
    out.update(_invasion_evidence(m, organs, regions))
    return out


def _gaussian_mm(image: np.ndarray, sigma_mm: float, sp) -> np.ndarray:
    return ndi.gaussian_filter(image, tuple(sigma_mm / d for d in sp))


def _lesion_regions(m: np.ndarray, sp, den: np.ndarray, shell_mm: tuple[float, float]) -> _Regions:
    """Interior, shell and host of the lesion ``m``, from the denoised image ``den``."""
    sd = signed_distance_mm(m, sp)
    inside_depth = -sd
    depth = float(inside_depth[m].max())
    interior = m & (inside_depth > min(1.5, 0.5 * depth))
    if interior.sum() < 5:
        interior = m
    shell = (sd > shell_mm[0]) & (sd <= shell_mm[1])
    if not shell.any():  # lesion fills the image: fall back to the first outside layer
        shell = ~m & (sd > 0)
    shell_vals = den[shell]
    fractions = tissue_class_fractions(shell_vals) if shell_vals.size else {k: 0.0 for k in TISSUE_CLASSES}
    host_class = max(fractions, key=fractions.get)
    lo, hi = TISSUE_CLASSES[host_class]
    host = shell & (den >= lo) & (den < hi)
    if not host.any():
        host = shell
    return _Regions(sd, depth, interior, shell, host, fractions, host_class)


def _size_evidence(m: np.ndarray, sp, depth: float) -> dict[str, float]:
    volume = int(m.sum()) * float(np.prod(sp))
    eq_radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
    out: dict[str, float] = {
        "volume_mm3": volume,
        "equivalent_diameter_mm": 2 * eq_radius,
        "max_inscribed_radius_mm": depth,
        "thickness_ratio": depth / eq_radius,
        "n_components": float(ndi.label(m)[1]),
    }
    idx = np.argwhere(m)
    ext = (idx.max(0) - idx.min(0) + 1) * np.asarray(sp)
    out.update(extent_z_mm=float(ext[0]), extent_y_mm=float(ext[1]), extent_x_mm=float(ext[2]))
    return out


def _density_evidence(image: np.ndarray, den: np.ndarray, m: np.ndarray, sp, r: _Regions) -> dict[str, float]:
    """Density and heterogeneity keys: HU inside against the host, spread, texture, noise."""
    inside_vals = den[r.interior]
    host_vals = den[r.host]
    out: dict[str, float] = {}
    out["mean_hu_inside"] = float(image[m].mean())
    out["median_hu_inside"] = float(np.median(inside_vals))
    out["mean_hu_shell"] = float(host_vals.mean()) if host_vals.size else float("nan")
    out["median_hu_shell"] = float(np.median(host_vals)) if host_vals.size else float("nan")
    out["contrast_hu"] = out["median_hu_inside"] - out["median_hu_shell"]
    out["contrast_hu_mean"] = (float(image[r.interior].mean()) - float(image[r.host].mean())
                               if r.host.any() else float("nan"))
    out["std_hu_inside"] = float(inside_vals.std())
    # texture: what is left inside once the mean radial profile (edge ramp, partial volume, a
    # centred core) is removed, so small or high-contrast lesions do not read as heterogeneous
    fine = np.arange(-r.depth - 1e-3, 1e-3 + 0.5 * min(sp), 0.5 * min(sp))
    c_in, p_in = radial_profile(den, r.sd, fine, region=m)
    if len(c_in) >= 2:
        resid_in = den[m] - np.interp(r.sd[m], c_in, p_in)
        out["texture_std_hu"] = float(resid_in.std())
    else:
        out["texture_std_hu"] = float(den[m].std())
    coarse = _gaussian_mm(image, 3.0, sp)
    out["bandpass_std_hu"] = float((den - coarse)[r.interior].std())
    q75, q25 = np.percentile(inside_vals, [75, 25])
    out["iqr_hu_inside"] = float(q75 - q25)
    out["std_hu_shell"] = float(host_vals.std()) if host_vals.size > 1 else float("nan")
    out["heterogeneity_ratio"] = out["std_hu_inside"] / max(out["std_hu_shell"], 1.0)
    out["contrast_z"] = out["contrast_hu"] / max(out["std_hu_shell"], 1.0)
    resid = (image - den)[r.host]
    out["noise_hu"] = float(1.4826 * np.median(np.abs(resid - np.median(resid)))) if resid.size else float("nan")
    return out


def _margin_evidence(image: np.ndarray, den: np.ndarray, m: np.ndarray, sp, r: _Regions,
                     median_inside: float, median_shell: float) -> dict[str, float]:
    """Margin keys: boundary gradient, the fitted edge's step and width, spill past the label, rim."""
    out: dict[str, float] = {}
    grad = np.gradient(_gaussian_mm(image, 0.7, sp), *sp)
    gmag = np.sqrt(sum(g * g for g in grad))
    band = np.abs(r.sd) <= max(sp) + 1e-3
    out["margin_gradient_hu_per_mm"] = float(gmag[band].mean())
    reach_in = min(4.0, r.depth)
    step = max(0.5, 0.5 * min(sp))
    bins = np.arange(-reach_in - 1e-3, 6.0 + step, step)
    # the edge profile ignores outside voxels of a third tissue (e.g. a vessel or bone in the
    # shell): they are neither lesion nor host and would pass for a step
    lesion_class = _class_of(median_inside)
    profile_region = m | np.isin(_classes(den), [list(TISSUE_CLASSES).index(r.host_class),
                                                 list(TISSUE_CLASSES).index(lesion_class)])
    centre, prof = radial_profile(image, r.sd, bins, region=profile_region)
    sigma, amp, _ = fit_edge(centre, prof)
    out["edge_step_hu"] = abs(amp)
    out["edge_width_mm"] = 2.563 * sigma  # 10-90 % rise distance of a Gaussian-blurred step
    out["margin_sharpness_per_mm"] = 1.0 / max(out["edge_width_mm"], 1e-3)
    # how far lesion-like HU spills outside the label (an infiltrative margin), as a fraction of
    # the contrast: near ring (first voxel layer outside) and inner shell layer, host-class voxels
    # excluded only by the denominator's sign, not by selection
    ring = ~m & (r.sd <= max(sp) + 1e-3)
    denom = median_inside - median_shell
    if abs(denom) >= 15 and ring.any():
        out["outer_spill_fraction"] = float(np.clip((np.median(den[ring]) - median_shell) / denom, -1, 2))
    else:
        out["outer_spill_fraction"] = float("nan")
    # a capsule-like rim (how an isodense lesion shows itself): outermost mask layer vs interior
    layer = m & (-r.sd <= max(sp) + 1e-3)
    out["rim_contrast_hu"] = float(image[layer].mean()) - median_inside if layer.any() else 0.0
    out["margin_gradient_normalised_per_mm"] = out["margin_gradient_hu_per_mm"] / max(out["edge_step_hu"], 10.0)
    return out


def _shape_evidence(m: np.ndarray, sp) -> dict[str, float]:
    sph, area, mesh_vol, verts = mesh_sphericity(m, sp)
    out = {"sphericity": sph, "surface_area_mm2": area,
           "solidity": _solidity(verts, mesh_vol) if len(verts) >= 4 else float("nan")}
    out["elongation"], out["flatness"] = _pca_shape(m, sp)
    return out


def _invasion_evidence(m: np.ndarray, organs: np.ndarray | None, r: _Regions) -> dict[str, float]:
    """Invasion keys: the shell's tissue classes and, with an organ map, contact with other structures."""
    out = {f"shell_fraction_{name}": frac for name, frac in r.fractions.items()}
    out["contact_fraction"] = 1.0 - r.fractions[r.host_class]
    p = np.array([f for f in r.fractions.values() if f > 0])
    out["shell_class_entropy"] = float(-(p * np.log2(p)).sum()) if p.size else 0.0
    if organs is not None:
        own = int(np.bincount(organs[m].astype(np.int64).ravel()).argmax())
        shell_org = organs[r.shell].astype(np.int64)
        other = shell_org[shell_org != own]
        out["organ_contact_fraction"] = float(other.size / max(shell_org.size, 1))
        counts = np.bincount(other) if other.size else np.zeros(1, int)
        out["n_adjacent_structures"] = float(np.count_nonzero(counts >= 0.02 * max(shell_org.size, 1)))
    return out


def evidence_feature_names(with_organs: bool = False) -> list[str]:
    """Keys of :func:`lesion_evidence`, in a stable order (for feature matrices)."""
    rng = np.random.default_rng(0)
    img = rng.normal(40, 10, (16, 16, 16)).astype(np.float32)
    m = np.zeros(img.shape, bool)
    m[6:10, 6:10, 6:10] = True
    organs = np.zeros(img.shape, np.uint8) if with_organs else None
    return list(lesion_evidence(img, m, (1.0, 1.0, 1.0), organs))
