"""Measured descriptors on analytic lesions: spheres of known contrast and edge width, and a cross."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_isrg.attributes import DEFAULT_SCHEMA
from nnunet_isrg.report.evidence import lesion_evidence
from nnunet_isrg.report.measured_descriptors import measured_descriptor
from nnunet_isrg.report.measurements import lesion_measurements
from nnunet_isrg.report.structured import evidence_quantities

SPACING = (1.0, 1.0, 1.0)


def analytic_lesion(contrast_hu: float, edge_sigma_mm: float, shape: str = "sphere", seed: int = 0):
    """A lesion in 40 HU tissue: ``contrast_hu`` above it, the step blurred by a Gaussian of
    ``edge_sigma_mm``, 3 HU of noise."""
    z, y, x = np.mgrid[:56, :56, :56].astype(float) - 28
    if shape == "sphere":
        mask = z ** 2 + y ** 2 + x ** 2 <= 12 ** 2
    else:  # three orthogonal bars: far from a sphere
        bar = lambda a, b: (np.abs(a) <= 3) & (np.abs(b) <= 3)  # noqa: E731
        mask = (bar(y, x) | bar(z, x) | bar(z, y)) & (np.abs(z) <= 20) & (np.abs(y) <= 20) & (np.abs(x) <= 20)
    image = 40.0 + contrast_hu * ndimage.gaussian_filter(mask.astype(float), edge_sigma_mm)
    image += np.random.default_rng(seed).normal(0, 3, image.shape)
    return image.astype(np.float32), mask


def quantities_of(image: np.ndarray, mask: np.ndarray) -> dict:
    sitk_image = sitk.GetImageFromArray(image)
    sitk_image.SetSpacing(SPACING)
    meas = lesion_measurements(sitk_image, mask)
    location = {}
    return evidence_quantities(meas, location, lesion_evidence(image, mask, SPACING))


@pytest.mark.parametrize("contrast,expected", [(-60, "Hypodense"), (60, "Hyperdense"), (2, "Isodense")])
def test_density_from_the_constructed_contrast(contrast, expected):
    q = quantities_of(*analytic_lesion(contrast, 0.5))
    cls, quantity, value, unit, text = measured_descriptor("density", DEFAULT_SCHEMA["density"], q)
    assert cls == expected and quantity == "contrast_hu" and unit == "HU"
    assert value == pytest.approx(contrast, abs=8)
    assert f"{value:+.0f} HU" in text


@pytest.mark.parametrize("sigma,expected", [(0.4, "Well-defined margin"), (3.0, "Ill-defined margin")])
def test_margin_from_the_constructed_edge_width(sigma, expected):
    q = quantities_of(*analytic_lesion(150, sigma))
    cls, quantity, value, unit, _ = measured_descriptor("surface", DEFAULT_SCHEMA["surface"], q)
    assert cls == expected and quantity == "edge_width_mm" and unit == "mm"
    # a Gaussian-blurred step rises from 10 % to 90 % over 2.563 sigma
    assert value == pytest.approx(max(2.563 * sigma, 1.0), abs=1.5)


def test_no_margin_descriptor_without_a_visible_step():
    q = quantities_of(*analytic_lesion(8, 0.4))
    assert measured_descriptor("surface", DEFAULT_SCHEMA["surface"], q) is None


def test_shape_round_for_a_sphere_and_irregular_for_a_cross():
    sphere = quantities_of(*analytic_lesion(100, 0.5))
    assert measured_descriptor("shape", DEFAULT_SCHEMA["shape"], sphere)[0] == "Round-like"
    cross = quantities_of(*analytic_lesion(100, 0.5, shape="cross"))
    cls, quantity, value, _, _ = measured_descriptor("shape", DEFAULT_SCHEMA["shape"], cross)
    assert cls == "Irregular" and quantity == "sphericity" and value < 0.7


def test_other_attributes_and_foreign_schemas_get_no_descriptor():
    q = quantities_of(*analytic_lesion(-60, 0.5))
    assert measured_descriptor("heterogeneity", DEFAULT_SCHEMA["heterogeneity"], q) is None
    assert measured_descriptor("density", ["Solid", "Non-solid"], q) is None
    assert measured_descriptor("malignancy", ["Benign", "Malignant"], q) is None
