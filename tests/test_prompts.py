"""Boxes, scribbles and lassos as voxels, against expectations drawn by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_isrg.prompts import Box, PromptError, bounding_box, jittered_box, lasso_mask, scribble_voxels


def test_box_from_any_two_opposite_corners_covers_the_voxels_between_them():
    box = Box.from_corners((4, 1, 7), (2, 3, 5))
    assert box.lo == (2.0, 1.0, 5.0) and box.hi == (4.0, 3.0, 7.0) and box.slice_axis is None
    m = box.mask((6, 6, 9))
    assert m.sum() == 3 * 3 * 3 and m[2:5, 1:4, 5:8].all()
    # fractional corners: the voxels holding them and all between (3.5, on a voxel face, takes voxel 4)
    assert Box.from_corners((1.4, 1.6, 0), (3.5, 2.4, 0.49)).voxel_slices((9, 9, 9)) == (slice(1, 5), slice(2, 3),
                                                                                        slice(0, 1))
    # a 2D box: both corners on axial slice 3
    flat = Box.from_corners((3, 2, 2), (3, 5, 6))
    assert flat.slice_axis == 0 and flat.mask((6, 8, 8)).sum() == 4 * 5
    # one voxel thick is what makes a box 2D: z 2.6-3.4 is voxel 3 alone, z 2.5 on a face holds 2 and 3
    assert Box.from_corners((2.6, 1, 1), (3.4, 4, 4)).slice_axis == 0
    half = Box.from_corners((2.5, 1, 1), (2.5, 4, 4))
    assert half.slice_axis is None and half.mask((6, 8, 8)).sum() == 2 * 4 * 4
    # clipped to the image; wholly outside it is an error naming the shape
    assert Box.from_corners((-3, -3, -3), (1, 1, 1)).mask((4, 4, 4)).sum() == 8
    with pytest.raises(PromptError, match=r"outside the image of shape \(z, y, x\) \(4, 4, 4\)"):
        Box.from_corners((5, 5, 5), (7, 7, 7)).mask((4, 4, 4))
    with pytest.raises(PromptError, match="three finite coordinates"):
        Box.from_corners((1, 2), (3, 4, 5))


def _bounded(box: Box, region) -> np.ndarray:
    values = np.ones([b - a for a, b in region], dtype=bool)
    box.bound(values, region, False)
    return values


def test_a_box_excludes_every_voxel_outside_it_and_a_2d_box_only_those_of_its_slice():
    box = Box.from_corners((2.4, 1, 3), (4, 5.6, 3.5))          # voxels z 2-4, y 1-6, x 3-4 (rounded)
    region = ((0, 8), (0, 8), (0, 8))
    inside = np.zeros((8, 8, 8), dtype=bool)
    inside[2:5, 1:7, 3:5] = True
    assert np.array_equal(_bounded(box, region), inside)
    # a part of the grid (the same voxels, offset), one beyond the box (all excluded), a torch tensor
    assert np.array_equal(_bounded(box, ((3, 6), (5, 8), (2, 4))), inside[3:6, 5:8, 2:4])
    assert not _bounded(box, ((5, 8), (0, 8), (0, 8))).any()
    logits = torch.full((8, 8, 8), 3.0)
    box.bound(logits, region, -20.0)
    assert torch.equal(logits > 0, torch.from_numpy(inside))
    points = np.array([[3, 4, 3], [4.4, 6.4, 4.4], [5, 4, 3], [3, 0, 4], [3, 4, 4.5], [3, 4, 2.5]])
    assert box.excludes(points).tolist() == [False, False, True, True, True, False]   # 4.5 is voxel 5, 2.5 voxel 3
    flat = Box.from_corners((3, 1, 1), (3, 4, 5))               # a 2D box on axial slice 3
    expected = np.ones((8, 8, 8), dtype=bool)
    expected[3] = False
    expected[3, 1:5, 1:6] = True                                # on slice 3, only the box's voxels
    assert np.array_equal(_bounded(flat, region), expected)
    assert _bounded(flat, ((4, 8), (0, 8), (0, 8))).all()       # a region without its slice: untouched
    assert flat.excludes(np.array([[3, 6, 2], [2, 6, 2], [3, 2, 2]])).tolist() == [True, False, False]


def test_bounding_and_jittered_boxes_hold_the_lesion_within_the_stated_jitter():
    mask = np.zeros((30, 40, 40), bool)
    mask[10:20, 12:32, 5:15] = True                  # extents 10, 20, 10 voxels
    tight = bounding_box(mask)
    assert tight.lo == (10, 12, 5) and tight.hi == (19, 31, 14)
    rng = np.random.default_rng(0)
    grew = []
    for _ in range(200):
        box = jittered_box(mask, rng)
        lo, hi = np.asarray(box.lo), np.asarray(box.hi)
        assert np.all(lo <= tight.lo) and np.all(hi >= tight.hi)                  # the lesion inside
        # 10 % of the extent: at most 1, 2 and 1 voxels per face
        assert np.all(np.asarray(tight.lo) - lo <= [1, 2, 1]) and np.all(hi - tight.hi <= [1, 2, 1])
        grew.append(np.concatenate([tight.lo - lo, hi - tight.hi]))
    assert np.asarray(grew).max(0).tolist() == [1, 2, 1, 1, 2, 1]                # every face does move
    # a lesion at the image border: the box stays inside the image
    edge = np.zeros((8, 8, 8), bool)
    edge[0:3, 5:8, 0:8] = True
    for _ in range(20):
        box = jittered_box(edge, rng)
        assert box.lo[0] == 0 and box.hi[1] == 7 and box.lo[2] == 0 and box.hi[2] == 7
    with pytest.raises(PromptError, match="empty mask"):
        bounding_box(np.zeros((3, 3, 3), bool))


def test_scribble_voxels_follow_the_stroke_without_gaps():
    shape = (10, 10, 10)
    assert scribble_voxels([(2, 3, 1), (2, 3, 5)], shape).tolist() == [[2, 3, x] for x in range(1, 6)]
    # a diagonal: one voxel per step, no gap in 26-connectivity
    assert scribble_voxels([(0, 0, 0), (0, 3, 3)], shape).tolist() == [[0, k, k] for k in range(4)]
    # a polyline with a corner, and a stroke leaving the image (cut at its border)
    assert scribble_voxels([(1, 1, 1), (1, 1, 3), (1, 3, 3)], shape).tolist() == [
        [1, 1, 1], [1, 1, 2], [1, 1, 3], [1, 2, 3], [1, 3, 3]]
    assert scribble_voxels([(5, 5, 8), (5, 5, 12)], shape).tolist() == [[5, 5, 8], [5, 5, 9]]
    assert scribble_voxels([(4, 4, 4)], shape).tolist() == [[4, 4, 4]]
    vox = scribble_voxels([(0, 0, 0), (9, 2, 7)], shape)                          # any direction: 26-connected
    assert np.abs(np.diff(vox, axis=0)).max() == 1
    with pytest.raises(PromptError, match="outside the image"):
        scribble_voxels([(20, 20, 20), (30, 30, 30)], shape)
    with pytest.raises(PromptError, match="list of finite"):
        scribble_voxels([(1, 2)], shape)


def test_lasso_fills_the_polygon_on_its_slice_only():
    shape = (5, 8, 8)
    # a square with corners (y, x) (1, 1) and (4, 4) on axial slice 2: the 4 x 4 voxels, outline included
    square = lasso_mask(0, 2, [(1, 1), (1, 4), (4, 4), (4, 1)], shape)
    expected = np.zeros(shape, bool)
    expected[2, 1:5, 1:5] = True
    assert np.array_equal(square, expected)
    # a right triangle (y, x): (0, 0), (0, 4), (4, 0) drawn on a coronal slice (axis y = 3): plane (z, x)
    tri = lasso_mask(1, 3, [(0, 0), (0, 4), (4, 0)], shape)
    hand = np.array([[1, 1, 1, 1, 1, 0, 0, 0],
                     [1, 1, 1, 1, 0, 0, 0, 0],
                     [1, 1, 1, 0, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0, 0, 0, 0],
                     [1, 0, 0, 0, 0, 0, 0, 0]], bool)
    assert np.array_equal(tri[:, 3, :], hand) and tri.sum() == hand.sum()
    with pytest.raises(PromptError, match=r"lasso slice 9 is outside axis z of the image \(0-4\)"):
        lasso_mask(0, 9, [(1, 1), (1, 4), (4, 4)], shape)
    with pytest.raises(PromptError, match="at least three"):
        lasso_mask(0, 1, [(1, 1), (1, 4)], shape)


# ----------------------------------------------------------------------------------------------- training
def _balls(shape=(24, 24, 24)):
    """Two targets; predictions that miss a part of the first (FN) and add a blob beside the second (FP)."""
    import torch

    zz, yy, xx = np.indices(shape)
    ball = lambda c, r: (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r  # noqa: E731
    target = np.stack([ball((12, 12, 12), 7), ball((8, 10, 12), 4)])[:, None]
    pred = target.copy()
    pred[0, 0, 12:] = False                                     # the lower half of target 0 missed
    pred[1, 0] |= ball((18, 18, 18), 3)                         # a false blob beside target 1
    return torch.from_numpy(pred), torch.from_numpy(target)


def test_training_boxes_hold_the_target_within_the_challenge_jitter():
    import torch

    from nnunet_isrg.prompt_sampling import sample_box_prompts

    _, target = _balls()
    target = torch.cat([target, torch.zeros_like(target[:1])])            # a third sample without lesion
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        points, labels = sample_box_prompts(target, g)
        assert points.shape == (3, 2, 3) and labels.tolist()[:2] == [[2, 3], [2, 3]] and labels[2].tolist() == [-1, -1]
        for b in range(2):
            tight = bounding_box(target[b, 0].numpy())
            lo, hi = points[b, 0].numpy(), points[b, 1].numpy()
            extent = np.asarray(tight.hi) - np.asarray(tight.lo) + 1
            limit = np.minimum(np.floor(0.1 * extent), 5)
            assert np.all(lo <= tight.lo) and np.all(hi >= tight.hi)
            assert np.all(tight.lo - lo <= limit) and np.all(hi - tight.hi <= limit)
    again = sample_box_prompts(target, torch.Generator().manual_seed(0))
    first = sample_box_prompts(target, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], first[0])                                 # seeded: reproducible


def test_training_2d_boxes_lie_on_one_slice_through_the_target_and_hold_its_section():
    """A reader's 2D box: both corners on one slice (one flat axis) that crosses the target, holding the
    target's section on that slice within the challenge's jitter in-plane."""
    import torch

    from nnunet_isrg.prompt_sampling import sample_box_prompts

    _, target = _balls()
    g = torch.Generator().manual_seed(3)
    axes = set()
    for _ in range(30):
        points, labels = sample_box_prompts(target, g, two_d_fraction=1.0)
        assert labels.tolist() == [[2, 3], [2, 3]]
        for b in range(2):
            lo, hi = points[b, 0].numpy(), points[b, 1].numpy()
            (axis,) = np.flatnonzero(lo == hi)                 # exactly one flat axis
            axes.add(int(axis))
            index = int(lo[axis])
            section = np.take(target[b, 0].numpy(), index, axis=axis)
            assert section.any()                               # the slice crosses the target
            tight = bounding_box(section)
            in_plane = [a for a in range(3) if a != axis]
            extent = np.asarray(tight.hi) - np.asarray(tight.lo) + 1
            limit = np.minimum(np.floor(0.1 * extent), 5)
            assert np.all(lo[in_plane] <= tight.lo) and np.all(hi[in_plane] >= tight.hi)
            assert np.all(tight.lo - lo[in_plane] <= limit) and np.all(hi[in_plane] - tight.hi <= limit)
    assert axes == {0, 1, 2}                                   # every view
    # the default draws 3D boxes only (the CVPR 2025 protocol's)
    points, _ = sample_box_prompts(target, torch.Generator().manual_seed(3))
    assert np.all(points[:, 1].numpy() - points[:, 0].numpy() > 0)


def test_training_scribbles_and_lassos_lie_inside_one_error_region():
    import torch
    from scipy import ndimage

    from nnunet_isrg.prompt_sampling import simulate_correction_lasso, simulate_correction_scribble

    pred, target = _balls()
    fn, fp = (target & ~pred).numpy()[:, 0], (pred & ~target).numpy()[:, 0]
    g = torch.Generator().manual_seed(1)
    for simulate in (simulate_correction_scribble, simulate_correction_lasso):
        for _ in range(10):
            strokes = simulate(pred, target, g).bool().numpy()
            assert strokes.shape == (2, 2, 24, 24, 24)
            # sample 0 only misses voxels: a positive stroke inside the false negatives
            assert strokes[0, 0].any() and not strokes[0, 1].any() and not (strokes[0, 0] & ~fn[0]).any()
            # sample 1 only has a false blob: a negative stroke inside it
            assert strokes[1, 1].any() and not strokes[1, 0].any() and not (strokes[1, 1] & ~fp[1]).any()
            if simulate is simulate_correction_lasso:   # on one slice of one axis
                assert any((strokes[0, 0].any(axis=tuple(a for a in range(3) if a != k)).sum() == 1)
                           for k in range(3))
            assert ndimage.label(fn[0])[1] == 1
    perfect = simulate_correction_scribble(target, target, g)
    assert not perfect.any()                                               # no error: no stroke


def test_a_scribble_too_long_to_rasterise_is_refused_before_it_is_drawn():
    corners = [(0, 0, 0), (511, 511, 511)] * 3000                 # a few KB of points, 3 million voxels long
    with pytest.raises(PromptError, match=r"the scribble is \d+ voxels long; at most 1000000 are taken"):
        scribble_voxels(corners, (512, 512, 512))
