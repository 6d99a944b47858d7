"""Structured lesion report: dataclasses, JSON (schema ``isrg-report/1.0``), evidence rules and the builder.

A report holds, for one lesion, the attributes of the report schema (``nnunet_isrg.attributes``;
the paper's five by default), each with its class, probability and source: ``"model"`` or
``"reader"``. A reader override keeps the model's prediction alongside (``model``), so the two are
never confused. Measurements come from :mod:`nnunet_isrg.report.measurements`; the evidence lines
state, for each attribute, the measured quantity that supports or contradicts the reported class by
the simple rules below (heuristics for a reader to check, not a second classifier).

Evidence rules (thresholds are module constants). The quantities come from the basic measurements
and, where present, from :func:`nnunet_isrg.report.evidence.lesion_evidence` (which wins):

- density: contrast = lesion minus surrounding tissue (median - median from the evidence module,
  else mean - mean over the measurement shell). Hypodense is supported by contrast <
  -``ISO_BAND_HU``, hyperdense by contrast > ``ISO_BAND_HU``, isodense by ``|contrast| <=
  ISO_BAND_HU``; otherwise contradicted.
- heterogeneity: HU standard deviation inside. <= ``HOMOGENEOUS_STD_HU`` supports homogeneous
  (contradicts heterogeneous), >= ``HETEROGENEOUS_STD_HU`` the reverse, neutral in between.
- shape: sphericity >= ``ROUND_SPHERICITY`` supports round-like, < ``IRREGULAR_SPHERICITY``
  supports irregular; the ratio of the shortest to the longest principal axis >=
  ``ROUND_AXIS_RATIO`` supports round-like; a thickness ratio (max inscribed radius /
  equivalent-sphere radius) <= ``WALL_THICKNESS_RATIO`` supports wall thickening; a RECIST long
  axis <= ``PUNCTATE_MAX_MM`` supports punctate/nodular (>= 2x that contradicts it).
- invasion (organ map needed): another structure touching the lesion (evidence module), or the
  lesion overlapping a second organ (>= ``INVASION_MIN_OVERLAP`` of its voxels), supports a close
  relationship; otherwise it supports none.
- surface: edge width of the mean radial HU profile <= ``SHARP_EDGE_WIDTH_MM`` supports a
  well-defined margin, >= ``BLURRED_EDGE_WIDTH_MM`` an ill-defined one (no verdict when the HU step
  across the margin is below ``MIN_EDGE_STEP_HU``); without it, the mean margin gradient.
"""
from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Mapping, Optional, Sequence

import jsonschema
import numpy as np
import SimpleITK as sitk

from nnunet_isrg.attributes import (DEFAULT_SCHEMA, LOW_SUPPORT_CASES, AttributeLabelError, canonical_class,
                                    normalise_class, untrained_attributes, validate_schema)
from nnunet_isrg.files import json_safe
from nnunet_isrg.report.measured_descriptors import (BLURRED_EDGE_WIDTH_MM, IRREGULAR_SPHERICITY, ISO_BAND_HU,
                                                     MIN_EDGE_STEP_HU, ROUND_AXIS_RATIO, ROUND_SPHERICITY,
                                                     SHARP_EDGE_WIDTH_MM, measured_descriptor)
from nnunet_isrg.report.measurements import Geometry, lesion_measurements

SCHEMA_VERSION = "isrg-report/1.0"
SCHEMA_RESOURCE = "schema/report.schema.json"

HOMOGENEOUS_STD_HU = 20.0
HETEROGENEOUS_STD_HU = 30.0
ELONGATED_AXIS_RATIO = 0.40
PUNCTATE_MAX_MM = 10.0
INVASION_MIN_OVERLAP = 0.05
SHARP_MARGIN_HU_PER_MM = 20.0
BLURRED_MARGIN_HU_PER_MM = 8.0
WALL_THICKNESS_RATIO = 0.5
SOLID_THICKNESS_RATIO = 0.8
PROBABILITY_SUM_TOLERANCE = 1e-2

SUPPORTS, CONTRADICTS, NEUTRAL = "supports", "contradicts", "neutral"


class ReportError(ValueError):
    """Invalid report input or a report that does not validate; the message names the field."""


# ----------------------------------------------------------------------------------------------
# dataclasses
# ----------------------------------------------------------------------------------------------

@dataclass
class Evidence:
    """One measured quantity behind an attribute and whether it supports the reported class."""

    quantity: str
    value: Optional[float]
    unit: str
    text: str
    verdict: str = NEUTRAL

    def to_dict(self) -> dict:
        return {"quantity": self.quantity, "value": self.value, "unit": self.unit, "text": self.text,
                "verdict": self.verdict}


@dataclass
class ModelPrediction:
    value: str
    probability: Optional[float]
    probabilities: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"value": self.value, "probability": self.probability, "probabilities": dict(self.probabilities)}


#: sources of a finding: the model's, a reader's, a measured descriptor, or nothing
MODEL, READER, MEASUREMENT, NOT_ASSESSED = "model", "reader", "measurement", "not assessed"
NOT_TRAINED_REASON = "not assessed by the model: it was trained without labels for this attribute"


@dataclass
class AttributeFinding:
    """The reported class of one attribute. ``source="reader"`` keeps the model's prediction in ``model``.

    ``source="measurement"``: the class read from the lesion's measurements (the model was not
    trained on this attribute); ``source="not assessed"``: no class (``value`` None). ``training_cases``
    is the number of labelled training cases behind the model's prediction when the model recorded it.
    """

    name: str
    value: Optional[str]
    probability: Optional[float]
    source: str = MODEL
    model: Optional[ModelPrediction] = None
    evidence: list = field(default_factory=list)
    training_cases: Optional[int] = None
    low_support: bool = False
    reason: Optional[str] = None

    @property
    def is_finding(self) -> bool:
        """A class stated by the model or a reader: what the report sentence and the SR carry."""
        return self.source in (MODEL, READER) and self.value is not None

    def to_dict(self) -> dict:
        return {"value": self.value, "probability": self.probability, "source": self.source,
                "model": self.model.to_dict() if self.model else None,
                "evidence": [e.to_dict() for e in self.evidence], "training_cases": self.training_cases,
                "low_support": bool(self.low_support), "reason": self.reason}


@dataclass
class Click:
    """A click: continuous voxel index ``z, y, x``, world point ``x, y, z`` (mm, LPS), positive or negative."""

    voxel_zyx: list
    world_xyz: list
    positive: bool = True

    def to_dict(self) -> dict:
        return {"voxel_zyx": [float(v) for v in self.voxel_zyx], "world_xyz": [float(v) for v in self.world_xyz],
                "positive": bool(self.positive)}


@dataclass
class LesionReport:
    lesion_id: str
    attributes: "OrderedDict[str, AttributeFinding]"
    measurements: dict
    location: dict
    clicks: list = field(default_factory=list)
    label: Optional[int] = None
    lesion_type: Optional[str] = None
    evidence_quantities: dict = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
    truncated_faces: Optional[list] = None  # faces of the largest view the lesion goes on beyond; None: not recorded
    prompts: list = field(default_factory=list)  # boxes, scribbles, lassos as dicts (report schema's "prompt")

    def to_dict(self) -> dict:
        truncation = {} if self.truncated_faces is None else {"truncated": bool(self.truncated_faces),
                                                               "truncated_faces": list(self.truncated_faces)}
        return json_safe({
            "schema_version": self.schema_version,
            "lesion_id": self.lesion_id,
            "label": self.label,
            "lesion_type": self.lesion_type,
            "attributes": OrderedDict((k, a.to_dict()) for k, a in self.attributes.items()),
            "measurements": self.measurements,
            "location": self.location,
            "clicks": [c.to_dict() for c in self.clicks],
            **({"prompts": [dict(p) for p in self.prompts]} if self.prompts else {}),
            "evidence_quantities": self.evidence_quantities,
            **truncation,
        })

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping, validate: bool = True) -> "LesionReport":
        if validate:
            validate_report(d)
        attrs = OrderedDict()
        for name, a in d["attributes"].items():
            m = a.get("model")
            attrs[name] = AttributeFinding(
                name=name, value=a["value"], probability=a["probability"], source=a["source"],
                model=ModelPrediction(m["value"], m["probability"], dict(m.get("probabilities") or {})) if m else None,
                evidence=[Evidence(**e) for e in a.get("evidence", [])], training_cases=a.get("training_cases"),
                low_support=bool(a.get("low_support", False)), reason=a.get("reason"))
        return cls(lesion_id=d["lesion_id"], attributes=attrs, measurements=dict(d["measurements"]),
                   location=dict(d["location"]), clicks=[Click(**c) for c in d.get("clicks", [])],
                   prompts=[dict(p) for p in d.get("prompts", [])],
                   label=d.get("label"), lesion_type=d.get("lesion_type"),
                   evidence_quantities=dict(d.get("evidence_quantities") or {}),
                   schema_version=d["schema_version"], truncated_faces=d.get("truncated_faces"))

    def final_classes(self) -> "OrderedDict[str, str]":
        """Attribute -> reported class (reader's where overridden) of the model's and the reader's
        findings; measured descriptors and attributes not assessed are left out."""
        return OrderedDict((k, a.value) for k, a in self.attributes.items() if a.is_finding)

    def findings(self) -> "OrderedDict[str, AttributeFinding]":
        """The attributes the model or a reader state a class for."""
        return OrderedDict((k, a) for k, a in self.attributes.items() if a.is_finding)


# ----------------------------------------------------------------------------------------------
# JSON schema
# ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def report_json_schema() -> dict:
    """The JSON Schema of a report (package data ``nnunet_isrg/report/schema/report.schema.json``)."""
    text = resources.files("nnunet_isrg.report").joinpath(SCHEMA_RESOURCE).read_text()
    return json.loads(text)


def validate_report(report: Mapping) -> None:
    """Raises :class:`ReportError` listing every schema violation as ``path: message``."""
    validator = jsonschema.Draft202012Validator(report_json_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            path = "/".join(str(p) for p in e.absolute_path) or "<root>"
            lines.append(f"  {path}: {e.message}")
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ReportError(f"lesion report does not match {SCHEMA_VERSION} "
                          f"({len(errors)} error(s)):\n" + "\n".join(lines) + more)


# ----------------------------------------------------------------------------------------------
# evidence rules
# ----------------------------------------------------------------------------------------------

def _fmt(v: float, nd: int = 0) -> str:
    return f"{v:.{nd}f}"


def _density_evidence(value: str, q: Mapping) -> list:
    # the evidence module's contrast is median - median; the basic measurements' is mean - mean
    stat = "median" if q.get("median_hu_inside") is not None and q.get("median_hu_shell") is not None else "mean"
    inside, shell, c = q.get(f"{stat}_hu_inside"), q.get(f"{stat}_hu_shell"), q.get("contrast_hu")
    if c is None or inside is None or shell is None:
        return []
    text = f"{stat} {_fmt(inside)} HU vs {_fmt(shell)} HU around it (contrast {c:+.0f} HU)"
    v = canonical_class(value)
    if v == "hypodense":
        verdict = SUPPORTS if c < -ISO_BAND_HU else CONTRADICTS
    elif v == "hyperdense":
        verdict = SUPPORTS if c > ISO_BAND_HU else CONTRADICTS
    elif v == "isodense":
        verdict = SUPPORTS if abs(c) <= ISO_BAND_HU else CONTRADICTS
    else:
        verdict = NEUTRAL
    return [Evidence("contrast_hu", c, "HU", text, verdict)]


def _heterogeneity_evidence(value: str, q: Mapping) -> list:
    s = q.get("std_hu_inside")
    if s is None:
        return []
    text = f"HU standard deviation inside {_fmt(s)} HU"
    homogeneous_side = SUPPORTS if s <= HOMOGENEOUS_STD_HU else CONTRADICTS if s >= HETEROGENEOUS_STD_HU else NEUTRAL
    v = canonical_class(value)
    if v == "homogeneous":
        verdict = homogeneous_side
    elif v == "heterogeneous":
        verdict = {SUPPORTS: CONTRADICTS, CONTRADICTS: SUPPORTS, NEUTRAL: NEUTRAL}[homogeneous_side]
    else:
        verdict = NEUTRAL
    return [Evidence("std_hu_inside", s, "HU", text, verdict)]


def _shape_evidence(value: str, q: Mapping) -> list:
    v = canonical_class(value)
    out = []
    sph = q.get("sphericity")
    if sph is not None and v in ("round-like", "irregular"):
        round_side = SUPPORTS if sph >= ROUND_SPHERICITY else CONTRADICTS if sph < IRREGULAR_SPHERICITY else NEUTRAL
        verdict = round_side if v == "round-like" else {SUPPORTS: CONTRADICTS, CONTRADICTS: SUPPORTS, NEUTRAL: NEUTRAL}[round_side]
        out.append(Evidence("sphericity", sph, "1", f"sphericity {sph:.2f} (1 = sphere)", verdict))
    ratio = q.get("axis_ratio")
    if ratio is not None and v == "round-like":
        verdict = SUPPORTS if ratio >= ROUND_AXIS_RATIO else CONTRADICTS if ratio < ELONGATED_AXIS_RATIO else NEUTRAL
        out.append(Evidence("axis_ratio", ratio, "1",
                            f"shortest/longest principal axis {ratio:.2f}", verdict))
    tr = q.get("thickness_ratio")
    if tr is not None and v == "wall thickening":
        verdict = SUPPORTS if tr <= WALL_THICKNESS_RATIO else CONTRADICTS if tr >= SOLID_THICKNESS_RATIO else NEUTRAL
        out.append(Evidence("thickness_ratio", tr, "1",
                            f"thickness ratio {tr:.2f} (max inscribed radius / equivalent-sphere radius; 1 = ball)",
                            verdict))
    la = q.get("long_axis_mm")
    if la is not None and v == "punctate, nodular":
        verdict = SUPPORTS if la <= PUNCTATE_MAX_MM else CONTRADICTS if la >= 2 * PUNCTATE_MAX_MM else NEUTRAL
        out.append(Evidence("long_axis_mm", la, "mm", f"long axis {la:.1f} mm", verdict))
    return out


def _invasion_evidence(value: str, q: Mapping) -> list:
    v = canonical_class(value)
    adj = q.get("n_adjacent_structures")
    if adj is not None:  # the evidence module's count of other structures touching the lesion's shell
        close = adj >= 1
        n = 2.0 if close else 1.0
        text = (f"{int(adj)} other structure(s) of the organ map touch the lesion" if close
                else "no other structure of the organ map touches the lesion")
        quantity, qvalue = "n_adjacent_structures", float(adj)
    else:
        n = q.get("n_organs_touched")
        if n is None:
            return []
        close = n >= 2
        text = (f"lesion overlaps {int(n)} organs of the organ map" if close
                else "lesion lies within one organ of the organ map" if n == 1 else "lesion lies in no labelled organ")
        quantity, qvalue = "n_organs_touched", float(n)
    if v.startswith("close relationship"):
        verdict = SUPPORTS if close else CONTRADICTS if n == 1 else NEUTRAL
    elif v.startswith("no close relationship"):
        verdict = CONTRADICTS if close else SUPPORTS if n == 1 else NEUTRAL
    else:
        verdict = NEUTRAL
    return [Evidence(quantity, qvalue, "1", text, verdict)]


def _surface_evidence(value: str, q: Mapping) -> list:
    width, step, g = q.get("edge_width_mm"), q.get("edge_step_hu"), q.get("margin_gradient_hu_per_mm")
    if width is not None and step is not None:
        if step < MIN_EDGE_STEP_HU:  # too little contrast to see a margin: no verdict
            quantity, qv, unit, sharp_side = "edge_step_hu", step, "HU", NEUTRAL
            text = f"HU step across the margin only {step:.0f} HU: margin not measurable"
        else:
            quantity, qv, unit = "edge_width_mm", width, "mm"
            sharp_side = SUPPORTS if width <= SHARP_EDGE_WIDTH_MM else CONTRADICTS if width >= BLURRED_EDGE_WIDTH_MM else NEUTRAL
            text = f"edge width {width:.1f} mm across a {step:.0f} HU step"
    elif g is not None:
        quantity, qv, unit = "margin_gradient_hu_per_mm", g, "HU/mm"
        sharp_side = SUPPORTS if g >= SHARP_MARGIN_HU_PER_MM else CONTRADICTS if g <= BLURRED_MARGIN_HU_PER_MM else NEUTRAL
        text = f"mean HU gradient across the margin {g:.0f} HU/mm"
    else:
        return []
    v = canonical_class(value)
    if v.startswith("well-defined"):
        verdict = sharp_side
    elif v.startswith("ill-defined"):
        verdict = {SUPPORTS: CONTRADICTS, CONTRADICTS: SUPPORTS, NEUTRAL: NEUTRAL}[sharp_side]
    else:
        verdict = NEUTRAL
    return [Evidence(quantity, qv, unit, text, verdict)]


EVIDENCE_RULES = {"density": _density_evidence, "heterogeneity": _heterogeneity_evidence, "shape": _shape_evidence,
                  "invasion": _invasion_evidence, "surface": _surface_evidence}


def attribute_evidence(name: str, value: str, quantities: Mapping) -> list:
    """Evidence lines for attribute ``name`` reported as ``value`` (empty when nothing was measured)."""
    rule = EVIDENCE_RULES.get(name)
    return rule(value, quantities) if rule else []


def evidence_quantities(measurements: Mapping, location: Mapping, extra: Mapping | None = None) -> dict:
    """Measured quantities the evidence rules use; ``extra`` (e.g. the evidence module's output) wins."""
    shell = measurements.get("shell", {})
    axes = measurements.get("principal_axes_mm") or []
    q = {
        "mean_hu_inside": measurements["hu"]["mean"],
        "std_hu_inside": measurements["hu"]["std"],
        "mean_hu_shell": shell.get("mean_hu"),
        "contrast_hu": shell.get("contrast_hu"),
        "long_axis_mm": measurements["recist"]["long_axis_mm"],
        "short_axis_mm": measurements["recist"]["short_axis_mm"],
        "volume_ml": measurements["volume_ml"],
        "axis_ratio": (axes[-1] / axes[0]) if len(axes) == 3 and axes[0] > 0 else None,
    }
    overlap = location.get("organ_overlap")
    if overlap is not None:
        q["n_organs_touched"] = float(sum(1 for f in overlap.values() if f >= INVASION_MIN_OVERLAP))
    if extra:
        # keep the density triple consistent: take all of it from one source
        if extra.get("contrast_hu") is not None and (extra.get("mean_hu_shell") is None or extra.get("mean_hu_inside") is None):
            extra = {k: v for k, v in extra.items() if k not in ("contrast_hu", "mean_hu_shell", "mean_hu_inside")}
        q.update({k: (float(v) if v is not None else None) for k, v in extra.items()
                  if isinstance(v, (int, float, np.number)) or v is None})
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in q.items()}


# ----------------------------------------------------------------------------------------------
# builder
# ----------------------------------------------------------------------------------------------

def _model_prediction(name: str, probs: Mapping, schema: Mapping, lesion_id: str) -> ModelPrediction:
    if not isinstance(probs, Mapping) or not probs:
        raise ReportError(f"lesion '{lesion_id}': attribute_probs['{name}'] must map class -> probability, got {probs!r}")
    clean = OrderedDict()
    for cls, p in probs.items():
        try:
            c = normalise_class(schema, name, cls, case=lesion_id, source="attribute_probs")
        except AttributeLabelError as e:
            raise ReportError(str(e)) from None
        p = float(p)
        if not (0.0 <= p <= 1.0) or not math.isfinite(p):
            raise ReportError(f"lesion '{lesion_id}': attribute_probs['{name}']['{cls}'] = {p} is not a probability in [0, 1]")
        clean[c] = p
    total = sum(clean.values())
    if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
        raise ReportError(f"lesion '{lesion_id}': attribute_probs['{name}'] sums to {total:.4f}, expected 1 "
                          f"(softmax probabilities over {list(schema[name])})")
    # report in schema order, including classes the caller left out as 0
    ordered = OrderedDict((c, clean.get(c, 0.0)) for c in schema[name])
    best = max(ordered, key=ordered.get)
    return ModelPrediction(best, ordered[best], dict(ordered))


def _as_click(c: Any, geometry: Geometry, lesion_id: str) -> Click:
    if isinstance(c, Click):
        return c
    if isinstance(c, Mapping):
        pos = bool(c.get("positive", True))
        vox, world = c.get("voxel_zyx"), c.get("world_xyz")
    elif isinstance(c, (list, tuple)) and len(c) == 2 and np.ndim(c[0]) == 1:
        vox, world, pos = c[0], None, bool(c[1])
    else:
        raise ReportError(f"lesion '{lesion_id}': a click must be a Click, a dict with 'voxel_zyx' and/or "
                          f"'world_xyz' and 'positive', or (voxel_zyx, positive); got {c!r}")
    if vox is None and world is None:
        raise ReportError(f"lesion '{lesion_id}': click {c!r} has neither 'voxel_zyx' nor 'world_xyz'")
    if vox is None:
        vox = geometry.world_to_index(world)
    if world is None:
        world = geometry.index_to_world(vox)
    return Click([float(v) for v in vox], [float(w) for w in world], pos)


def _load_evidence_fn():
    try:
        from nnunet_isrg.report.evidence import lesion_evidence  # noqa: WPS433 (optional sibling module)
    except ImportError:
        return None
    return lesion_evidence


def build_lesion_report(image: sitk.Image, mask, attribute_probs: Mapping | None, clicks: Iterable = (),
                        lesion_id: str = "lesion_1", overrides: Mapping | None = None, organ_map=None,
                        organ_names=None, lesion_type: str | None = None, evidence: Mapping | None = None,
                        schema: Mapping | None = None, label: int | None = None,
                        measurements: Mapping | None = None,
                        attribute_support: Mapping[str, int] | None = None,
                        truncated_faces: Sequence[str] | None = None,
                        prompts: Sequence[Mapping] = ()) -> LesionReport:
    """The report of one lesion.

    ``image``: CT in HU; ``mask``: bool z,y,x array on the image grid; ``attribute_probs``: attribute
    -> {class -> probability} from the model (an attribute may be absent); ``clicks``: see
    :class:`Click` (dicts with ``voxel_zyx`` and/or ``world_xyz`` are completed from the image
    geometry); ``overrides``: attribute -> class set by the reader (wins, the model's prediction is
    kept); ``organ_map``/``organ_names``: optional organ label map (z,y,x, same grid) and names;
    ``evidence``: measured quantities (as ``nnunet_isrg.report.evidence.lesion_evidence`` returns);
    when not given that function is used if it exists; ``schema``: attribute schema (default the
    paper's); ``measurements``: precomputed :func:`lesion_measurements` output to reuse;
    ``attribute_support``: attribute -> labelled training cases of the model (None: not recorded, every
    attribute counts as trained). An attribute with none is never the model's finding: it becomes
    a measured descriptor where the measurements decide it, else "not assessed"; one with fewer than
    ``LOW_SUPPORT_CASES`` carries ``low_support``. ``truncated_faces``: faces of the largest field of
    view the mask was predicted in that the lesion goes on beyond (``"z-"``, ``"x+"``... in the image's
    voxel axes; empty: the lesion is whole; None: not recorded); the report then carries
    ``truncated`` and the faces.
    """
    schema = validate_schema(schema) if schema is not None else OrderedDict((k, list(v)) for k, v in DEFAULT_SCHEMA.items())
    attribute_probs = dict(attribute_probs or {})
    overrides = dict(overrides or {})
    for name in list(attribute_probs) + list(overrides):
        if name not in schema:
            raise ReportError(f"lesion '{lesion_id}': unknown attribute '{name}'; allowed attributes: {list(schema)}")

    meas = dict(measurements) if measurements is not None else lesion_measurements(image, mask, organ_map, organ_names)
    loc_raw = meas.pop("location")
    location = {"centroid_world_xyz": loc_raw["centroid"]["world_xyz"],
                "centroid_voxel_zyx": loc_raw["centroid"]["voxel_zyx"]}
    for k in ("organ", "organ_label", "organ_at_centroid", "organ_overlap"):
        if k in loc_raw:
            location[k] = loc_raw[k]

    if evidence is None:
        fn = _load_evidence_fn()
        if fn is not None:
            arr = sitk.GetArrayViewFromImage(image)  # read-only view: no copy of a large CT
            om = sitk.GetArrayViewFromImage(organ_map) if isinstance(organ_map, sitk.Image) else organ_map
            try:
                evidence = fn(arr, np.asarray(mask, bool), tuple(float(s) for s in image.GetSpacing()[::-1]), om)
            except Exception as e:  # the evidence lines are optional: a report without them beats no report
                warnings.warn(f"lesion '{lesion_id}': evidence.lesion_evidence failed ({type(e).__name__}: {e}); "
                              "the report's evidence uses the basic measurements only")
                evidence = None
    quantities = evidence_quantities(meas, location, evidence)

    attrs: "OrderedDict[str, AttributeFinding]" = OrderedDict()
    untrained = set(untrained_attributes(attribute_support))
    for name in schema:
        trained = name not in untrained
        model = (_model_prediction(name, attribute_probs[name], schema, lesion_id)
                 if name in attribute_probs and trained else None)
        if name in overrides:
            try:
                value = normalise_class(schema, name, overrides[name], case=lesion_id, source="overrides")
            except AttributeLabelError as e:
                raise ReportError(str(e)) from None
            finding = AttributeFinding(name, value, None, READER, model)
        elif not trained:
            attrs[name] = _untrained_finding(name, schema[name], quantities)
            continue
        elif model is not None:
            finding = AttributeFinding(name, model.value, model.probability, MODEL, model)
        else:
            continue  # unknown: neither predicted nor set
        finding.evidence = attribute_evidence(name, finding.value, quantities)
        if attribute_support is not None and name in attribute_support:
            finding.training_cases = int(attribute_support[name])
            finding.low_support = trained and finding.training_cases < LOW_SUPPORT_CASES
        attrs[name] = finding

    geometry = Geometry.from_image(image)
    report = LesionReport(lesion_id=str(lesion_id), attributes=attrs, measurements=meas, location=location,
                          clicks=[_as_click(c, geometry, lesion_id) for c in clicks], label=label,
                          lesion_type=lesion_type, evidence_quantities=quantities,
                          truncated_faces=None if truncated_faces is None else list(truncated_faces),
                          prompts=[dict(p) for p in prompts])
    return report


def _untrained_finding(name: str, classes: list, quantities: Mapping) -> AttributeFinding:
    """An attribute the model has no training label for: a measured descriptor, or not assessed."""
    measured = measured_descriptor(name, classes, quantities)
    if measured is None:
        return AttributeFinding(name, None, None, NOT_ASSESSED, training_cases=0, reason=NOT_TRAINED_REASON)
    cls, quantity, value, unit, text = measured
    return AttributeFinding(name, cls, None, MEASUREMENT, evidence=[Evidence(quantity, value, unit, text, SUPPORTS)],
                            training_cases=0, reason=f"{NOT_TRAINED_REASON}; measured instead: {text}")


def override_attribute(report: LesionReport, name: str, value: str, schema: Mapping | None = None) -> LesionReport:
    """Sets a reader override on an existing report in place (keeps the model prediction) and re-derives evidence."""
    schema = schema or DEFAULT_SCHEMA
    if name not in schema:
        raise ReportError(f"lesion '{report.lesion_id}': unknown attribute '{name}'; allowed attributes: {list(schema)}")
    try:
        v = normalise_class(schema, name, value, case=report.lesion_id, source="override")
    except AttributeLabelError as e:
        raise ReportError(str(e)) from None
    old = report.attributes.get(name)
    finding = AttributeFinding(name, v, None, READER, old.model if old else None,
                               attribute_evidence(name, v, report.evidence_quantities),
                               training_cases=old.training_cases if old else None)
    report.attributes[name] = finding
    report.attributes = OrderedDict((k, report.attributes[k]) for k in schema if k in report.attributes)
    return report
