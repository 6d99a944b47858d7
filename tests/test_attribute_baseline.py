"""Evidence measurements against analytic shapes, and the non-deep attribute baseline on a small phantom."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nnunet_isrg.evaluation.attribute_baseline import (cross_validated_accuracy, extract_features,
                                                       fit_attribute_baseline, predict)
from nnunet_isrg.report.evidence import EvidenceError, fit_edge, lesion_evidence


def _grid(n, spacing_zyx, offset=0.3):
    axes = [(np.arange(n) - n / 2 + offset) * s for s in spacing_zyx]
    return np.meshgrid(*axes, indexing="ij")


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8)])
def test_sphere_sphericity_volume_and_contrast(spacing):
    Z, Y, X = _grid(64 if spacing[0] == 1 else 48, spacing)
    r = 10.0
    mask = Z ** 2 + Y ** 2 + X ** 2 <= r ** 2
    rng = np.random.default_rng(0)
    img = np.where(mask, 100.0, 40.0) + rng.normal(0, 5, mask.shape)
    e = lesion_evidence(img.astype(np.float32), mask, spacing)
    assert e["sphericity"] == pytest.approx(1.0, abs=0.05)
    assert e["volume_mm3"] == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.03)
    assert e["contrast_hu"] == pytest.approx(60.0, abs=3.0)
    assert e["mean_hu_shell"] == pytest.approx(40.0, abs=2.0)
    assert e["elongation"] == pytest.approx(1.0, abs=0.05) and e["thickness_ratio"] > 0.85
    assert e["contact_fraction"] < 0.01 and e["solidity"] > 0.95


def test_ellipsoid_elongation_and_irregular_sphericity():
    Z, Y, X = _grid(64, (1.0, 1.0, 1.0))
    ell = (Z / 6) ** 2 + (Y / 12) ** 2 + (X / 24) ** 2 <= 1
    e = lesion_evidence(np.where(ell, 0.0, 60.0).astype(np.float32), ell, (1, 1, 1))
    assert e["elongation"] == pytest.approx(0.5, abs=0.03) and e["flatness"] == pytest.approx(0.25, abs=0.03)
    # two touching balls: less spherical than one
    blob = ((Z ** 2 + Y ** 2 + (X - 6) ** 2) <= 64) | ((Z ** 2 + Y ** 2 + (X + 6) ** 2) <= 64)
    e2 = lesion_evidence(np.where(blob, 0.0, 60.0).astype(np.float32), blob, (1, 1, 1))
    assert e2["sphericity"] < 0.92 and e2["solidity"] < 0.97


def test_edge_width_tracks_blur():
    Z, Y, X = _grid(64, (1.0, 1.0, 1.0))
    mask = Z ** 2 + Y ** 2 + X ** 2 <= 12 ** 2
    step = np.where(mask, 120.0, 40.0)
    sharp = lesion_evidence(step.astype(np.float32), mask, (1, 1, 1))
    blurred = lesion_evidence(ndi.gaussian_filter(step, 2.5).astype(np.float32), mask, (1, 1, 1))
    assert sharp["edge_width_mm"] < 1.5
    assert blurred["edge_width_mm"] == pytest.approx(2.563 * 2.5, rel=0.3)
    assert blurred["margin_gradient_hu_per_mm"] < sharp["margin_gradient_hu_per_mm"]
    d = np.linspace(-4, 4, 33)
    from scipy.special import ndtr
    sigma, amp, _ = fit_edge(d, 10 + 50 * ndtr(-d / 1.7))
    assert sigma == pytest.approx(1.7, rel=0.05) and amp == pytest.approx(50, rel=0.02)


def test_contact_with_other_tissue_and_organ_labels():
    Z, Y, X = _grid(48, (1.0, 1.0, 1.0))
    mask = Z ** 2 + Y ** 2 + X ** 2 <= 8 ** 2
    img = np.where(X > 7, -100.0, 50.0)  # fat beyond x = 7 mm: the lesion touches it
    img[mask] = 10.0
    organs = np.where(X > 7, 2, 1).astype(np.uint8)
    e = lesion_evidence(img.astype(np.float32), mask, (1, 1, 1), organ_labels=organs)
    assert 0.1 < e["contact_fraction"] < 0.5
    assert e["shell_fraction_fat"] == pytest.approx(e["contact_fraction"], abs=1e-6)
    assert e["organ_contact_fraction"] == pytest.approx(e["contact_fraction"], abs=0.05)
    assert e["n_adjacent_structures"] == 1
    assert e["contrast_hu"] == pytest.approx(-40.0, abs=3.0)  # against the host (soft tissue), not the fat


def test_bad_input():
    with pytest.raises(EvidenceError, match="empty"):
        lesion_evidence(np.zeros((8, 8, 8)), np.zeros((8, 8, 8), bool), (1, 1, 1))
    with pytest.raises(EvidenceError, match="shape"):
        lesion_evidence(np.zeros((8, 8, 8)), np.ones((8, 8, 9), bool), (1, 1, 1))


def test_baseline_beats_majority_on_a_small_phantom(tmp_path):
    from nnunet_isrg.data.phantom import generate_phantom_dataset

    folder = generate_phantom_dataset(tmp_path, n_cases=36, size=48, spacing=2.0, seed=5, progress=False,
                                      include_types=["liver_tumour", "liver_cyst", "kidney_stone", "gastric_cancer",
                                                     "lung_tumour", "pancreas_tumour"])
    ids, X, names, labels = extract_features(folder, progress=False)
    assert X.shape == (36, len(names)) and len(ids) == 36 and "contrast_hu" in names
    scores = cross_validated_accuracy(X, labels, n_splits=3, n_estimators=60)
    for attr in ("shape", "density"):
        assert scores[attr]["accuracy"] > scores[attr]["majority_rate"] + 0.15, (attr, scores[attr])
    model = fit_attribute_baseline(X, labels, names, n_estimators=60)
    pred = predict(model, X[:, ::-1], names[::-1])  # column order is taken from the names
    assert np.mean(np.array(pred["density"]) == np.array(labels["density"])) > 0.9
