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


# ------------------------------------------------------------------------------------------ per fold
def sphere_with_dimmer_bar(bar_value: float = 90.0):
    """A sphere of 100 with a touching bar of ``bar_value``: a wide interval leaks into the bar, a narrow one not."""
    image, sphere, bar = sphere_and_bar(contrast=100.0)
    image[bar] = bar_value
    return image, sphere, bar


def noisy_sphere(seed: int):
    image, sphere, _ = sphere_and_bar(contrast=30.0)
    return image + np.random.default_rng(seed).normal(0, 8, image.shape).astype(np.float32), sphere


def test_each_fold_chooses_on_its_training_cases_and_scores_its_validation_cases():
    from nnunet_isrg.evaluation.classical_baseline import run_classical_folds

    bar_image, sphere, bar = sphere_with_dimmer_bar()
    cases = {"bar": ClassicalCase("bar", bar_image, sphere, SPACING)}
    for k, seed in (("noisy_a", 1), ("noisy_b", 2)):
        cases[k] = ClassicalCase(k, *noisy_sphere(seed), SPACING)
    loaded = []

    def load_case(case_id):
        loaded.append(case_id)
        return None if case_id == "no_lesion" else cases[case_id]

    narrow, wide = (ClassicalSetting("threshold", {"width": w, "radius_mm": 10.0}) for w in (0.05, 0.6))
    # fold 0 tunes on noisy low-contrast spheres (wide wins) and is scored on the leaking bar case;
    # fold 1 the other way round: the setting comes from training, not from the case it is scored on
    splits = [{"train": ["noisy_a", "noisy_b", "no_lesion"], "val": ["bar"]},
              {"train": ["bar"], "val": ["noisy_a"]}]
    folds = run_classical_folds(load_case, splits, [0, 1], n_clicks=1, settings=[narrow, wide])

    assert folds[0].setting == wide and folds[1].setting == narrow
    _, scores0 = choose_setting([cases["noisy_a"], cases["noisy_b"]], [narrow, wide], n_clicks=1)
    assert folds[0].training_mean_dice == pytest.approx(scores0)
    assert folds[0].training_cases == ["noisy_a", "noisy_b"] and folds[0].n_training_cases == 2  # no lesion: skipped
    # fold 0's validation case under the wide setting: sphere + bar, Dice by hand from the voxel counts
    assert [r.case_id for r in folds[0].results] == ["bar"]
    assert folds[0].results[0].dice[0] == pytest.approx(2 * 925 / (2 * 925 + 90))
    # under the narrow setting the bar case is exact; its own best setting was not used for it
    assert folds[1].training_mean_dice[narrow.name] == pytest.approx(1.0)
    narrow_on_noisy = run_classical_baseline([cases["noisy_a"]], narrow, 1)[0].dice[0]
    wide_on_noisy = run_classical_baseline([cases["noisy_a"]], wide, 1)[0].dice[0]
    assert folds[1].results[0].dice[0] == pytest.approx(narrow_on_noisy) and narrow_on_noisy < wide_on_noisy
    d = folds[0].to_dict()
    assert d["setting"] == wide.name and d["n_training_cases_used"] == 2 and d["n_validation_cases"] == 1


def test_per_fold_limits_the_choosing_cases_and_refuses_a_leak():
    from nnunet_isrg.evaluation.classical_baseline import run_classical_folds, spread_subset

    assert spread_subset([f"c{i}" for i in range(10)], 4) == ["c0", "c3", "c6", "c9"]
    assert spread_subset(["b", "a"], None) == ["a", "b"] == spread_subset(["b", "a"], 5)
    image, sphere, _ = sphere_and_bar()
    case = lambda k: ClassicalCase(k, image, sphere, SPACING)  # noqa: E731
    setting = [ClassicalSetting("threshold", {"width": 0.5})]
    out = run_classical_folds(case, [{"train": ["a", "b", "c"], "val": ["d"]}], [0], n_clicks=1, settings=setting,
                              max_training_cases=2)
    assert out[0].training_cases == ["a", "c"] and out[0].n_training_cases == 3
    with pytest.raises(ValueError, match="training cases"):
        run_classical_folds(case, [{"train": ["a", "b"], "val": ["d"]}], [0], val_cases={0: ["a"]}, settings=setting)
