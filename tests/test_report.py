"""Structured report: builder, JSON schema, overrides, evidence, text/Markdown renderers and key image."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_isrg.report.key_image import WINDOWS, choose_window, write_key_image
from nnunet_isrg.report.render_text import attribute_phrase, render_markdown, render_text
from nnunet_isrg.report.structured import (SCHEMA_VERSION, LesionReport, ReportError, build_lesion_report,
                                           override_attribute, report_json_schema, validate_report)

PROBS = {
    "shape": {"Round-like": 0.7, "Irregular": 0.2, "Wall thickening": 0.05, "Punctate, nodular": 0.05},
    "invasion": {"No close relationship with adjacent structures": 0.8, "Close relationship with adjacent structures": 0.2},
    "density": {"Hypodense": 0.85, "Isodense": 0.1, "Hyperdense": 0.05},
    "heterogeneity": {"Homogeneous": 0.6, "Heterogeneous": 0.4},
    "surface": {"Well-defined margin": 0.75, "Ill-defined margin": 0.25},
}


def phantom(background=60.0, lesion=20.0, spacing_xyz=(0.8, 0.8, 2.0)):
    """A 20 HU sphere (r = 8 mm) in 60 HU tissue on a 16 x 40 x 40 grid (z, y, x)."""
    shape = (16, 40, 40)
    sp_zyx = spacing_xyz[::-1]
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp_zyx)], indexing="ij")
    mask = zz ** 2 + yy ** 2 + xx ** 2 <= 8.0 ** 2
    arr = np.where(mask, lesion, background).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin((-10.0, 5.0, 30.0))
    return img, mask


def report(**kw) -> LesionReport:
    img, mask = phantom()
    args = dict(clicks=[{"voxel_zyx": [7.5, 19.5, 19.5], "positive": True}], lesion_id="lesion_1", evidence={}, label=1)
    args.update(kw)
    return build_lesion_report(img, mask, PROBS, **args)


def test_report_validates_and_round_trips():
    rep = report()
    d = rep.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION == report_json_schema()["properties"]["schema_version"]["const"]
    validate_report(d)
    d2 = json.loads(json.dumps(d))  # plain JSON types only
    assert LesionReport.from_dict(d2).to_dict() == d2
    assert list(d["attributes"]) == ["shape", "invasion", "density", "heterogeneity", "surface"]
    a = d["attributes"]["density"]
    assert (a["value"], a["probability"], a["source"]) == ("Hypodense", 0.85, "model")
    assert a["model"]["probabilities"]["Hyperdense"] == 0.05
    # the click's world point is filled in from the geometry
    img, _ = phantom()
    assert d["clicks"][0]["world_xyz"] == pytest.approx(list(img.TransformContinuousIndexToPhysicalPoint([19.5, 19.5, 7.5])))


def test_invalid_report_is_rejected_with_the_field_named():
    d = report().to_dict()
    d["attributes"]["density"]["source"] = "robot"
    del d["measurements"]["volume_ml"]
    with pytest.raises(ReportError) as e:
        validate_report(d)
    msg = str(e.value)
    assert "attributes/density/source" in msg and "'robot' is not one of ['model', 'reader', 'measurement', 'not assessed']" in msg
    assert "measurements" in msg and "'volume_ml' is a required property" in msg
    d = report().to_dict()
    d["schema_version"] = "isrg-report/0.9"
    with pytest.raises(ReportError, match="schema_version"):
        validate_report(d)


def test_reader_override_keeps_the_model_prediction():
    rep = report(overrides={"density": "hyperdense"})
    f = rep.attributes["density"]
    assert (f.value, f.source, f.probability) == ("Hyperdense", "reader", None)
    assert (f.model.value, f.model.probability) == ("Hypodense", 0.85)
    validate_report(rep.to_dict())
    assert "Hyperdense lesion" in render_text(rep)
    # override on an existing report: same result, evidence re-derived for the reader's class
    rep2 = override_attribute(report(), "density", "Hyperdense")
    assert rep2.to_dict()["attributes"]["density"] == rep.to_dict()["attributes"]["density"]
    assert rep2.attributes["density"].evidence[0].verdict == "contradicts"
    with pytest.raises(ReportError, match="allowed values"):
        report(overrides={"density": "purple"})


def test_text_template_exact():
    assert render_text(report()) == ("Round-like mass; No close relationship with adjacent structures; "
                                     "Hypodense lesion; Homogeneous; Well-defined margin.")
    assert attribute_phrase("shape", "Wall thickening") == "Wall thickening"
    assert attribute_phrase("shape", "Punctate, nodular") == "Punctate, nodular lesion"
    assert attribute_phrase("shape", "Irregular") == "Irregular mass"
    # an attribute that is unknown (no prediction, no override) is left out
    img, mask = phantom()
    rep = build_lesion_report(img, mask, {"density": PROBS["density"]}, evidence={})
    assert render_text(rep) == "Hypodense lesion."


def test_density_and_heterogeneity_evidence():
    rep = report()
    ev = rep.attributes["density"].evidence[0]
    # uniform 20 HU lesion in 60 HU tissue
    assert ev.text == "mean 20 HU vs 60 HU around it (contrast -40 HU)"
    assert ev.verdict == "supports" and ev.value == pytest.approx(-40.0)
    het = rep.attributes["heterogeneity"].evidence[0]
    assert het.verdict == "supports" and het.value == pytest.approx(0.0)  # std 0 HU: homogeneous
    # isodense lesion: hypodense is contradicted
    img, mask = phantom(lesion=58.0)
    rep2 = build_lesion_report(img, mask, PROBS, evidence={})
    assert rep2.attributes["density"].evidence[0].verdict == "contradicts"
    # values from the evidence module (or a given dict) are used for margin and sphericity
    rep3 = report(evidence={"margin_gradient_hu_per_mm": 30.0, "sphericity": 0.9})
    assert rep3.attributes["surface"].evidence[0].verdict == "supports"
    assert any(e.quantity == "sphericity" and e.verdict == "supports" for e in rep3.attributes["shape"].evidence)


def test_bad_probabilities_are_rejected():
    img, mask = phantom()
    with pytest.raises(ReportError, match="unknown value 'Spiky'"):
        build_lesion_report(img, mask, {"shape": {"Spiky": 1.0}}, evidence={})
    with pytest.raises(ReportError, match="sums to 0.5000"):
        build_lesion_report(img, mask, {"heterogeneity": {"Homogeneous": 0.3, "Heterogeneous": 0.2}}, evidence={})
    with pytest.raises(ReportError, match="unknown attribute 'colour'"):
        build_lesion_report(img, mask, {"colour": {"red": 1.0}}, evidence={})


def test_markdown_contains_tables_evidence_and_clicks():
    md = render_markdown(report(overrides={"surface": "Ill-defined margin"}))
    assert "| density | Hypodense | 0.85 | model |" in md
    assert "| surface | Ill-defined margin | - | reader (model: Well-defined margin, p=0.75) |" in md
    assert "| Density contrast | -40.0 HU |" in md
    assert "density (Hypodense): mean 20 HU vs 60 HU around it (contrast -40 HU) — supports" in md
    assert "1. positive at voxel (z, y, x) (7.5, 19.5, 19.5)" in md


def test_key_image_size_contour_and_window(tmp_path):
    # anisotropic in-plane spacing: 0.5 mm columns, 1.0 mm rows -> the PNG is twice as high as wide
    spacing = (0.5, 1.0, 2.0)
    shape = (8, 48, 48)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing[::-1])], indexing="ij")
    mask = (zz / 6) ** 2 + (yy / 10) ** 2 + (xx / 6) ** 2 <= 1
    arr = np.where(mask, 20.0, 60.0).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    rep = build_lesion_report(img, mask, PROBS, evidence={})
    out = tmp_path / "sub" / "key.png"
    info = write_key_image(img, mask, out, rep, fov_mm="full", width_px=200)
    assert info["window"] == "soft_tissue" and info["size_px"] == (200, 400)
    import matplotlib.image as mpimg
    png = mpimg.imread(out)
    assert png.shape[:2] == (400, 200)
    red = (png[..., 0] > 0.8) & (png[..., 1] < 0.3) & (png[..., 2] < 0.3)
    # the contour is drawn around the lesion: red pixels on its boundary, none far from it
    rows, cols = np.nonzero(red[: int(0.8 * 400)])  # leave out the legend in the lower right corner
    assert len(rows) > 50
    y_mm, x_mm = rows / 400 * 48 * 1.0, cols / 200 * 48 * 0.5
    r = np.sqrt(((y_mm - 24.0) / 10) ** 2 + ((x_mm - 12.0) / 6) ** 2)  # ellipse radius of each red pixel
    assert np.all(np.abs(r - 1) < 0.25)
    assert not list(tmp_path.glob("sub/.*"))  # no temporary file left behind


def test_window_choice():
    m = {"hu": {"mean": 30.0}, "shell": {"air_fraction": 0.8, "bone_fraction": 0.0}}
    assert choose_window(m) == "lung" and WINDOWS["lung"] == (1500.0, -600.0)
    assert choose_window({"hu": {"mean": 700.0}, "shell": {"air_fraction": 0.0, "bone_fraction": 0.1}}) == "bone"
    assert choose_window({"hu": {"mean": 40.0}, "shell": {"air_fraction": 0.1, "bone_fraction": 0.6}}) == "bone"
    assert choose_window({"hu": {"mean": 40.0}, "shell": {"air_fraction": 0.1, "bone_fraction": 0.1}}) == "soft_tissue"
    img, mask = phantom(background=-850.0, lesion=30.0)
    rep = build_lesion_report(img, mask, PROBS, evidence={})
    assert choose_window(rep.measurements) == "lung"


def test_evidence_module_is_used_when_present(monkeypatch):
    import sys
    import types

    calls = []

    def lesion_evidence(image_hu, mask, spacing_zyx, organ_labels=None):
        calls.append((image_hu.shape, int(mask.sum()), spacing_zyx, organ_labels))
        return {"mean_hu_inside": 21.0, "mean_hu_shell": 63.0, "contrast_hu": -42.0, "std_hu_inside": 35.0,
                "margin_gradient_hu_per_mm": 5.0, "sphericity": 0.95}

    monkeypatch.setitem(sys.modules, "nnunet_isrg.report.evidence",
                        types.SimpleNamespace(lesion_evidence=lesion_evidence))
    img, mask = phantom()
    rep = build_lesion_report(img, mask, PROBS)
    assert calls == [((16, 40, 40), int(mask.sum()), (2.0, 0.8, 0.8), None)]
    assert rep.attributes["density"].evidence[0].text == "mean 21 HU vs 63 HU around it (contrast -42 HU)"
    assert rep.attributes["heterogeneity"].evidence[0].verdict == "contradicts"  # 35 HU: heterogeneous
    assert rep.attributes["surface"].evidence[0].verdict == "contradicts"  # 5 HU/mm: blurred margin
    assert rep.evidence_quantities["sphericity"] == 0.95
    validate_report(rep.to_dict())

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setitem(sys.modules, "nnunet_isrg.report.evidence", types.SimpleNamespace(lesion_evidence=broken))
    with pytest.warns(UserWarning, match="boom"):
        rep = build_lesion_report(img, mask, PROBS)
    assert rep.attributes["density"].evidence[0].text == "mean 20 HU vs 60 HU around it (contrast -40 HU)"


def test_organ_map_gives_location_and_invasion_evidence():
    img, mask = phantom()
    organs = np.zeros(mask.shape, np.int16)
    organs[:, :, :22] = 1   # most of the lesion
    organs[:, :, 22:] = 2   # a second organ takes > 5 % of it
    rep = build_lesion_report(img, mask, PROBS, organ_map=organs, organ_names={1: "liver", 2: "kidney"}, evidence={})
    assert rep.location["organ"] == "liver"
    assert set(rep.location["organ_overlap"]) == {"liver", "kidney"}
    assert rep.measurements["shell"]["restricted"]
    inv = rep.attributes["invasion"].evidence[0]
    assert inv.text == "lesion overlaps 2 organs of the organ map" and inv.verdict == "contradicts"
    validate_report(rep.to_dict())
    inside = np.where(mask, 1, 0).astype(np.int16)
    inside[:, :, :5] = 1
    rep = build_lesion_report(img, mask, PROBS, organ_map=inside, organ_names=["background", "liver"], evidence={})
    assert rep.attributes["invasion"].evidence[0].verdict == "supports"


REALDATA = Path(os.environ.get("ISRG_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))


@pytest.mark.skipif(not (REALDATA / "ibsi-sts" / "STS_002").is_dir(), reason=f"real data not found at {REALDATA}")
def test_real_case_with_the_evidence_module():
    evidence = pytest.importorskip("nnunet_isrg.report.evidence")
    root = REALDATA / "ibsi-sts" / "STS_002"
    img = sitk.ReadImage(str(root / "CT_image.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "CT_mask.nii.gz"))) > 0
    rep = build_lesion_report(img, mask, PROBS, lesion_id="STS_002")
    validate_report(rep.to_dict())
    q = evidence.lesion_evidence(sitk.GetArrayFromImage(img), mask, img.GetSpacing()[::-1])
    ev = rep.attributes["density"].evidence[0]
    assert ev.value == pytest.approx(q["contrast_hu"])
    assert ev.text == (f"median {q['median_hu_inside']:.0f} HU vs {q['median_hu_shell']:.0f} HU around it "
                       f"(contrast {q['contrast_hu']:+.0f} HU)")
    # the tumour is clearly denser than the fat/muscle around it: "Hypodense" is contradicted
    assert q["contrast_hu"] > 10 and ev.verdict == "contradicts"
    assert rep.evidence_quantities["sphericity"] == pytest.approx(q["sphericity"])
    surface = rep.attributes["surface"].evidence[0]
    assert surface.quantity == "edge_width_mm" and surface.value == pytest.approx(q["edge_width_mm"])
