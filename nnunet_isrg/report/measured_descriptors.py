"""Descriptors read from the report's own measurements, for attributes the model cannot assess.

A model trained without labels for an attribute has an untrained head for it; its output is a
guess and is never reported. Where the lesion's measurements decide the attribute by a stated rule,
the report offers that class instead, with source ``"measurement"`` and the figure it rests on,
so a reader sees a measurement, not a finding of the model. The rules, with the thresholds of
:mod:`nnunet_isrg.report.structured`'s evidence lines:

- density: contrast = median HU inside minus median HU of the surrounding tissue;
  below -``ISO_BAND_HU`` hypodense, above +``ISO_BAND_HU`` hyperdense, otherwise isodense.
- surface (margin): 10-90 % edge width of the radial HU profile, once the HU step across the
  margin is at least ``MIN_EDGE_STEP_HU``: <= ``SHARP_EDGE_WIDTH_MM`` well-defined,
  >= ``BLURRED_EDGE_WIDTH_MM`` ill-defined, no descriptor in between.
- shape: sphericity >= ``ROUND_SPHERICITY`` with shortest/longest principal axis >=
  ``ROUND_AXIS_RATIO`` round-like; sphericity < ``IRREGULAR_SPHERICITY`` irregular; no descriptor
  otherwise (wall thickening and punctate lesions need anatomy the measurements do not see).

Only the attribute names and classes of the paper's schema are read (class strings matched as in
:func:`nnunet_isrg.attributes.canonical_class`); other schemas get no measured descriptor.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

from nnunet_isrg.attributes import canonical_class

# the thresholds are the evidence lines' own, so a measured class is never contradicted by its evidence
ISO_BAND_HU = 10.0
MIN_EDGE_STEP_HU = 20.0
SHARP_EDGE_WIDTH_MM = 2.5
BLURRED_EDGE_WIDTH_MM = 5.0
ROUND_SPHERICITY = 0.80
IRREGULAR_SPHERICITY = 0.70
ROUND_AXIS_RATIO = 0.60

#: (class in canonical spelling, quantity, value, unit, text) or None
Descriptor = Optional[tuple[str, str, float, str, str]]


def _density(q: Mapping) -> Descriptor:
    c = q.get("contrast_hu")
    if c is None:
        return None
    cls = "hypodense" if c < -ISO_BAND_HU else "hyperdense" if c > ISO_BAND_HU else "isodense"
    inside, around = q.get("median_hu_inside", q.get("mean_hu_inside")), q.get("median_hu_shell", q.get("mean_hu_shell"))
    where = f" ({inside:.0f} HU inside vs {around:.0f} HU around it)" if inside is not None and around is not None else ""
    return cls, "contrast_hu", float(c), "HU", f"measured contrast {c:+.0f} HU{where}"


def _surface(q: Mapping) -> Descriptor:
    width, step = q.get("edge_width_mm"), q.get("edge_step_hu")
    if width is None or step is None or step < MIN_EDGE_STEP_HU:
        return None
    if width <= SHARP_EDGE_WIDTH_MM:
        cls = "well-defined margin"
    elif width >= BLURRED_EDGE_WIDTH_MM:
        cls = "ill-defined margin"
    else:
        return None
    return cls, "edge_width_mm", float(width), "mm", f"measured edge width {width:.1f} mm across a {step:.0f} HU step"


def _shape(q: Mapping) -> Descriptor:
    sph, ratio = q.get("sphericity"), q.get("axis_ratio")
    if sph is None:
        return None
    if sph >= ROUND_SPHERICITY and ratio is not None and ratio >= ROUND_AXIS_RATIO:
        return ("round-like", "sphericity", float(sph), "1",
                f"measured sphericity {sph:.2f}, shortest/longest axis {ratio:.2f}")
    if sph < IRREGULAR_SPHERICITY:
        return "irregular", "sphericity", float(sph), "1", f"measured sphericity {sph:.2f} (1 = sphere)"
    return None


RULES: dict[str, Callable[[Mapping], Descriptor]] = {"density": _density, "surface": _surface, "shape": _shape}


def measured_descriptor(attribute: str, classes: Sequence[str], quantities: Mapping) -> Descriptor:
    """The class of ``attribute`` that the measurements decide, in the schema's spelling, with the
    quantity, value, unit and text behind it; None when no rule applies or the schema's classes do
    not include the measured one."""
    rule = RULES.get(attribute)
    found = rule(quantities) if rule else None
    if found is None:
        return None
    by_canonical = {canonical_class(c): c for c in classes}
    cls = by_canonical.get(found[0])
    return None if cls is None else (cls, *found[1:])
