"""Synthetic CT lesion phantom: seeded CT-like volumes in HU with one labelled lesion per case.

Each case is a small abdomen/lower-thorax "body" (air outside, subcutaneous fat, muscle wall,
visceral fat, lungs, heart, liver, spleen, kidneys, pancreas, gallbladder, stomach, colon,
oesophagus, bladder, aorta/IVC, a vertebra with a cortical shell) and exactly one lesion
(label 1) of one of the paper's lesion types. The five report attributes of the lesion are drawn
from a per-type prior (:data:`LESION_TYPES`) and *rendered by construction*:

=============  ===========================================================================
attribute      how it is rendered
=============  ===========================================================================
shape          Round-like: ellipsoid (axis ratios >= 0.7); Irregular: lobulated sphere
               (satellite lobes + a smooth radial perturbation); Wall thickening: a
               thickened patch of a hollow organ's wall; Punctate, nodular: a small nodule
               (radius ~2-4 mm)
density        lesion HU = host HU + offset: hypo/hyper offsets of >= 35 HU (cysts near water,
               stones calcified); Isodense: offset within +-4 HU plus a one-voxel rim of +-35-45 HU
               (capsule) whose mean over the lesion is compensated, so the lesion is findable
               while its mean stays at the host's
heterogeneity  Heterogeneous: band-limited texture (30-45 HU), sometimes a necrotic core;
               Homogeneous: no texture beyond the image noise
surface        the lesion is blended into the background with a logistic edge of width w
               around the labelled boundary: Well-defined w = 0.15 mm (sharp, then only the
               partial-volume blur); Ill-defined w = 1.5-2.5 mm plus a patchy infiltrative tail
invasion       No close relationship: the lesion lies inside its host with >= 3.5 mm of host
               tissue all round (any extra vessel is >= 6 mm away); Close relationship: the
               lesion crosses the host boundary into the neighbouring tissue and abuts an
               enhanced vessel (a wall lesion grows through the wall into the fat)
=============  ===========================================================================

Then partial-volume blur (Gaussian, 0.5 voxel), white noise (10-18 HU) and rounding to integer HU.

Geometry: anatomy is laid out in units of the field of view (in-plane: half the smaller in-plane
extent; z: half the z extent), so any size/spacing shows the whole body; lesions are sized in the
in-plane unit, so they stay physically round under anisotropic spacing. ``size`` and ``spacing`` are
given in SimpleITK order (x, y, z); arrays are z, y, x.

Output (:func:`generate_phantom_dataset`): an nnU-Net raw dataset ``DatasetNNN_Name/`` with
``imagesTr``/``labelsTr``, ``dataset.json`` (with the ``isrg`` block), ``attributesTr.json``, and for
held-out (zero-shot) lesion types ``imagesTs``/``labelsTs``/``attributesTs.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..attributes import ATTRIBUTES_FILENAME, DEFAULT_SCHEMA
from ..files import write_json_atomic

PHANTOM_VERSION = 1

SHAPES = DEFAULT_SCHEMA["shape"]            # Round-like, Irregular, Wall thickening, Punctate, nodular
INVASION = DEFAULT_SCHEMA["invasion"]       # No close ..., Close ...
DENSITY = DEFAULT_SCHEMA["density"]         # Hypodense, Isodense, Hyperdense
HETEROGENEITY = DEFAULT_SCHEMA["heterogeneity"]
SURFACE = DEFAULT_SCHEMA["surface"]

# ---------------------------------------------------------------------------------------------
# anatomy
# ---------------------------------------------------------------------------------------------
#: organ label values of the organ map in ``extras["organ_map"]`` (hollow organs include lumen)
ORGAN_LABELS: dict[str, int] = {
    "air": 0, "subcutaneous_fat": 1, "muscle": 2, "visceral_fat": 3, "lung_right": 4, "lung_left": 5,
    "heart": 6, "liver": 7, "spleen": 8, "kidney_right": 9, "kidney_left": 10, "pancreas": 11,
    "stomach": 12, "gallbladder": 13, "colon": 14, "bladder": 15, "oesophagus": 16, "aorta": 17,
    "ivc": 18, "vertebra": 19, "vessel": 20,
}

HU = {  # unenhanced-ish soft tissue, enhanced vessels
    "air": -1000.0, "lung": -850.0, "fat": -100.0, "visceral_fat": -90.0, "muscle": 50.0, "heart": 45.0,
    "liver": 60.0, "spleen": 50.0, "kidney": 35.0, "pancreas": 40.0, "wall": 45.0, "bile": 10.0,
    "urine": 5.0, "gas": -950.0, "aorta": 190.0, "ivc": 170.0, "vessel": 200.0,
    "bone_trabecular": 350.0, "bone_cortical": 800.0,
}


@dataclass(frozen=True)
class _Organ:
    name: str
    kind: str                      # "ellipsoid" | "tube_z" | "tube_x"
    center: tuple[float, float, float]   # (x, y, z) in FOV units
    semi: tuple[float, float, float]     # ellipsoid semi-axes (x, y, z) / tube (radius, -, -)
    hu: str                        # key of HU (solid organs) or of the wall
    lumen_hu: str | None = None    # hollow organs: lumen content
    wall_mm: float = 0.0           # hollow organs: wall thickness
    extent: tuple[float, float] = (-2.0, 2.0)  # tubes: extent along their axis (FOV units)
    rot_z_deg: float = 0.0


# Paint order matters: later organs overwrite earlier ones where they overlap.
_ANATOMY: tuple[_Organ, ...] = (
    _Organ("lung_right", "ellipsoid", (-0.42, 0.05, 1.0), (0.37, 0.55, 0.65), "lung"),
    _Organ("lung_left", "ellipsoid", (0.42, 0.05, 1.0), (0.37, 0.55, 0.65), "lung"),
    _Organ("heart", "ellipsoid", (0.12, -0.28, 0.95), (0.3, 0.28, 0.3), "heart"),
    _Organ("liver", "ellipsoid", (-0.36, -0.05, 0.35), (0.5, 0.55, 0.42), "liver"),
    _Organ("spleen", "ellipsoid", (0.6, 0.3, 0.35), (0.2, 0.27, 0.28), "spleen"),
    _Organ("stomach", "ellipsoid", (0.33, -0.3, 0.35), (0.3, 0.25, 0.3), "wall", "gas", 3.0),
    _Organ("kidney_right", "ellipsoid", (-0.5, 0.34, -0.15), (0.26, 0.25, 0.34), "kidney"),
    _Organ("kidney_left", "ellipsoid", (0.5, 0.34, -0.15), (0.26, 0.25, 0.34), "kidney"),
    _Organ("gallbladder", "ellipsoid", (-0.3, -0.42, 0.0), (0.22, 0.24, 0.3), "wall", "bile", 2.5),
    _Organ("pancreas", "ellipsoid", (0.08, 0.06, 0.05), (0.42, 0.25, 0.25), "pancreas", rot_z_deg=15.0),
    _Organ("colon", "tube_x", (0.0, -0.4, -0.45), (0.16, 0, 0), "wall", "gas", 2.5, (-0.75, 0.75)),
    _Organ("bladder", "ellipsoid", (0.0, -0.15, -0.85), (0.32, 0.3, 0.3), "wall", "urine", 3.0),
    _Organ("oesophagus", "tube_z", (-0.05, 0.3, 0.0), (0.15, 0, 0), "wall", "gas", 3.0, (0.2, 1.1)),
    _Organ("aorta", "tube_z", (0.22, 0.32, 0.0), (0.09, 0, 0), "aorta", extent=(-0.7, 1.1)),
    _Organ("ivc", "tube_z", (-0.24, 0.3, 0.0), (0.08, 0, 0), "ivc", extent=(-0.7, 0.7)),
    _Organ("vertebra", "tube_z", (0.0, 0.66, 0.0), (0.25, 0, 0), "bone_trabecular", extent=(-2.0, 2.0)),
)
_BODY_SEMI = (0.94, 0.86)        # body outline (x, y) in FOV units
_BODY_FAT, _BODY_MUSCLE = 0.9, 0.84  # normalised radii where subcutaneous fat / muscle wall begin


# ---------------------------------------------------------------------------------------------
# lesion types and attribute priors
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LesionType:
    """A lesion type: where it grows and how its attributes are distributed.

    ``shape`` and ``density`` are probabilities per class (schema order); ``heterogeneous``,
    ``ill_defined`` and ``close`` are the probabilities of Heterogeneous, Ill-defined margin and
    Close relationship with adjacent structures. ``material`` selects the HU model of the lesion.
    """
    host: str
    shape: tuple[float, float, float, float]
    density: tuple[float, float, float]
    heterogeneous: float
    ill_defined: float
    close: float
    material: str = "tumour"      # tumour | cyst | stone | lung | bone
    description: str = ""


LESION_TYPES: dict[str, LesionType] = {
    #                               Round Irreg Wall  Punct   hypo iso  hyper
    "liver_tumour": LesionType("liver", (0.45, 0.45, 0.0, 0.10), (0.6, 0.15, 0.25), 0.6, 0.5, 0.35,
                               description="solid liver mass (HCC / metastasis)"),
    "liver_cyst": LesionType("liver", (0.85, 0.0, 0.0, 0.15), (1.0, 0.0, 0.0), 0.1, 0.1, 0.15, "cyst",
                             "simple hepatic cyst, near water density"),
    "kidney_tumour": LesionType("kidney", (0.5, 0.45, 0.0, 0.05), (0.4, 0.25, 0.35), 0.6, 0.4, 0.4,
                                description="renal cell carcinoma"),
    "kidney_stone": LesionType("kidney", (0.2, 0.0, 0.0, 0.8), (0.0, 0.0, 1.0), 0.1, 0.05, 0.2, "stone",
                               "calcified renal calculus"),
    "pancreas_tumour": LesionType("pancreas", (0.4, 0.6, 0.0, 0.0), (0.7, 0.3, 0.0), 0.5, 0.7, 0.6,
                                  description="pancreatic adenocarcinoma"),
    "pancreas_cyst": LesionType("pancreas", (0.8, 0.1, 0.0, 0.1), (1.0, 0.0, 0.0), 0.2, 0.2, 0.2, "cyst",
                                "pancreatic cystic lesion"),
    "lung_tumour": LesionType("lung", (0.35, 0.45, 0.0, 0.2), (0.0, 0.0, 1.0), 0.4, 0.5, 0.4, "lung",
                              "lung mass or nodule (soft tissue in aerated lung)"),
    "gallbladder_cancer": LesionType("gallbladder", (0.1, 0.2, 0.7, 0.0), (0.2, 0.4, 0.4), 0.5, 0.6, 0.6,
                                     description="gallbladder carcinoma, mostly wall thickening"),
    "gallstone": LesionType("gallbladder_lumen", (0.4, 0.0, 0.0, 0.6), (0.15, 0.15, 0.7), 0.2, 0.1, 0.3,
                            "stone", "cholelithiasis: calcified, cholesterol (fat density) or rimmed stone"),
    "bladder_cancer": LesionType("bladder", (0.15, 0.25, 0.6, 0.0), (0.1, 0.3, 0.6), 0.5, 0.5, 0.4,
                                 description="urothelial carcinoma, wall thickening or polypoid"),
    "gastric_cancer": LesionType("stomach", (0.0, 0.25, 0.75, 0.0), (0.2, 0.4, 0.4), 0.6, 0.6, 0.5,
                                 description="gastric carcinoma, wall thickening"),
    "oesophageal_cancer": LesionType("oesophagus", (0.0, 0.15, 0.85, 0.0), (0.2, 0.5, 0.3), 0.5, 0.6, 0.6,
                                     description="oesophageal carcinoma, wall thickening"),
    "colon_tumour": LesionType("colon", (0.2, 0.3, 0.5, 0.0), (0.3, 0.4, 0.3), 0.6, 0.5, 0.5,
                               description="colorectal carcinoma"),
    "bone_metastasis": LesionType("vertebra", (0.4, 0.5, 0.0, 0.1), (0.55, 0.1, 0.35), 0.6, 0.6, 0.45, "bone",
                                  "vertebral metastasis, lytic (hypo) or blastic (hyper)"),
}
PAPER_ZERO_SHOT_TYPES = ("gallstone", "liver_cyst")

_HOST_ORGANS = {  # host name -> organ(s) it may be drawn in
    "liver": ("liver",), "kidney": ("kidney_right", "kidney_left"), "pancreas": ("pancreas",),
    "lung": ("lung_right", "lung_left"), "gallbladder": ("gallbladder",), "gallbladder_lumen": ("gallbladder",),
    "bladder": ("bladder",), "stomach": ("stomach",), "oesophagus": ("oesophagus",), "colon": ("colon",),
    "vertebra": ("vertebra",),
}

_NO_CLOSE_MARGIN_MM = 3.5   # host tissue kept all round a lesion without close relationship
_PV_SIGMA_VOX = 0.5         # partial-volume blur


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _xyz3(value, what: str, kind=float) -> tuple:
    if np.isscalar(value):
        value = (value,) * 3
    value = tuple(kind(v) for v in value)
    if len(value) != 3 or any(v <= 0 for v in value):
        raise ValueError(f"{what} must be a positive number or three positive numbers (x, y, z), got {value!r}")
    return value


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Band-limited Gaussian noise with unit standard deviation."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return f / max(float(f.std()), 1e-6)


def _edt_inside(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Distance (mm) of each voxel inside ``mask`` to the nearest voxel outside it (0 outside).

    Computed on the mask's bounding box plus one voxel, which is exact and much faster.
    """
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    bb = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndi.find_objects(mask.astype(np.uint8))[0])
    sub = np.pad(mask[bb], 1)  # a border of background where the box touches the image edge
    out[bb] = ndi.distance_transform_edt(sub, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return out


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _perpendicular(rng: np.random.Generator, n: np.ndarray) -> np.ndarray:
    t = rng.standard_normal(3)
    t -= t.dot(n) * n
    return _unit(t)


@dataclass
class _Grid:
    """Voxel-centre coordinates in mm (z, y, x arrays) relative to the FOV centre, and FOV units."""
    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    s: float       # mm per in-plane FOV unit
    sz: float      # mm per z FOV unit

    @classmethod
    def make(cls, size_xyz, spacing_xyz) -> "_Grid":
        nx, ny, nz = size_xyz
        sx, sy, szp = spacing_xyz
        z = ((np.arange(nz) - (nz - 1) / 2) * szp).astype(np.float32)[:, None, None]
        y = ((np.arange(ny) - (ny - 1) / 2) * sy).astype(np.float32)[None, :, None]
        x = ((np.arange(nx) - (nx - 1) / 2) * sx).astype(np.float32)[None, None, :]
        return cls((nz, ny, nx), (szp, sy, sx), z, y, x, min(nx * sx, ny * sy) / 2, nz * szp / 2)

    def box(self, c_zyx, half_mm: float) -> tuple[slice, slice, slice]:
        """Voxel slices of the box of half-width ``half_mm`` around a point (mm), clipped to the image."""
        axes = (self.z.ravel(), self.y.ravel(), self.x.ravel())
        return tuple(slice(int(np.searchsorted(a, c - half_mm)), int(np.searchsorted(a, c + half_mm, "right")))
                     for a, c in zip(axes, c_zyx))

    def sub(self, bb) -> "_Grid":
        return _Grid(tuple(s.stop - s.start for s in bb), self.spacing_zyx, self.z[bb[0]], self.y[:, bb[1]],
                     self.x[:, :, bb[2]], self.s, self.sz)

    def mm(self, p_fov) -> np.ndarray:
        """(x, y, z) FOV units -> (z, y, x) mm."""
        return np.array([p_fov[2] * self.sz, p_fov[1] * self.s, p_fov[0] * self.s])

    def index_to_mm(self, idx) -> np.ndarray:
        return np.array([self.z.ravel()[idx[0]], self.y.ravel()[idx[1]], self.x.ravel()[idx[2]]], float)

    def dist2(self, c_zyx) -> np.ndarray:
        return (self.z - c_zyx[0]) ** 2 + (self.y - c_zyx[1]) ** 2 + (self.x - c_zyx[2]) ** 2

    def line_dist(self, q_zyx, t_zyx) -> np.ndarray:
        """Distance (mm) of every voxel to the line through q with unit direction t."""
        dz, dy, dx = self.z - q_zyx[0], self.y - q_zyx[1], self.x - q_zyx[2]
        along = dz * t_zyx[0] + dy * t_zyx[1] + dx * t_zyx[2]
        return np.sqrt(np.maximum(dz ** 2 + dy ** 2 + dx ** 2 - along ** 2, 0))


def _organ_masks(grid: _Grid, organ: _Organ, shift, scale) -> tuple[np.ndarray, np.ndarray | None]:
    """(solid mask, lumen mask or None) of an organ with jittered centre and size."""
    cx, cy, cz = (organ.center[i] + shift[i] for i in range(3))
    cxm, cym, czm = cx * grid.s, cy * grid.s, cz * grid.sz
    if organ.kind == "ellipsoid":
        ax, ay, az = organ.semi[0] * grid.s * scale, organ.semi[1] * grid.s * scale, organ.semi[2] * grid.sz * scale
        X, Y = grid.x - cxm, grid.y - cym
        if organ.rot_z_deg:
            a = np.deg2rad(organ.rot_z_deg)
            X, Y = np.cos(a) * X + np.sin(a) * Y, -np.sin(a) * X + np.cos(a) * Y
        Z = grid.z - czm

        def inside(shrink):
            return (X / (ax - shrink)) ** 2 + (Y / (ay - shrink)) ** 2 + (Z / (az - shrink)) ** 2 <= 1.0
    else:
        r = organ.semi[0] * grid.s * scale
        if organ.kind == "tube_z":
            d2 = (grid.x - cxm) ** 2 + (grid.y - cym) ** 2
            along, unit = grid.z + 0 * d2, grid.sz
        else:  # tube_x
            d2 = (grid.y - cym) ** 2 + (grid.z - czm) ** 2
            along, unit = grid.x + 0 * d2, grid.s
        within = (along >= organ.extent[0] * unit) & (along <= organ.extent[1] * unit)

        def inside(shrink):
            return (d2 <= (r - shrink) ** 2) & within
    solid = inside(0.0)
    lumen = inside(organ.wall_mm) if organ.lumen_hu else None
    return solid, lumen


def _render_anatomy(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Background HU image, organ map and per-organ info (solid/lumen masks) of one case."""
    shape = grid.shape
    img = np.full(shape, HU["air"], np.float32)
    organ_map = np.zeros(shape, np.uint8)
    rho = np.sqrt((grid.x / (_BODY_SEMI[0] * grid.s)) ** 2 + (grid.y / (_BODY_SEMI[1] * grid.s)) ** 2) + 0 * grid.z
    body = rho <= 1.0
    img[body] = HU["fat"]
    organ_map[body] = ORGAN_LABELS["subcutaneous_fat"]
    wall = body & (rho <= _BODY_FAT)
    img[wall] = HU["muscle"]
    organ_map[wall] = ORGAN_LABELS["muscle"]
    interior = rho <= _BODY_MUSCLE
    img[interior] = HU["visceral_fat"]
    organ_map[interior] = ORGAN_LABELS["visceral_fat"]

    texture = _smooth_noise(rng, shape, 1.5)  # shared parenchymal texture, small amplitude
    info: dict[str, dict] = {}
    for organ in _ANATOMY:
        shift = rng.uniform(-0.035, 0.035, 3)
        scale = rng.uniform(0.93, 1.07)
        solid, lumen = _organ_masks(grid, organ, shift, scale)
        region = interior if organ.name != "vertebra" else body
        solid &= region
        if not solid.any():
            continue
        base = HU[organ.hu]
        amp = 25.0 if organ.hu == "lung" else 5.0
        img[solid] = base + amp * texture[solid]
        organ_map[solid] = ORGAN_LABELS[organ.name]
        entry = {"solid": solid, "hu": base}
        if lumen is not None:
            lumen &= solid
            img[lumen] = HU[organ.lumen_hu] + 3.0 * texture[lumen]
            entry.update(lumen=lumen, lumen_hu=HU[organ.lumen_hu], wall_mm=organ.wall_mm)
        if organ.name == "vertebra":
            trabecular = _edt_inside(solid, grid.spacing_zyx) > 1.6
            img[solid & ~trabecular] = HU["bone_cortical"]
            img[trabecular] = HU["bone_trabecular"] + 20.0 * texture[trabecular]
            entry["trabecular"] = trabecular
        info[organ.name] = entry
    # later organs overwrite earlier ones: keep each organ's solid mask as what it owns
    for name, entry in info.items():
        own = organ_map == ORGAN_LABELS[name]
        entry["solid"] &= own
        for key in ("lumen", "trabecular"):
            if key in entry:
                entry[key] &= own
    return img, organ_map, info


# ---------------------------------------------------------------------------------------------
# lesion
# ---------------------------------------------------------------------------------------------
def sample_attributes(rng: np.random.Generator, lesion_type: str) -> dict[str, str]:
    """Draws the five attributes of one lesion from the type's prior."""
    t = LESION_TYPES[lesion_type]
    return {
        "shape": SHAPES[rng.choice(4, p=np.asarray(t.shape) / sum(t.shape))],
        "invasion": INVASION[int(rng.random() < t.close)],
        "density": DENSITY[rng.choice(3, p=np.asarray(t.density) / sum(t.density))],
        "heterogeneity": HETEROGENEITY[int(rng.random() < t.heterogeneous)],
        "surface": SURFACE[int(rng.random() < t.ill_defined)],
    }


def _lesion_hu(rng, t: LesionType, density: str, host_hu: float) -> float:
    """Target mean HU of the lesion body."""
    if density == "Isodense":
        return host_hu + rng.uniform(-4, 4)
    hyper = density == "Hyperdense"
    if t.material == "cyst" and not hyper:
        return min(rng.uniform(0, 15), host_hu - 35)
    if t.material == "stone":
        if hyper:
            return max(rng.uniform(350, 800), host_hu + 200)
        return host_hu - rng.uniform(45, 70)   # cholesterol stone, fat-like
    if t.material == "lung":
        return rng.uniform(20, 60)
    if t.material == "bone":
        return host_hu + (rng.uniform(250, 450) if hyper else -rng.uniform(180, 280))
    return host_hu + (1 if hyper else -1) * rng.uniform(40, 75)


def _choose_center(rng, candidates: np.ndarray) -> np.ndarray | None:
    idx = np.flatnonzero(candidates)
    if idx.size == 0:
        return None
    return np.array(np.unravel_index(idx[rng.integers(idx.size)], candidates.shape))


def _outward_normal(edt_host: np.ndarray, c_idx, spacing_zyx) -> np.ndarray:
    """Unit vector (z, y, x, mm space) pointing out of the host at voxel c."""
    sl = tuple(slice(max(i - 2, 0), i + 3) for i in c_idx)
    local = edt_host[sl]
    g = np.array([np.gradient(local, spacing_zyx[a], axis=a)[tuple(min(i, 2) for i in c_idx)] for a in range(3)])
    if np.linalg.norm(g) < 1e-6:
        g = np.array(np.gradient(edt_host, *spacing_zyx))[(slice(None),) + tuple(c_idx)]
    return _unit(-g) if np.linalg.norm(g) > 1e-6 else np.array([0.0, 1.0, 0.0])


def _blob(grid: _Grid, rng, c_mm, r0: float, shape: str) -> np.ndarray:
    """Boolean lesion body for round-like / irregular / punctate shapes, centred at c_mm (z,y,x)."""
    dz, dy, dx = grid.z - c_mm[0], grid.y - c_mm[1], grid.x - c_mm[2]
    if shape == "Irregular":
        rho = np.sqrt(grid.dist2(c_mm))
        bumps = np.clip(_smooth_noise(rng, grid.shape, max(0.35 * r0 / min(grid.spacing_zyx), 1.0)), -1.6, 1.6)
        body = rho <= r0 * (1.0 + 0.22 * bumps)
        for _ in range(rng.integers(2, 5)):  # lobules
            d = _unit(rng.standard_normal(3)) * r0 * rng.uniform(0.75, 0.95)
            body |= grid.dist2(np.asarray(c_mm) + d) <= (r0 * rng.uniform(0.4, 0.6)) ** 2
        return body
    if shape == "Punctate, nodular":
        return grid.dist2(c_mm) <= r0 ** 2
    # Round-like: ellipsoid, random orientation
    axes = r0 * np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.75, 1.0)])
    R = _random_rotation(rng)
    u = (R[0, 0] * dz + R[1, 0] * dy + R[2, 0] * dx) / axes[0]
    v = (R[0, 1] * dz + R[1, 1] * dy + R[2, 1] * dx) / axes[1]
    w = (R[0, 2] * dz + R[1, 2] * dy + R[2, 2] * dx) / axes[2]
    return u * u + v * v + w * w <= 1.0


def _exit_distance(body: np.ndarray, grid: _Grid, c_mm, n) -> float:
    """How far (mm) from c along n the lesion body reaches (sampled every 0.25 voxel)."""
    step = 0.25 * min(grid.spacing_zyx)
    origin = np.array([grid.z.ravel()[0], grid.y.ravel()[0], grid.x.ravel()[0]])
    sp = np.asarray(grid.spacing_zyx)
    last = 0.0
    for k in range(1, 400):
        p = np.asarray(c_mm) + n * k * step
        idx = np.round((p - origin) / sp).astype(int)
        if np.any(idx < 0) or np.any(idx >= grid.shape):
            break
        if body[tuple(idx)]:
            last = k * step
        elif k * step > last + 3 * max(grid.spacing_zyx):
            break
    return last


@dataclass
class _Host:
    """The tissue a lesion grows in: its mask, HU and depth (mm inside its boundary)."""
    organ: str
    entry: dict          # the organ's entry of the rendered anatomy
    mask: np.ndarray
    hu: float
    hollow: bool         # the wall of a hollow organ (lumen beside it)
    edt: np.ndarray      # depth inside the host, mm
    capacity: float      # the host's deepest point, mm


@dataclass
class _Body:
    """The lesion's voxels on the crop ``bb`` (grid ``sub``) around its centre ``c_mm``."""
    c_mm: np.ndarray
    bb: tuple[slice, slice, slice]
    sub: _Grid
    mask: np.ndarray
    r_eff: float
    vessel_n: np.ndarray | None  # outward normal where a vessel must touch the lesion (close relationship)


def generate_case(rng_or_seed, lesion_type: str, size=64, spacing=1.5,
                  attributes: Mapping[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """One phantom case.

    Args:
        rng_or_seed: ``numpy.random.Generator`` or a seed.
        lesion_type: a key of :data:`LESION_TYPES`.
        size: voxels, an int or (x, y, z).
        spacing: mm, a number or (x, y, z).
        attributes: force some attributes (schema strings) instead of drawing them from the prior.

    Returns:
        ``(image_hu, label, attributes, extras)``: image float32 (z, y, x) in integer-valued HU,
        label uint8 (z, y, x) with the lesion = 1, the five attributes plus ``lesion_type``, and
        extras: ``organ_map`` (uint8, :data:`ORGAN_LABELS`), ``host_organ``, ``lesion_center_mm``
        (z, y, x, relative to the FOV centre), ``radius_mm``, ``host_hu``, ``lesion_hu``,
        ``margin_width_mm``, ``noise_hu``, ``vessel_contact``.
    """
    if lesion_type not in LESION_TYPES:
        raise ValueError(f"unknown lesion type '{lesion_type}'; allowed: {sorted(LESION_TYPES)}")
    rng = _rng(rng_or_seed)
    size_xyz = _xyz3(size, "size", int)
    spacing_xyz = _xyz3(spacing, "spacing")
    if min(size_xyz) < 16:
        raise ValueError(f"size must be at least 16 voxels per side, got {size_xyz}")
    t = LESION_TYPES[lesion_type]
    attrs = _case_attributes(rng, lesion_type, attributes)

    grid = _Grid.make(size_xyz, spacing_xyz)
    sp = grid.spacing_zyx
    img, organ_map, info = _render_anatomy(grid, rng)
    host = _choose_host(rng, t, info, lesion_type, size_xyz, sp)
    close = attrs["invasion"] == INVASION[1]
    ill = attrs["surface"] == SURFACE[1]
    r_min = max(1.2 * max(sp[1:]), 0.75 * sp[0])  # smallest lesion radius that spans a few voxels

    # the lesion body (boolean, on a crop around the lesion), placed by the invasion attribute
    if attrs["shape"] == "Wall thickening":
        body = _wall_thickening_body(grid, rng, host, organ_map, close, r_min)
    else:
        body = _mass_body(grid, rng, host, organ_map, attrs["shape"], close, ill, r_min)
    if body.mask.sum() < 4:  # tiny field of view: fall back to a small ball at the chosen centre
        body.mask = (body.sub.dist2(body.c_mm) <= r_min ** 2) & (organ_map[body.bb] != 0)
        if body.mask.sum() < 4:
            raise RuntimeError(f"degenerate {lesion_type} lesion ({int(body.mask.sum())} voxels) at size {size_xyz}")

    vessel_contact, vessel_axis = _add_vessel(img, grid, rng, body, organ_map)
    lesion, target, inside, depth = _lesion_intensity(rng, body.mask, sp, t, attrs, host.hu)
    w = _blend_lesion(img, rng, body, lesion, inside, depth, ill, organ_map, host.hu)
    label = np.zeros(grid.shape, bool)
    label[body.bb] = body.mask
    img, noise = _acquire(img, rng, grid.shape)

    attrs = dict(attrs, lesion_type=lesion_type)
    extras = {
        "organ_map": organ_map, "host_organ": host.organ, "lesion_center_mm": [float(v) for v in body.c_mm],
        "radius_mm": float(body.r_eff), "host_hu": float(host.hu), "lesion_hu": float(target),
        "margin_width_mm": float(w), "noise_hu": float(noise), "vessel_contact": vessel_contact, "vessel_axis": vessel_axis,
    }
    return img, label.astype(np.uint8), attrs, extras


def _case_attributes(rng, lesion_type: str, forced: Mapping[str, str] | None) -> dict[str, str]:
    """The five attributes drawn from the type's prior, with the ``forced`` ones put in place."""
    t = LESION_TYPES[lesion_type]
    attrs = sample_attributes(rng, lesion_type)
    if forced:
        for k, v in forced.items():
            if k not in DEFAULT_SCHEMA or v not in DEFAULT_SCHEMA[k]:
                raise ValueError(f"forced attribute {k}={v!r} is not in the schema {dict(DEFAULT_SCHEMA)}")
            attrs[k] = v
    if attrs["shape"] == "Wall thickening" and not _is_hollow_host(t.host):
        raise ValueError(f"lesion type '{lesion_type}' (host {t.host}) cannot show 'Wall thickening'")
    return attrs


def _choose_host(rng, t: LesionType, info: dict, lesion_type: str, size_xyz, sp) -> _Host:
    """One of the type's host organs in the rendered anatomy, and the tissue of it the lesion grows in."""
    candidates = [o for o in _HOST_ORGANS[t.host] if o in info]
    if not candidates:
        raise RuntimeError(f"host organ of '{lesion_type}' is outside the field of view {size_xyz}")
    organ = candidates[rng.integers(len(candidates))]
    entry = info[organ]
    if t.host == "gallbladder_lumen":
        mask, hu = entry["lumen"], entry["lumen_hu"]
    elif t.host == "vertebra":
        mask, hu = entry["trabecular"], HU["bone_trabecular"]
    else:
        mask, hu = entry["solid"], entry["hu"]
    hollow = "lumen" in entry and t.host != "gallbladder_lumen"
    edt = _edt_inside(mask, sp)
    return _Host(organ, entry, mask, hu, hollow, edt, float(edt.max()))


def _wall_thickening_body(grid: _Grid, rng, host: _Host, organ_map: np.ndarray, close: bool,
                          r_min: float) -> _Body:
    """A thickened patch of a hollow organ's wall; when close, it grows through the wall into the fat."""
    sp = grid.spacing_zyx
    edt_host, capacity = host.edt, host.capacity
    wall_mm = host.entry["wall_mm"]
    depth_ok = (edt_host > 0) & (edt_host <= wall_mm)
    c_idx = _choose_center(rng, depth_ok & (edt_host >= 0.5 * wall_mm))
    if c_idx is None:
        c_idx = _choose_center(rng, depth_ok)
    c_mm = grid.index_to_mm(c_idx)
    thick = max(min(rng.uniform(0.1, 0.16) * grid.s, 0.7 * capacity), min(r_min, 0.9 * capacity))
    patch_r = rng.uniform(0.22, 0.35) * grid.s
    bb = grid.box(c_mm, patch_r + 14.0)
    sub = grid.sub(bb)
    patch = sub.dist2(c_mm) <= patch_r ** 2
    body = patch & host.mask[bb] & (edt_host[bb] <= thick)
    if close:  # grows through the wall into the surrounding fat
        out = _edt_inside(~host.mask[bb], sp)
        body |= patch & ~host.mask[bb] & (out <= rng.uniform(2.5, 5.0)) & (organ_map[bb] != 0)
    return _Body(c_mm, bb, sub, body, thick, _outward_normal(edt_host, c_idx, sp))


def _mass_body(grid: _Grid, rng, host: _Host, organ_map: np.ndarray, shape: str, close: bool, ill: bool,
               r_min: float) -> _Body:
    """A round-like, irregular or punctate mass: inside its host with a margin of host tissue all
    round, or, when close, across the host boundary (a vessel will abut it along ``vessel_n``)."""
    sp = grid.spacing_zyx
    capacity = host.capacity
    if shape == "Punctate, nodular":
        r0 = max(rng.uniform(0.045, 0.075) * grid.s, r_min)
    else:
        r0 = max(rng.uniform(0.12, 0.28) * grid.s, 2 * r_min)
    # margins scale with the field of view (3.5 mm at 64 x 1.5 mm) so small FOVs still fit
    margin = min(_NO_CLOSE_MARGIN_MM, 0.073 * grid.s) * (1.4 if ill else 1.0)
    if host.hollow:  # polypoid mass: never wider than the organ
        r0 = max(min(r0, 0.8 * capacity), r_min)
    elif not close:
        if capacity - margin < r_min:
            margin = max(capacity - r_min, 0.0)
        r0 = max(min(r0, capacity - margin), r_min)
    c_idx, r0 = _mass_centre(rng, host, organ_map, sp, r0, margin, close, r_min)
    c_mm = grid.index_to_mm(c_idx)
    bb = grid.box(c_mm, 1.5 * r0 + 14.0)
    sub = grid.sub(bb)
    body = _blob(sub, rng, c_mm, r0, shape)
    body &= organ_map[bb] != 0  # never into the air outside the body
    vessel_n = None
    if not close:
        body &= host.edt[bb] >= (host.entry["wall_mm"] + 0.5 if host.hollow else min(margin, capacity - 1e-3))
    else:
        vessel_n = _outward_normal(host.edt, c_idx, sp)
    return _Body(c_mm, bb, sub, body, r0, vessel_n)


def _mass_centre(rng, host: _Host, organ_map: np.ndarray, sp, r0: float, margin: float, close: bool,
                 r_min: float) -> tuple[np.ndarray, float]:
    """A centre voxel for a mass of radius ``r0`` (shrunk until one fits) and the radius used."""
    edt_host = host.edt
    c_idx = None
    # close lesions stay clear of the skin so the vessel they abut fits inside the body
    deep = _edt_inside(organ_map >= ORGAN_LABELS["visceral_fat"], sp) if close else None
    for _ in range(12):
        if close:
            lo, hi = (0.1 * r0, 0.4 * r0) if host.hollow else (0.15 * r0, 0.55 * r0)
            cand = host.mask & (edt_host >= lo) & (edt_host <= max(hi, lo + max(sp)))
            if (cand & (deep >= r0 + 6.0)).any():
                cand &= deep >= r0 + 6.0
        elif host.hollow:  # sessile mass on the wall, inside the organ outline
            cand = host.mask & (edt_host >= min(0.6 * r0 + host.entry["wall_mm"], 0.8 * host.capacity))
        else:
            cand = host.mask & (edt_host >= min(r0 + margin, host.capacity) - 1e-3)
        c_idx = _choose_center(rng, cand)
        if c_idx is not None:
            break
        r0 = max(0.85 * r0, r_min)
    if c_idx is None:  # tiny field of view: the deepest host voxel
        c_idx = np.array(np.unravel_index(int(np.argmax(edt_host)), edt_host.shape))
    return c_idx, r0


def _add_vessel(img: np.ndarray, grid: _Grid, rng, body: _Body, organ_map: np.ndarray) -> tuple[bool, tuple | None]:
    """Draws an enhanced vessel into ``img``: touching the lesion when it has a close relationship,
    else (half the time) one clearly apart. Returns (vessel_contact, vessel_axis)."""
    sp = grid.spacing_zyx
    rv = max(2.2, 1.2 * max(sp[1:]))  # >= 3 voxels across, so it stays bright after partial volume
    c_mm = body.c_mm
    if body.vessel_n is not None:
        reach_n = _exit_distance(body.mask, body.sub, c_mm, body.vessel_n)
        q = c_mm + body.vessel_n * (reach_n + 0.2 * rv)  # slightly indents the lesion: a long contact
        t_dir = _perpendicular(rng, body.vessel_n)
        vessel = grid.line_dist(q, t_dir) <= rv
        vessel &= organ_map != 0
        vessel[body.bb] &= ~body.mask
        img[vessel] = HU["vessel"]
        return True, (q, t_dir, reach_n)
    if rng.random() < 0.5:
        nrand = _unit(rng.standard_normal(3))
        extent = float(np.sqrt(body.sub.dist2(c_mm)[body.mask].max()))
        q = c_mm + nrand * (extent + rv + rng.uniform(6.0, 10.0))
        vessel = (grid.line_dist(q, _perpendicular(rng, nrand)) <= rv) & (organ_map != 0)
        img[vessel] = HU["vessel"]
    return False, None


def _lesion_intensity(rng, body: np.ndarray, sp, t: LesionType, attrs: Mapping[str, str],
                      host_hu: float) -> tuple[np.ndarray, float, np.ndarray, float]:
    """The lesion's HU on the crop by density and heterogeneity (texture, necrotic core, an isodense
    lesion's rim). Returns (HU map, target HU, depth inside the body in mm, the body's deepest point)."""
    inside = _edt_inside(body, sp)
    depth = float(inside.max())
    target = _lesion_hu(rng, t, attrs["density"], host_hu)
    L = np.full(body.shape, target, np.float32)
    if attrs["heterogeneity"] == HETEROGENEITY[1]:
        amp = rng.uniform(30, 45)
        L += amp * _smooth_noise(rng, body.shape, tuple(max(2.0 / d, 0.8) for d in sp))
        if depth >= 4.0 and rng.random() < 0.4:  # necrotic core
            L[inside >= 0.6 * depth] -= rng.uniform(25, 40)
    # keep the labelled mean at the target whatever the texture
    L[body] += target - float(L[body].mean())
    if attrs["density"] == "Isodense":  # a capsule-like rim makes an isodense lesion findable
        rim = (inside > 0) & (inside <= max(1.3, min(sp)) + 1e-3)  # outermost voxel layer
        rim_hu = rng.choice([-1.0, 1.0]) * rng.uniform(35, 45)
        L[rim] += rim_hu
        # split the rim's effect between core and mask mean: both stay within a few HU of the host
        L[body] -= 0.5 * rim_hu * float(rim[body].mean())
    return L, target, inside, depth


def _blend_lesion(img: np.ndarray, rng, body: _Body, lesion: np.ndarray, inside: np.ndarray, depth: float,
                  ill: bool, organ_map: np.ndarray, host_hu: float) -> float:
    """Mixes the lesion's HU into ``img`` on its crop by the surface attribute; returns the edge width w (mm).

    alpha: lesion fraction, 0.5 on the labelled boundary. Well-defined: a sharp step (then only
    the partial-volume blur). Ill-defined: a wide logistic ramp (10-90 % over ~4.4 w) with a
    patchy infiltrative tail outside. Inside the label the lesion mixes with host tissue (it
    infiltrates the host), so gas or fat next to a thin lesion does not leak into it.
    """
    sp = body.sub.spacing_zyx
    outside = ndi.distance_transform_edt(~body.mask, sampling=sp).astype(np.float32)
    w = 0.15
    if ill:
        w = float(np.clip(rng.uniform(0.35, 0.5) * max(depth, 3.0), 1.5, 2.5))
    alpha = 1.0 / (1.0 + np.exp(np.clip(np.where(body.mask, -inside, outside) / w, -40, 40)))
    if ill:
        fringe = np.clip(1.0 + 0.6 * _smooth_noise(rng, body.mask.shape, max(1.0 / min(sp), 0.7)), 0.2, 1.5)
        alpha = np.where(body.mask, alpha, np.minimum(alpha * fringe, 0.49))
    alpha[organ_map[body.bb] == 0] = 0.0
    background = np.where(body.mask, np.float32(host_hu), img[body.bb])
    img[body.bb] = background * (1 - alpha) + lesion * alpha
    return w


def _acquire(img: np.ndarray, rng, shape) -> tuple[np.ndarray, float]:
    """Acquisition: partial-volume blur, white noise, integer HU. Returns (image, noise sigma in HU)."""
    img = ndi.gaussian_filter(img, _PV_SIGMA_VOX)
    noise = rng.uniform(10.0, 18.0)
    img += noise * rng.standard_normal(shape).astype(np.float32)
    return np.clip(np.round(img), -1024, 3071).astype(np.float32), noise


def _is_hollow_host(host: str) -> bool:
    """Whether lesions of this host grow in a hollow organ's wall (so 'Wall thickening' is possible)."""
    names = _HOST_ORGANS.get(host, ())
    return host != "gallbladder_lumen" and any(o.lumen_hu for o in _ANATOMY if o.name in names)


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
def _origin_for(size_xyz, spacing_xyz) -> tuple[float, float, float]:
    """A non-trivial origin (mm): the FOV centred slightly off the scanner isocentre, table at z=-200."""
    return tuple(float(-(n - 1) * s / 2 + off) for n, s, off in zip(size_xyz, spacing_xyz, (12.5, -31.25, -200.0)))


def _to_sitk(array: np.ndarray, spacing_xyz, origin_xyz, direction) -> sitk.Image:
    im = sitk.GetImageFromArray(array)
    im.SetSpacing(tuple(float(v) for v in spacing_xyz))
    im.SetOrigin(tuple(float(v) for v in origin_xyz))
    im.SetDirection(tuple(float(v) for v in direction))
    return im


def _write_image(image: sitk.Image, path: Path) -> None:
    """Atomic write: a temporary file in the same folder (same extension, so ITK picks NIfTI), then rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nii.gz", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _case_job(job: dict) -> tuple[str, dict, str]:
    img, label, attrs, extras = generate_case(np.random.default_rng(job["seed"]), job["lesion_type"],
                                              job["size"], job["spacing"])
    folder = Path(job["folder"])
    split = job["split"]
    _write_image(_to_sitk(img.astype(np.int16), job["spacing"], job["origin"], job["direction"]),
                 folder / f"images{split}" / f"{job['case_id']}_0000.nii.gz")
    _write_image(_to_sitk(label, job["spacing"], job["origin"], job["direction"]),
                 folder / f"labels{split}" / f"{job['case_id']}.nii.gz")
    if job["write_organ_maps"]:
        _write_image(_to_sitk(extras["organ_map"], job["spacing"], job["origin"], job["direction"]),
                     folder / f"organs{split}" / f"{job['case_id']}.nii.gz")
    return job["case_id"], attrs, split


def generate_phantom_dataset(out_dir: str | os.PathLike, dataset_id: int = 501, name: str = "ISRGPhantom",
                             n_cases: int = 60, size=64, spacing=1.5, seed: int = 0,
                             include_types: Iterable[str] | None = None, holdout_types: Iterable[str] = (),
                             num_workers: int = 1, direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
                             write_organ_maps: bool = False, overwrite: bool = False,
                             progress: bool = True) -> Path:
    """Writes the phantom as an nnU-Net raw dataset and returns its folder ``out_dir/DatasetNNN_Name``.

    ``n_cases`` cases are spread evenly (in a seeded random order) over the included and held-out
    lesion types; cases of ``holdout_types`` go to ``imagesTs``/``labelsTs``/``attributesTs.json``
    (the zero-shot split) and all others to the training split. ``size`` (voxels) and ``spacing``
    (mm) are in (x, y, z) order. The same arguments give byte-identical files, whatever
    ``num_workers``. The folder is built under a temporary name and renamed when complete; an
    existing dataset folder is an error unless ``overwrite``.
    """
    size_xyz = _xyz3(size, "size", int)
    spacing_xyz = _xyz3(spacing, "spacing")
    if len(tuple(direction)) != 9:
        raise ValueError(f"direction must be 9 numbers (a 3x3 matrix, row-major), got {direction!r}")
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be in 1..999 (nnU-Net's DatasetNNN), got {dataset_id}")
    if not name or not str(name).replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"name must be alphanumeric (with _ or -), got {name!r}")
    holdout = list(dict.fromkeys(holdout_types))
    include = list(dict.fromkeys(include_types)) if include_types is not None else \
        [k for k in LESION_TYPES if k not in holdout]
    for what, types in (("include_types", include), ("holdout_types", holdout)):
        unknown = [k for k in types if k not in LESION_TYPES]
        if unknown:
            raise ValueError(f"{what}: unknown lesion types {unknown}; allowed: {sorted(LESION_TYPES)}")
    include = [k for k in include if k not in holdout]
    if not include:
        raise ValueError("no lesion types left for training after removing the held-out types")
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")

    out_dir = Path(out_dir)
    final = out_dir / f"Dataset{int(dataset_id):03d}_{name}"
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite) to replace it")

    master = np.random.default_rng(seed)
    all_types = include + holdout
    types = [all_types[i % len(all_types)] for i in range(n_cases)]
    types = [types[i] for i in master.permutation(n_cases)]
    seeds = np.random.SeedSequence(seed).spawn(n_cases)
    width = max(4, len(str(n_cases - 1)))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out_dir))
    try:
        for split in ("Tr", "Ts"):
            for kind in ("images", "labels") + (("organs",) if write_organ_maps else ()):
                (work / f"{kind}{split}").mkdir()
        origin = _origin_for(size_xyz, spacing_xyz)
        jobs = [dict(seed=seeds[i], lesion_type=types[i], size=size_xyz, spacing=spacing_xyz, origin=origin,
                     direction=tuple(direction), folder=str(work), case_id=f"case_{i:0{width}d}",
                     split="Ts" if types[i] in holdout else "Tr", write_organ_maps=write_organ_maps)
                for i in range(n_cases)]
        results = _run_jobs(jobs, num_workers, progress)
        tables = {"Tr": {}, "Ts": {}}
        for case_id, attrs, split in results:
            tables[split][case_id] = attrs
        schema = {k: list(v) for k, v in DEFAULT_SCHEMA.items()}
        type_info = {}
        for k in all_types:
            lt = LESION_TYPES[k]
            type_info[k] = {"host": lt.host, "split": "zero-shot" if k in holdout else "train",
                            "n_train": sum(v["lesion_type"] == k for v in tables["Tr"].values()),
                            "n_test": sum(v["lesion_type"] == k for v in tables["Ts"].values()),
                            "description": lt.description}
        dataset_json = {
            "name": name,
            "description": "nnunet-isrg synthetic CT lesion phantom (HU); one lesion per case, "
                           "attributes rendered by construction",
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "lesion": 1},
            "numTraining": len(tables["Tr"]),
            "file_ending": ".nii.gz",
            "isrg": {
                "attributes": schema, "lesion_labels": [1], "lesion_types": type_info,
                "zero_shot_types": holdout,
                "phantom": {"version": PHANTOM_VERSION, "seed": int(seed), "size_xyz": list(size_xyz),
                            "spacing_xyz": list(spacing_xyz), "origin_xyz": list(origin),
                            "direction": list(map(float, direction)),
                            "organ_labels": ORGAN_LABELS if write_organ_maps else None},
            },
        }
        write_json_atomic(work / "dataset.json", dataset_json)
        write_json_atomic(work / ATTRIBUTES_FILENAME, dict(sorted(tables["Tr"].items())))
        if holdout:
            write_json_atomic(work / "attributesTs.json", dict(sorted(tables["Ts"].items())))
        else:
            for kind in ("images", "labels", "organs"):
                if (work / f"{kind}Ts").exists():
                    (work / f"{kind}Ts").rmdir()
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def _run_jobs(jobs: list[dict], num_workers: int, progress: bool) -> list:
    from tqdm import tqdm
    bar = dict(total=len(jobs), desc="phantom", unit="case", disable=not progress)
    if num_workers and num_workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(min(num_workers, len(jobs))) as pool:
            return list(tqdm(pool.imap(_case_job, jobs), **bar))
    return [_case_job(j) for j in tqdm(jobs, **bar)]


def dataset_digest(folder: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file of a dataset folder, by relative path (for determinism checks)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# command line (wired as `isrg phantom` by nnunet_isrg/cli.py)
# ---------------------------------------------------------------------------------------------
def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in str(text).replace("x", ",").split(",") if v.strip())


def add_phantom_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-o", "--out", default=None,
                        help="folder to write DatasetNNN_Name into (default: $nnUNet_raw, else ./nnUNet_raw)")
    parser.add_argument("-d", "--dataset-id", type=int, default=501, help="nnU-Net dataset id (default 501)")
    parser.add_argument("--name", default="ISRGPhantom", help="dataset name (default ISRGPhantom)")
    parser.add_argument("-n", "--n-cases", type=int, default=60, help="number of cases (default 60)")
    parser.add_argument("--size", default="64", help="voxels per side, or x,y,z (default 64)")
    parser.add_argument("--spacing", default="1.5", help="mm, one number or x,y,z e.g. 0.8,0.8,2.5 (default 1.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--include-types", nargs="+", default=None, metavar="TYPE",
                        help=f"lesion types to use (default all): {' '.join(LESION_TYPES)}")
    parser.add_argument("--holdout-types", nargs="*", default=[], metavar="TYPE",
                        help="lesion types written to imagesTs only (zero-shot); "
                             f"the paper holds out: {' '.join(PAPER_ZERO_SHOT_TYPES)}")
    parser.add_argument("--paper-holdout", action="store_true",
                        help=f"hold out the paper's zero-shot types ({', '.join(PAPER_ZERO_SHOT_TYPES)})")
    parser.add_argument("-j", "--num-workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--organ-maps", action="store_true", help="also write organsTr/organsTs label maps")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return parser


def run_phantom_from_args(args: argparse.Namespace) -> Path:
    out = args.out or os.environ.get("nnUNet_raw") or "nnUNet_raw"
    size = tuple(int(v) for v in _floats(args.size))
    spacing = _floats(args.spacing)
    holdout = list(args.holdout_types or []) + (list(PAPER_ZERO_SHOT_TYPES) if args.paper_holdout else [])
    folder = generate_phantom_dataset(
        out, dataset_id=args.dataset_id, name=args.name, n_cases=args.n_cases,
        size=size[0] if len(size) == 1 else size, spacing=spacing[0] if len(spacing) == 1 else spacing,
        seed=args.seed, include_types=args.include_types, holdout_types=holdout, num_workers=args.num_workers,
        write_organ_maps=args.organ_maps, overwrite=args.overwrite)
    print(f"wrote {folder}")
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    run_phantom_from_args(add_phantom_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv))


if __name__ == "__main__":
    main()
