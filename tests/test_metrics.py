"""Metric oracles: analytic spheres and shifts, sklearn's F1 for Dice, empty-mask conventions."""
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from nnunet_isrg.evaluation.metrics import (NoC, auc_over_clicks, dice, hd95, noc_at, nsd, segmentation_metrics,
                                             summarise_values, surface_distances)


def ball(shape, centre_zyx, radius_mm, spacing_zyx):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), centre_zyx, spacing_zyx))
    return d2 <= radius_mm ** 2


def box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8)])
def test_concentric_spheres_hd95_is_radius_difference(spacing):
    shape = tuple(int(round(48 / s)) for s in spacing)
    centre = tuple((n - 1) / 2 for n in shape)
    r1, r2 = 8.0, 14.0
    inner, outer = ball(shape, centre, r1, spacing), ball(shape, centre, r2, spacing)
    h = hd95(inner, outer, spacing)
    assert abs(h - (r2 - r1)) <= max(spacing), h
    # symmetric definition
    assert hd95(outer, inner, spacing) == pytest.approx(h)
    # the radius difference is 6 mm: all surface points are beyond a 2 mm tolerance, all within 8 mm
    assert nsd(inner, outer, spacing, 2.0) == 0.0
    assert nsd(inner, outer, spacing, 6.0 + max(spacing)) == 1.0


def test_identical_masks():
    sp = (2.0, 0.7, 0.7)
    m = ball((20, 40, 40), (10, 20, 20), 9.0, sp)
    assert dice(m, m) == 1.0
    assert nsd(m, m, sp) == 1.0
    assert hd95(m, m, sp) == 0.0
    r = segmentation_metrics(m, m, sp)
    assert (r["dice"], r["nsd"], r["hd95"], r["pred_empty"], r["gt_empty"]) == (1.0, 1.0, 0.0, False, False)


@pytest.mark.parametrize("axis,spacing,shift", [(2, (1.0, 1.0, 1.0), 3), (0, (3.0, 1.0, 1.0), 2), (1, (1.0, 0.5, 1.0), 4)])
def test_known_shift_of_a_box(axis, spacing, shift):
    shape = (32, 32, 32)
    gt = box(shape, (8, 8, 8), (20, 20, 20))
    pred = np.roll(gt, shift, axis=axis)
    expected = shift * spacing[axis]
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    # no surface point is farther than the shift; the shifted faces are exactly that far
    assert d_pg.max() == pytest.approx(expected) and d_gp.max() == pytest.approx(expected)
    assert hd95(pred, gt, spacing) == pytest.approx(expected)
    # Dice of a box of side 12 shifted by s along one axis: (12 - s) / 12
    assert dice(pred, gt) == pytest.approx((12 - shift) / 12)


def test_dice_matches_sklearn_f1():
    rng = np.random.default_rng(0)
    for p_fg in (0.05, 0.3, 0.7):
        a = rng.random((16, 16, 16)) < p_fg
        b = rng.random((16, 16, 16)) < 0.4
        assert dice(a, b) == pytest.approx(f1_score(b.ravel(), a.ravel()))


def test_empty_masks_conventions():
    sp = (1.0, 1.0, 1.0)
    empty = np.zeros((10, 10, 10), bool)
    m = box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    assert (dice(empty, empty), hd95(empty, empty, sp), nsd(empty, empty, sp)) == (1.0, 0.0, 1.0)
    assert dice(empty, m) == 0.0 and nsd(empty, m, sp) == 0.0 and math.isnan(hd95(empty, m, sp))
    assert dice(m, empty) == 0.0 and nsd(m, empty, sp) == 0.0 and math.isnan(hd95(m, empty, sp))
    r = segmentation_metrics(empty, m, sp)
    assert r["pred_empty"] and not r["gt_empty"] and math.isnan(r["hd95"]) and r["dice"] == 0.0


def test_nsd_monotone_in_tolerance():
    sp = (2.0, 1.0, 1.0)
    gt = ball((24, 48, 48), (12, 24, 24), 15.0, sp)
    pred = np.roll(ball((24, 48, 48), (12, 24, 24), 12.0, sp), 3, axis=2)
    values = [nsd(pred, gt, sp, t) for t in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 20.0)]
    assert all(a <= b for a, b in zip(values, values[1:])), values
    assert values[0] < 0.5 and values[-1] == 1.0


def test_mask_touching_the_border_and_crop_exactness():
    # cropping to the union's bounding box must not change the distances (compare to a padded copy)
    sp = (1.5, 1.0, 0.7)
    gt = box((12, 12, 12), (0, 3, 3), (6, 12, 9))
    pred = box((12, 12, 12), (1, 2, 4), (8, 12, 12))
    big_gt = np.pad(gt, 5)
    big_pred = np.pad(pred, 5)
    # a mask that touched the border has a surface there; padded, the same face is still surface
    assert hd95(pred, gt, sp) == pytest.approx(hd95(big_pred, big_gt, sp))
    assert nsd(pred, gt, sp, 1.0) == pytest.approx(nsd(big_pred, big_gt, sp, 1.0))


def test_bad_input_messages():
    m = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(m, np.zeros((4, 4, 5), bool))
    with pytest.raises(ValueError, match="spacing_zyx"):
        hd95(m, m, (1.0, 0.0, 1.0))


def test_auc_over_clicks():
    assert auc_over_clicks([0.5]) == 0.5
    assert auc_over_clicks([0.7, 0.7, 0.7]) == pytest.approx(0.7)
    # trapezoid over 1..3 of (0, 0.5, 1): area 1.0 over 2 clicks
    assert auc_over_clicks([0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert auc_over_clicks([0.2, 0.6, 0.8, 0.9]) == pytest.approx(((0.2 + 0.6) / 2 + (0.6 + 0.8) / 2 + (0.8 + 0.9) / 2) / 3)
    assert math.isnan(auc_over_clicks([1.0, float("nan")]))
    with pytest.raises(ValueError):
        auc_over_clicks([])


def test_noc():
    assert noc_at([0.5, 0.86, 0.95], 0.85) == NoC(2, False)
    assert noc_at([0.5, 0.86, 0.95], 0.90) == NoC(3, False)
    assert noc_at([0.9, 0.2], 0.9) == NoC(1, False)
    assert noc_at([0.5, 0.6, 0.7, 0.8, 0.84], 0.85, max_clicks=5) == NoC(5, True)
    # a hit after max_clicks does not count
    assert noc_at([0.5, 0.6, 0.95], 0.9, max_clicks=2) == NoC(2, True)


def test_summarise_values_skips_nan_and_counts_them():
    s = summarise_values([1.0, float("nan"), 3.0, None])
    assert s == {"mean": 2.0, "std": 1.0, "n": 2, "n_nan": 2}
    assert summarise_values([float("nan")])["mean"] is None
