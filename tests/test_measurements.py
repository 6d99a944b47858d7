"""Lesion measurements against analytic shapes, hand computations, SimpleITK and real cases."""
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_isrg.report.measurements import (Geometry, MeasurementError, centroid_world, extents_mm, hu_statistics,
                                             lesion_measurements, organ_location, principal_axes_mm, recist_axes_mm,
                                             shell_statistics, volume_ml)

# ../shared/realdata beside the repository; ISRG_REALDATA points elsewhere
REALDATA = Path(os.environ.get("ISRG_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
REAL = REALDATA / "ibsi-sts"
needs_real_data = pytest.mark.skipif(not (REAL / "STS_001" / "CT_image.nii.gz").is_file(),
                                     reason=f"real data not found at {REAL}")


def ellipsoid(shape_zyx, spacing_zyx, centre_zyx, semi_zyx, theta: float = 0.0) -> np.ndarray:
    """Voxels whose centre lies inside an ellipsoid (mm), optionally rotated by theta in the x-y plane."""
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape_zyx, centre_zyx, spacing_zyx)],
                             indexing="ij")
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    return (zz / semi_zyx[0]) ** 2 + (v / semi_zyx[1]) ** 2 + (u / semi_zyx[2]) ** 2 <= 1


def image_from(arr_zyx, spacing_xyz, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(np.asarray(arr_zyx, np.float32))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


ROTATED = tuple(sitk.VersorTransform((0.2, 0.1, 1.0), 0.5).GetMatrix())


# ---------------------------------------------------------------------------- analytic shapes

@pytest.mark.parametrize("spacing_zyx, shape", [((1.0, 1.0, 1.0), (28, 28, 28)), ((2.5, 0.7, 0.7), (12, 36, 36))])
def test_sphere_volume_within_3_percent(spacing_zyx, shape):
    r = 10.0
    centre = [(n - 1) / 2 + 0.3 for n in shape]
    m = ellipsoid(shape, spacing_zyx, centre, (r, r, r))
    assert m[0].sum() == 0 and m[-1].sum() == 0  # fully inside the grid
    v = volume_ml(m, spacing_zyx[::-1])
    assert v == pytest.approx(4 / 3 * np.pi * r ** 3 / 1000, rel=0.03)
    assert v == pytest.approx(m.sum() * np.prod(spacing_zyx) / 1000, rel=1e-12)


def test_ellipsoid_recist_axes_within_one_voxel_anisotropic():
    sp_zyx = (2.5, 0.7, 0.7)
    a, b, c = 12.0, 7.0, 15.0  # x, y, z semi-axes (mm)
    m = ellipsoid((16, 28, 44), sp_zyx, (7.5, 13.6, 21.2), (c, b, a))
    r = recist_axes_mm(m, sp_zyx[::-1])
    assert abs(r["long_axis_mm"] - 2 * a) <= sp_zyx[2]
    assert abs(r["short_axis_mm"] - 2 * b) <= sp_zyx[1]
    # the long axis lies along x (up to the tilt allowed by the flat rasterised ends), on one slice
    p = np.asarray(r["long_axis_endpoints_voxel_zyx"])
    dy_mm, dx_mm = (p[1, 1] - p[0, 1]) * sp_zyx[1], (p[1, 2] - p[0, 2]) * sp_zyx[2]
    assert abs(np.degrees(np.arctan2(abs(dy_mm), abs(dx_mm)))) < 10 and p[0, 0] == p[1, 0] == r["slice_index"]
    # principal axes of the second moments match the full axis lengths
    assert principal_axes_mm(m, sp_zyx[::-1]) == pytest.approx([2 * c, 2 * a, 2 * b], rel=0.04)
    # voxel-centre convention: never longer than the object, at most two half-voxels shorter
    rc = recist_axes_mm(m, sp_zyx[::-1], convention="centres")
    assert 2 * a - 2 * sp_zyx[2] <= rc["long_axis_mm"] <= 2 * a


@pytest.mark.parametrize("theta", [0.3, np.pi / 4])
def test_rotated_ellipse_recist_within_one_voxel_diagonal(theta):
    sp = 0.7
    m = ellipsoid((10, 64, 64), (2.5, sp, sp), (4.5, 30.3, 32.7), (10.0, 8.0, 15.0), theta)
    r = recist_axes_mm(m, (sp, sp, 2.5))
    assert abs(r["long_axis_mm"] - 30.0) <= sp * np.sqrt(2)
    assert abs(r["short_axis_mm"] - 16.0) <= sp * np.sqrt(2)
    d = np.diff(np.asarray(r["long_axis_endpoints_voxel_zyx"])[:, 1:], axis=0)[0]  # (dy, dx) in voxels
    angle = np.arctan2(d[0], d[1]) % np.pi
    assert min(abs(angle - theta), np.pi - abs(angle - theta)) < 0.1
    # long and short axes are perpendicular (in mm)
    s = np.diff(np.asarray(r["short_axis_endpoints_voxel_zyx"])[:, 1:], axis=0)[0]
    assert abs(np.dot(d * sp, s * sp)) < 1e-6 * np.linalg.norm(d * sp) * np.linalg.norm(s * sp) + 1e-9


# ---------------------------------------------------------------------------- hand-computed

def test_hand_computed_triangle_voxel_centres():
    m = np.zeros((3, 5, 6), bool)
    m[1, 0, 0] = m[1, 0, 4] = m[1, 3, 0] = True  # (y, x) = (0,0), (0,4), (3,0): a 3-4-5 right triangle
    m[0, 0, 0] = True  # a smaller slice must not win
    r = recist_axes_mm(m, (1.0, 1.0, 1.0), convention="centres")
    assert r["slice_index"] == 1
    assert r["long_axis_mm"] == pytest.approx(5.0)
    assert r["short_axis_mm"] == pytest.approx(2.4)  # altitude onto the hypotenuse: 2 * area / 5
    ends = sorted(map(tuple, np.asarray(r["long_axis_endpoints_voxel_zyx"])))
    assert ends == [(1.0, 0.0, 4.0), (1.0, 3.0, 0.0)]


def test_hand_computed_rectangle_voxel_corners_anisotropic():
    m = np.zeros((1, 6, 8), bool)
    m[0, 1:4, 2:6] = True  # 3 rows x 4 columns
    sx, sy = 0.5, 2.0
    r = recist_axes_mm(m, (sx, sy, 3.0))  # corners: a 2 mm x 6 mm rectangle
    d = np.hypot(4 * sx, 3 * sy)
    assert r["long_axis_mm"] == pytest.approx(d)
    # longest chord perpendicular to a diagonal of a w x h rectangle (w < h): w * d / h
    assert r["short_axis_mm"] == pytest.approx(4 * sx * d / (3 * sy))
    single = np.zeros((1, 3, 3), bool)
    single[0, 1, 1] = True
    assert recist_axes_mm(single, (sx, sy, 3.0))["long_axis_mm"] == pytest.approx(np.hypot(sx, sy))
    assert recist_axes_mm(single, (sx, sy, 3.0), convention="centres")["long_axis_mm"] == 0.0


def test_extents_are_edge_to_edge_along_image_axes():
    m = np.zeros((10, 10, 10), bool)
    m[2:7, 3:7, 1:4] = True  # 5 z, 4 y, 3 x voxels
    assert extents_mm(m, (0.5, 2.0, 3.0)) == {"x": pytest.approx(1.5), "y": pytest.approx(8.0), "z": pytest.approx(15.0)}


# ---------------------------------------------------------------------------- geometry

def test_world_coordinates_agree_with_simpleitk_for_rotated_grid():
    arr = np.zeros((12, 14, 16), np.float32)
    img = image_from(arr, (0.8, 1.1, 2.5), origin=(-30.0, 12.5, 100.0), direction=ROTATED)
    m = np.zeros(arr.shape, bool)
    m[3:6, 4:10, 2:5] = True
    m[7, 11, 13] = True
    c = centroid_world(m, img)
    g = Geometry.from_image(img)
    idx_zyx = np.argwhere(m).mean(axis=0)
    expect = img.TransformContinuousIndexToPhysicalPoint(idx_zyx[::-1].tolist())
    assert c["voxel_zyx"] == pytest.approx(idx_zyx.tolist())
    assert c["world_xyz"] == pytest.approx(list(expect))
    assert centroid_world(m, g)["world_xyz"] == pytest.approx(list(expect))
    assert g.world_to_index(expect) == pytest.approx(idx_zyx)
    # RECIST endpoints in world coordinates are the same transform of the voxel endpoints
    r = recist_axes_mm(m, img)
    for vox, world in zip(r["long_axis_endpoints_voxel_zyx"], r["long_axis_endpoints_world_xyz"]):
        assert world == pytest.approx(list(img.TransformContinuousIndexToPhysicalPoint(vox[::-1])))
    # the world distance between the endpoints is the long axis (direction is a rotation)
    w = np.asarray(r["long_axis_endpoints_world_xyz"])
    assert np.linalg.norm(w[1] - w[0]) == pytest.approx(r["long_axis_mm"])


# ---------------------------------------------------------------------------- intensity and organs

def test_shell_contrast_on_a_two_tone_phantom():
    sp_zyx = (2.0, 1.0, 1.0)
    m = ellipsoid((20, 40, 40), sp_zyx, (9.5, 19.5, 19.5), (8.0, 8.0, 8.0))
    arr = np.where(m, 20.0, 60.0).astype(np.float32)
    s = shell_statistics(arr, m, sp_zyx[::-1])
    assert s["mean_hu"] == pytest.approx(60.0) and s["contrast_hu"] == pytest.approx(-40.0)
    assert s["air_fraction"] == 0.0 and s["n_voxels"] > 0
    # restricted to a tissue: only its voxels count
    organ = np.zeros(arr.shape, bool)
    organ[:, :, 20:] = True
    arr2 = arr.copy()
    arr2[:, :, :20][~m[:, :, :20]] = -800.0
    s2 = shell_statistics(arr2, m, sp_zyx[::-1], restrict_to=organ)
    assert s2["mean_hu"] == pytest.approx(60.0) and s2["restricted"]
    assert shell_statistics(arr2, m, sp_zyx[::-1])["air_fraction"] > 0.3


def test_organ_location_majority_and_overlap():
    m = np.zeros((4, 10, 10), bool)
    m[1:3, 2:8, 2:7] = True  # 60 voxels: x 2..6
    organs = np.zeros(m.shape, np.int16)
    organs[:, :, :5] = 3  # x 2..4: 36 voxels
    organs[:, :, 5:6] = 7  # x 5: 12 voxels (x 6 is background)
    loc = organ_location(m, organs, {3: "liver", 7: "kidney"})
    assert loc["organ"] == "liver" and loc["organ_label"] == 3
    assert loc["organ_overlap"] == {"liver": pytest.approx(0.6), "kidney": pytest.approx(0.2)}
    assert loc["organ_at_centroid"] == "liver"  # centroid x = 4
    assert organ_location(m, np.zeros_like(organs))["organ"] is None


def test_errors_name_the_problem():
    with pytest.raises(MeasurementError, match="empty"):
        volume_ml(np.zeros((3, 3, 3), bool), (1, 1, 1))
    img = image_from(np.zeros((4, 5, 6)), (1.0, 1.0, 1.0))
    with pytest.raises(MeasurementError, match="does not match the image shape"):
        lesion_measurements(img, np.ones((4, 5, 5), bool))
    with pytest.raises(MeasurementError, match="spacing_xyz"):
        volume_ml(np.ones((2, 2, 2), bool), (1.0, -1.0, 1.0))


# ---------------------------------------------------------------------------- real cases

@needs_real_data
@pytest.mark.parametrize("case", ["STS_001", "STS_002"])
def test_real_case_against_direct_computation(case):
    img = sitk.ReadImage(str(REAL / case / "CT_image.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / case / "CT_mask.nii.gz"))) > 0
    arr = sitk.GetArrayFromImage(img).astype(np.float64)
    m = lesion_measurements(img, mask)
    voxel_ml = np.prod(img.GetSpacing()) / 1000.0
    assert m["n_voxels"] == int(mask.sum())
    assert m["volume_ml"] == pytest.approx(mask.sum() * voxel_ml, rel=1e-12)
    assert m["hu"]["mean"] == pytest.approx(arr[mask].mean(), rel=1e-9)
    assert m["hu"]["std"] == pytest.approx(arr[mask].std(), rel=1e-9)
    assert (m["hu"]["min"], m["hu"]["max"]) == (arr[mask].min(), arr[mask].max())
    # RECIST long axis: brute force over all lesion voxel corners of its slice
    r = m["recist"]
    ys, xs = np.nonzero(mask[r["slice_index"]])
    sx, sy = img.GetSpacing()[:2]
    corners = np.concatenate([np.stack([(xs + dx) * sx, (ys + dy) * sy], 1) for dx in (-.5, .5) for dy in (-.5, .5)])
    from scipy.spatial.distance import pdist
    from scipy.spatial import ConvexHull
    hull = corners[ConvexHull(corners).vertices]
    assert r["long_axis_mm"] == pytest.approx(pdist(hull).max())
    assert r["short_axis_mm"] <= r["long_axis_mm"]
    # no other slice has a longer diameter (checks the bounding-box pruning across slices)
    for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
        assert recist_axes_mm(mask[z:z + 1], img.GetSpacing())["long_axis_mm"] <= r["long_axis_mm"] + 1e-9
    c = np.argwhere(mask).mean(axis=0)
    assert m["location"]["centroid"]["world_xyz"] == pytest.approx(
        list(img.TransformContinuousIndexToPhysicalPoint(c[::-1].tolist())))
    assert hu_statistics(img, mask)["mean"] == pytest.approx(m["hu"]["mean"])
