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


class _ClickSpheres(torch.nn.Module):
    """Stand-in network: mask = ball of radius 5.5 crop voxels around positive clicks (the debug model's
    masks after a few training iterations may be empty, which would leave nothing to write)."""

    def __init__(self, crop_size, schema):
        super().__init__()
        self.crop_size, self.schema = tuple(crop_size), schema

    def encode_image(self, image):
        return image

    def decode(self, embedding, points, labels, mask_prompt=None):
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in self.crop_size],
                                          indexing="ij"), -1).reshape(-1, 3)
        d = torch.cdist(grid, points[0][labels[0] == 1].float()).min(-1).values.reshape(self.crop_size)
        logits = ((d <= 5.5).float() * 20 - 10)[None, None]
        return {"mask_logits": logits, "low_res_logits": logits[..., ::4, ::4, ::4], "iou_pred": torch.ones(1, 1),
                "attribute_logits": {k: torch.arange(len(v), 0, -1, dtype=torch.float32)[None]
                                     for k, v in self.schema.items()}}


@pytest.fixture(params=["debug", "stand-in"])
def network(request, monkeypatch):
    """The real debug network, or the stand-in swapped in where the session loads the model folder."""
    if request.param == "stand-in":
        import nnunet_isrg.inference.session as session_module

        real = session_module.load_trained_model

        def load(*args, **kwargs):
            m = real(*args, **kwargs)
            m.network = _ClickSpheres(m.crop_size, m.schema)
            return m

        monkeypatch.setattr(session_module, "load_trained_model", load)
    return request.param


def test_predict_writes_all_outputs(debug_model, two_images, tmp_path, network):
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
    session = ISRGSession(debug_model)  # the same network as the CLI (the stand-in when patched)
    session.set_image(str(img_a))
    session.add_click(c1)
    session.add_click([c1[0], c1[1], c1[2] + 4], positive=False)
    session.new_lesion()
    session.add_click(c2)
    assert np.array_equal(sitk.GetArrayFromImage(mask_img), session.label_map())

    # (the debug model is barely trained: its lesions may come out empty; the stand-in's never do)
    present = [int(v) for v in np.unique(session.label_map()) if v]
    if network == "stand-in":
        assert present == [1, 2]
    doc = json.loads((folder / "report.json").read_text())
    assert [l["label"] for l in doc["lesions"]] == present
    assert doc["empty_lesions"] == [lid for lid in (1, 2) if lid not in present]
    for lesion in doc["lesions"]:
        validate_report(lesion)
    if 1 in present:
        assert doc["lesions"][0]["attributes"]["density"]["source"] == "reader"
        assert doc["lesions"][0]["attributes"]["density"]["model"] is not None
    md = (folder / "report.md").read_text()
    for lid in present:
        assert f"lesion_{lid}" in md and f"key_lesion_{lid}.png" in md
        png = sitk.ReadImage(str(folder / f"key_lesion_{lid}.png"))
        assert min(png.GetSize()[:2]) > 50

    # DICOM: a CT series for the NIfTI input, SEG with one segment per lesion, SR referencing it
    import pydicom

    if not present:
        assert not (folder / "dicom").exists()
        return

    seg = pydicom.dcmread(folder / "dicom" / "seg.dcm")
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == len(present)
    sr = pydicom.dcmread(folder / "dicom" / "sr.dcm")
    assert sr.Modality == "SR"
    assert len(list((folder / "dicom" / "ct").glob("*.dcm"))) == shape[0]

    # image b: world clicks
    doc_b = json.loads((out / image_name(img_b) / "report.json").read_text())
    assert len(doc_b["lesions"]) + len(doc_b["empty_lesions"]) == 1
    if network == "stand-in":
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


def test_predict_user_errors_exit_with_message(debug_model, two_images, tmp_path):
    cfile = tmp_path / "c.json"
    cfile.write_text(json.dumps({"space": "voxel", "lesions": [{"clicks": [{"point": [999, 1, 1]}]}]}))
    with pytest.raises(SystemExit, match=r"isrg predict: error: click at voxel .* is outside the image"):
        run_predict_from_args(_args(["-i", str(two_images[0]), "-m", str(debug_model), "-c", str(cfile),
                                     "-o", str(tmp_path / "o")]))
    with pytest.raises(SystemExit, match=r"isrg predict: error: .*fold_4/checkpoint_final.pth is missing"):
        run_predict_from_args(_args(["-i", str(two_images[0]), "-m", str(debug_model), "-f", "4", "-c", str(cfile),
                                     "-o", str(tmp_path / "o")]))

