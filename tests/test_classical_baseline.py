"""The classical interactive baseline (region growing, threshold + connected component) through the
click protocol, on synthetic lesions whose Dice can be computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_isrg.evaluation.classical_baseline import (ClassicalCase, ClassicalSetting, choose_setting,
                                                       classical_predict_fn, run_classical_baseline,
                                                       trim_by_negative_clicks)

SPACING = (1.0, 1.0, 1.0)


def sphere_and_bar(contrast: float = 100.0):
    """A sphere (radius 6) and, touching it, a bar of the same intensity: the grown region after the
    first click is both, the lesion only the sphere."""
    z, y, x = np.mgrid[:32, :32, :32]
    sphere = (z - 16) ** 2 + (y - 16) ** 2 + (x - 12) ** 2 <= 36
    bar = (np.abs(z - 16) <= 1) & (np.abs(y - 16) <= 1) & (x > 18) & (x <= 28) & ~sphere
    image = np.where(sphere | bar, contrast, 0.0).astype(np.float32)
    return image, sphere, bar


@pytest.mark.parametrize("setting", [ClassicalSetting("region_growing", {"multiplier": 2.5, "iterations": 2, "radius": 1}),
                                     ClassicalSetting("threshold", {"width": 0.5, "radius_mm": 10.0})])
def test_first_click_grows_exactly_the_connected_bright_region(setting):
    image, sphere, bar = sphere_and_bar()
    result = run_classical_baseline([ClassicalCase("c", image, sphere, SPACING)], setting, n_clicks=1)[0]
    # the grown region is sphere + bar: Dice = 2|S| / (|S| + |S| + |B|), by hand from the voxel counts
    expected = 2 * sphere.sum() / (2 * sphere.sum() + bar.sum())
    assert sphere.sum() == 925 and bar.sum() == 90
    assert result.dice[0] == pytest.approx(expected) == pytest.approx(1850 / 1940)


def test_the_negative_click_in_the_leak_removes_it():
    image, sphere, bar = sphere_and_bar()
    setting = ClassicalSetting("threshold", {"width": 0.5, "radius_mm": 10.0})
    result = run_classical_baseline([ClassicalCase("c", image, sphere, SPACING)], setting, n_clicks=3)[0]
    assert result.clicks[1]["positive"] is False and bar[tuple(result.clicks[1]["point"])]
    assert result.dice[1] > result.dice[0] and result.dice[-1] > 0.97


def test_trim_keeps_the_voxels_nearer_to_a_positive_click():
    region = np.zeros((1, 1, 11), dtype=bool)
    region[0, 0, :] = True
    trimmed = trim_by_negative_clicks(region, [(0, 0, 0)], [(0, 0, 10)], SPACING)
    assert trimmed[0, 0].tolist() == [True] * 6 + [False] * 5  # the tie at x=5 stays with the positive click


def test_no_positive_click_gives_an_empty_mask():
    image, sphere, _ = sphere_and_bar()
    predict = classical_predict_fn(image, SPACING, ClassicalSetting("threshold", {"width": 1.0}))
    mask, attributes = predict([((16, 16, 12), False)])
    assert not mask.any() and attributes is None


def test_low_contrast_needs_a_wider_interval_and_the_choice_finds_it():
    rng = np.random.default_rng(0)
    image, sphere, _ = sphere_and_bar(contrast=30.0)
    noisy = image + rng.normal(0, 8, image.shape).astype(np.float32)
    case = ClassicalCase("noisy", noisy, sphere, SPACING)
    narrow, wide = (ClassicalSetting("threshold", {"width": w, "radius_mm": 10.0}) for w in (0.05, 0.6))
    best, scores = choose_setting([case], [narrow, wide], n_clicks=1)
    assert best == wide and scores[wide.name] > scores[narrow.name]


def test_an_unknown_method_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="region_growing"):
        ClassicalSetting("watershed")
