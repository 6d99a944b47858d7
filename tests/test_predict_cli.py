"""``isrg predict`` on phantom images with the debug model: every output written and consistent."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_isrg.inference.predict_cli import (ClicksFileError, add_predict_arguments, image_name, load_clicks,
                                               run_predict_from_args)


def _args(argv: list[str]) -> argparse.Namespace:
    return add_predict_arguments(argparse.ArgumentParser()).parse_args(argv)


@pytest.fixture(scope="module")
def two_images(phantom_raw, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("inputs")
    out = []
    for src in sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz"))[:2]:
        dst = folder / src.name.replace("_0000.nii.gz", ".nii.gz")
        shutil.copy(src, dst)
        out.append(dst)
    return out


def test_predict_writes_all_outputs(debug_model, two_images, tmp_path):
    from nnunet_isrg.inference.model_loading import load_trained_model
    from nnunet_isrg.inference.session import ISRGSession
    from nnunet_isrg.report.structured import validate_report

    torch.set_num_threads(1)
    img_a, img_b = two_images
    ref_img = sitk.ReadImage(str(img_a))
    shape = sitk.GetArrayViewFromImage(ref_img).shape
    c1 = [s // 2 for s in shape]
    c2 = [s // 4 for s in shape]
    world = list(ref_img.TransformIndexToPhysicalPoint([int(v) for v in c2[::-1]]))
    clicks = {
        image_name(img_a): {"space": "voxel", "lesions": [
            {"clicks": [{"point": c1, "positive": True}, {"point": [c1[0], c1[1], c1[2] + 4], "positive": False}],
             "attributes": {"density": "Hypodense"}},
            {"clicks": [{"point": c2, "positive": True}]}]},
        img_b.name: {"space": "world", "lesions": [{"clicks": [{"point": world, "positive": True}]}]},
    }
    cfile = tmp_path / "clicks.json"
    cfile.write_text(json.dumps(clicks))
    out = tmp_path / "out"
    res = run_predict_from_args(_args(["-i", str(img_a), str(img_b), "-m", str(debug_model), "-f", "0",
                                       "-c", str(cfile), "-o", str(out), "--dicom"]))
    assert set(res) == {str(img_a), str(img_b)}

    # image a: the mask equals what the session gives for the same clicks, in the input's geometry
    folder = out / image_name(img_a)
    mask_img = sitk.ReadImage(str(folder / "mask.nii.gz"))
    assert mask_img.GetSize() == ref_img.GetSize()
    np.testing.assert_allclose(mask_img.GetOrigin(), ref_img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask_img.GetDirection(), ref_img.GetDirection(), atol=1e-6)
    session = ISRGSession(load_trained_model(debug_model))
    session.set_image(str(img_a))
    session.add_click(c1)
    session.add_click([c1[0], c1[1], c1[2] + 4], positive=False)
    session.new_lesion()
    session.add_click(c2)
    assert np.array_equal(sitk.GetArrayFromImage(mask_img), session.label_map())

    doc = json.loads((folder / "report.json").read_text())
    assert [l["label"] for l in doc["lesions"]] == [1, 2]
    for lesion in doc["lesions"]:
        validate_report(lesion)
    assert doc["lesions"][0]["attributes"]["density"]["source"] == "reader"
    assert doc["lesions"][0]["attributes"]["density"]["model"] is not None
    md = (folder / "report.md").read_text()
    assert "lesion_1" in md and "lesion_2" in md and "key_lesion_1.png" in md
    for lid in (1, 2):
        png = sitk.ReadImage(str(folder / f"key_lesion_{lid}.png"))
        assert min(png.GetSize()[:2]) > 50

    # DICOM: a CT series for the NIfTI input, SEG with one segment per lesion, SR referencing it
    import pydicom

    seg = pydicom.dcmread(folder / "dicom" / "seg.dcm")
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 2
    sr = pydicom.dcmread(folder / "dicom" / "sr.dcm")
    assert sr.Modality == "SR"
    assert len(list((folder / "dicom" / "ct").glob("*.dcm"))) == shape[0]

    # image b: world clicks
    doc_b = json.loads((out / image_name(img_b) / "report.json").read_text())
    assert len(doc_b["lesions"]) == 1
    np.testing.assert_allclose(doc_b["lesions"][0]["clicks"][0]["world_xyz"], world, atol=1e-3)


def test_clicks_file_errors(tmp_path):
    f = tmp_path / "c.json"
    with pytest.raises(ClicksFileError, match="does not exist"):
        load_clicks(f, ["a.nii.gz"])
    f.write_text("{not json")
    with pytest.raises(ClicksFileError, match="not valid JSON"):
        load_clicks(f, ["a.nii.gz"])
    f.write_text(json.dumps({"space": "pixels", "lesions": [{"clicks": [{"point": [1, 2, 3]}]}]}))
    with pytest.raises(ClicksFileError, match="\"space\" must be"):
        load_clicks(f, ["a.nii.gz"])
    f.write_text(json.dumps({"space": "voxel", "lesions": [{"clicks": [{"point": [1, 2]}]}]}))
    with pytest.raises(ClicksFileError, match=r"lesions\[0\]\.clicks\[0\]: \"point\" must be three numbers"):
        load_clicks(f, ["a.nii.gz"])
    f.write_text(json.dumps({"b": {"lesions": [{"clicks": [{"point": [1, 2, 3]}]}]}}))
    with pytest.raises(ClicksFileError, match="no clicks for image /x/a.nii.gz"):
        load_clicks(f, ["/x/a.nii.gz"])
    ok = load_clicks(f, ["/data/b.nii.gz"])
    assert ok["/data/b.nii.gz"]["lesions"][0]["clicks"][0]["point"] == [1, 2, 3]
