"""Click simulation: deterministic evaluation clicks against geometry, random training clicks against their regions."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_isrg.clicks import (NEGATIVE, PADDING, POSITIVE, first_click_deterministic, largest_error_component,
                                next_click_deterministic, sample_first_click, sample_target_and_first_click,
                                simulate_correction_click, target_component_under, target_components_under)


def ball(shape, centre_zyx, radius_mm, spacing_zyx=(1.0, 1.0, 1.0)):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), centre_zyx, spacing_zyx))
    return d2 <= radius_mm ** 2


# --------------------------------------------------------------------------- deterministic clicks

@pytest.mark.parametrize("spacing,centre", [((1.0, 1.0, 1.0), (15, 17, 14)), ((3.0, 0.75, 0.75), (6, 20, 22))])
def test_first_click_of_a_sphere_is_its_centre(spacing, centre):
    gt = ball((16, 40, 40) if spacing[0] > 1 else (32, 32, 32), centre, 7.0, spacing)
    p = first_click_deterministic(gt, spacing)
    assert gt[p]
    assert np.all(np.abs(np.array(p) - np.array(centre)) <= 1), p


def test_first_click_of_an_anisotropic_box():
    # box of 9 slices x 21 x 31 voxels at 4 x 1 x 1 mm: 36 x 21 x 31 mm. The in-plane y half-width
    # (10.5 mm) is the binding distance, so every slice whose z distance to the border exceeds it
    # ties; the tie-break (nearest to the centroid) gives the centre voxel.
    gt = np.zeros((15, 30, 40), bool)
    gt[3:12, 5:26, 4:35] = True
    assert first_click_deterministic(gt, (4.0, 1.0, 1.0)) == (7, 15, 19)
    # with 1 mm slices the z extent (9 mm) binds instead; still the centre
    assert first_click_deterministic(gt, (1.0, 1.0, 1.0)) == (7, 15, 19)


def test_first_click_border_counts_as_boundary():
    # a lesion cut by the image border at z=0: the click must stay away from the cut face
    gt = np.zeros((20, 20, 20), bool)
    gt[0:10, 5:15, 5:15] = True
    z, _, _ = first_click_deterministic(gt, (1, 1, 1))
    assert 4 <= z <= 5


def test_first_click_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        first_click_deterministic(np.zeros((5, 5, 5), bool), (1, 1, 1))


def test_next_click_positive_in_missed_half_of_sphere():
    gt = ball((32, 32, 32), (16, 16, 16), 10.0)
    pred = gt.copy()
    pred[:, :, 16:] = False  # half missed
    (p, positive) = next_click_deterministic(pred, gt, (1.0, 1.0, 1.0))
    assert positive is True
    assert (gt & ~pred)[p]
    # farthest from the FN region's boundary: well inside the missing half (centre of a half ball of
    # radius 10 is about 3.75 voxels from the cut)
    assert p[2] > 18 and abs(p[0] - 16) <= 1 and abs(p[1] - 16) <= 1


def test_next_click_negative_in_spurious_blob():
    gt = ball((32, 32, 32), (10, 10, 10), 6.0)
    blob = ball((32, 32, 32), (23, 22, 22), 5.0)
    pred = gt | blob
    (p, positive) = next_click_deterministic(pred, gt, (1.0, 1.0, 1.0))
    assert positive is False
    assert blob[p] and not gt[p]
    assert np.all(np.abs(np.array(p) - (23, 22, 22)) <= 1)


def test_next_click_picks_the_largest_component_by_voxel_count():
    gt = ball((32, 32, 32), (16, 16, 16), 9.0)
    pred = gt.copy()
    pred[10:13, 10:13, 10:13] = False  # small FN hole (27 voxels)
    big_fp = np.zeros_like(gt)
    big_fp[0:4, 0:10, 0:10] = True  # 400 voxels, away from gt
    pred |= big_fp
    comp, is_fn = largest_error_component(pred, gt)
    assert not is_fn and np.array_equal(comp, big_fp)
    (p, positive) = next_click_deterministic(pred, gt, (1, 1, 1))
    assert positive is False and big_fp[p]


def test_next_click_none_when_perfect():
    gt = ball((16, 16, 16), (8, 8, 8), 4.0)
    assert next_click_deterministic(gt, gt, (1, 1, 1)) is None


def test_target_component_under_numpy_and_torch():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[2:6, 2:6, 2:6] = 1
    seg[10:15, 10:15, 10:15] = 1
    seg[15:18, 15:18, 15:18] = 2  # diagonal neighbour of the label-1 block, but another label
    comp = target_component_under(seg, (12, 12, 12))
    assert comp.sum() == 125 and comp[10:15, 10:15, 10:15].all()
    assert not target_component_under(seg, (0, 0, 0)).any()  # background
    comp2 = target_component_under(seg, (17, 17, 17))
    assert comp2.sum() == 27  # only voxels of label 2
    # 26-connectivity: diagonal neighbours belong to the same component
    diag = np.zeros((5, 5, 5), bool)
    diag[1, 1, 1] = diag[2, 2, 2] = True
    assert target_component_under(diag, (1, 1, 1)).sum() == 2
    assert target_component_under(diag, (1, 1, 1), connectivity=1).sum() == 1
    t = torch.from_numpy(seg > 0)
    ct = target_component_under(t, (3, 3, 3))
    assert isinstance(ct, torch.Tensor) and int(ct.sum()) == 64
    with pytest.raises(ValueError, match="outside"):
        target_component_under(seg, (20, 0, 0))


# --------------------------------------------------------------------------- training clicks

def _random_masks(seed, b=4, shape=(12, 14, 16)):
    rng = np.random.default_rng(seed)
    target = np.zeros((b, 1) + shape, bool)
    pred = np.zeros_like(target)
    for i in range(b):
        c = rng.uniform(3, np.array(shape) - 3)
        target[i, 0] = ball(shape, c, rng.uniform(2, 5))
        pred[i, 0] = ball(shape, c + rng.normal(0, 2, 3), rng.uniform(2, 5))
    return torch.from_numpy(pred), torch.from_numpy(target)


def test_correction_clicks_fall_in_their_error_regions():
    pred, target = _random_masks(1)
    fn, fp = target & ~pred, pred & ~target
    g = torch.Generator().manual_seed(0)
    seen = {POSITIVE: 0, NEGATIVE: 0}
    for _ in range(200):
        pts, labels = simulate_correction_click(pred, target, g)
        assert pts.shape == (4, 1, 3) and pts.dtype == torch.float32 and labels.shape == (4, 1)
        idx = pts[:, 0].long()
        assert (idx >= 0).all() and (idx < torch.tensor(target.shape[2:])).all()
        for b in range(4):
            z, y, x = idx[b].tolist()
            lab = int(labels[b, 0])
            assert lab in (POSITIVE, NEGATIVE)
            region = fn if lab == POSITIVE else fp
            assert bool(region[b, 0, z, y, x])
            seen[lab] += 1
    assert seen[POSITIVE] > 0 and seen[NEGATIVE] > 0


def test_correction_click_proportional_choice_and_larger_mode():
    # FN of 3 voxels, FP of 1 voxel: proportional picks positive about 3/4 of the time
    target = torch.zeros(1, 1, 6, 6, 6, dtype=torch.bool)
    pred = torch.zeros_like(target)
    target[0, 0, 1, 1, 1:4] = True
    pred[0, 0, 4, 4, 4] = True
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([simulate_correction_click(pred, target, g)[1] for _ in range(800)])
    frac = (labels == POSITIVE).float().mean().item()
    assert 0.68 < frac < 0.82, frac
    labels = torch.cat([simulate_correction_click(pred, target, g, mode="larger")[1] for _ in range(50)])
    assert (labels == POSITIVE).all()


def test_correction_clicks_reproducible_and_padding():
    pred, target = _random_masks(2)
    pred[1] = target[1]  # no error in sample 1
    a = simulate_correction_click(pred, target, torch.Generator().manual_seed(42))
    b = simulate_correction_click(pred, target, torch.Generator().manual_seed(42))
    c = simulate_correction_click(pred, target, torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[1][1, 0] == PADDING and torch.equal(a[0][1, 0], torch.zeros(3))
    assert (a[1][[0, 2, 3], 0] != PADDING).all()


def test_first_click_inside_target_padding_and_interior_bias():
    _, target = _random_masks(4)
    target[2] = False
    g = torch.Generator().manual_seed(0)
    for frac in (0.0, 0.5, 0.9):
        for _ in range(30):
            pts, labels = sample_first_click(target, g, interior_fraction=frac)
            assert labels[2, 0] == PADDING
            for b in (0, 1, 3):
                assert labels[b, 0] == POSITIVE
                z, y, x = pts[b, 0].long().tolist()
                assert bool(target[b, 0, z, y, x])
    # with a strong interior bias the click is deep: compare with the exact EDT of the target
    sphere = torch.from_numpy(ball((21, 21, 21), (10, 10, 10), 8.0))[None, None]
    edt = ndimage.distance_transform_edt(np.pad(sphere[0, 0].numpy(), 1))[1:-1, 1:-1, 1:-1]
    depths = []
    for _ in range(50):
        pts, _ = sample_first_click(sphere, g, interior_fraction=0.75)
        depths.append(edt[tuple(pts[0, 0].long().tolist())])
    assert min(depths) >= 5.0, min(depths)
    a = sample_first_click(target, torch.Generator().manual_seed(7), 0.5)
    b = sample_first_click(target, torch.Generator().manual_seed(7), 0.5)
    assert torch.equal(a[0], b[0])


def test_target_and_first_click_pick_one_connected_lesion():
    seg = torch.zeros(3, 1, 16, 16, 16, dtype=torch.bool)
    seg[0, 0, 1:5, 1:5, 1:5] = True
    seg[0, 0, 9:15, 9:15, 9:15] = True
    seg[1, 0, 4:8, 4:8, 4:8] = True
    g = torch.Generator().manual_seed(0)
    for frac in (0.0, 0.5):
        for _ in range(10):
            targets, pts, labels = sample_target_and_first_click(seg, g, interior_fraction=frac)
            assert labels[2, 0] == PADDING and not targets[2].any()
            assert int(targets[1].sum()) == 64
            # sample 0: exactly one of the two cubes, and the click inside it
            assert int(targets[0].sum()) in (64, 216)
            z, y, x = pts[0, 0].long().tolist()
            assert bool(targets[0, 0, z, y, x])
    # batched target lookup with explicit points and a padding label
    pts = torch.tensor([[[12.0, 12.0, 12.0]], [[5.0, 5.0, 5.0]], [[0.0, 0.0, 0.0]]])
    t = target_components_under(seg, pts, torch.tensor([[1], [1], [-1]]))
    assert int(t[0].sum()) == 216 and int(t[1].sum()) == 64 and not t[2].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_clicks_on_gpu_match_cpu_with_a_cpu_generator():
    pred, target = _random_masks(5)
    cpu = simulate_correction_click(pred, target, torch.Generator().manual_seed(9))
    gpu = simulate_correction_click(pred.cuda(), target.cuda(), torch.Generator().manual_seed(9))
    assert gpu[0].device.type == "cuda"
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
    pts, labels = sample_first_click(target.cuda(), torch.Generator(device="cuda").manual_seed(1), 0.5)
    for b in range(target.shape[0]):
        z, y, x = pts[b, 0].long().tolist()
        assert bool(target[b, 0, z, y, x]) and labels[b, 0] == POSITIVE


def test_centre_mode_places_the_evaluation_protocols_click():
    """mode="centre" is next_click_deterministic per sample: the centre of the largest error component."""
    target = torch.zeros(3, 1, 24, 24, 24, dtype=torch.bool)
    pred = torch.zeros_like(target)
    target[0, 0, 4:15, 4:15, 4:15] = True          # sample 0: missed cube -> positive click at its centre
    pred[1, 0, 10:13, 10:13, 10:13] = True          # sample 1: false-positive blob -> negative click at (11,11,11)
    target[2, 0, 2:5, 2:5, 2:5] = True              # sample 2: perfect -> padding
    pred[2] = target[2]
    points, labels = simulate_correction_click(pred, target, mode="centre")
    assert labels[:, 0].tolist() == [POSITIVE, NEGATIVE, PADDING]
    assert points[0, 0].tolist() == [9.0, 9.0, 9.0]
    assert points[1, 0].tolist() == [11.0, 11.0, 11.0]
    assert points[2, 0].tolist() == [0.0, 0.0, 0.0]
    for b in range(2):
        expected = next_click_deterministic(pred[b, 0].numpy(), target[b, 0].numpy(), (1.0, 1.0, 1.0))
        assert tuple(points[b, 0].int().tolist()) == tuple(expected[0])
    with pytest.raises(ValueError, match="'centre'"):
        simulate_correction_click(pred, target, mode="middle")
