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

from nnunet_isrg.files import current_umask
from nnunet_isrg.inference.predict_cli import (ClicksFileError, add_predict_arguments, image_name, load_clicks,
                                               run_predict_from_args)

from stand_ins import ClickSpheresStandIn


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


@pytest.fixture(params=["debug", "stand-in"])
def network(request, monkeypatch):
    """The real debug network, or the stand-in swapped in where the session loads the model folder."""
    if request.param == "stand-in":
        import nnunet_isrg.inference.session as session_module

        real = session_module.load_trained_model

        def load(*args, **kwargs):
            m = real(*args, **kwargs)
            m.network = ClickSpheresStandIn(m.crop_size, m.schema)
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



# ----------------------------------------------------------------------------------------------- one folder, whole
def _clicks_file(tmp_path, image: Path, centres: list) -> Path:
    f = tmp_path / f"clicks_{len(centres)}.json"
    f.write_text(json.dumps({"space": "voxel", "lesions": [{"clicks": [{"point": c}]} for c in centres]}))
    return f


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _modes(folder: Path) -> tuple[set, set]:
    import stat

    entries = [folder, *folder.rglob("*")]
    return ({stat.S_IMODE(e.stat().st_mode) for e in entries if e.is_file()},
            {stat.S_IMODE(e.stat().st_mode) for e in entries if e.is_dir()})


CENTRES = [[24, 24, 24], [12, 12, 12]]


def test_a_rerun_replaces_the_folder_whole_with_one_permission_mode(debug_model, two_images, tmp_path):
    """A second run with fewer lesions leaves no file of the first (key image, SEG segment); every file
    and folder gets the mode a plain open/mkdir would (0644/0755 under umask 022), not tempfile's 0600."""
    from nnunet_isrg.inference.session import ISRGSession
    from nnunet_isrg.inference.predict_cli import predict_image

    torch.set_num_threads(1)
    session = ISRGSession(debug_model)
    session.model.network = ClickSpheresStandIn(session.model.crop_size, session.model.schema)
    spec = json.loads(_clicks_file(tmp_path, two_images[0], CENTRES).read_text())
    out = tmp_path / "out" / "case"
    predict_image(session, str(two_images[0]), spec, out, dicom=True)
    assert {"key_lesion_1.png", "key_lesion_2.png"} <= set(_snapshot(out))
    umask = current_umask()
    assert _modes(out) == ({0o666 & ~umask}, {0o777 & ~umask})

    paths = predict_image(session, str(two_images[0]), {"space": "voxel", "lesions": spec["lesions"][:1]}, out,
                          dicom=True)
    files = set(_snapshot(out))
    assert "key_lesion_1.png" in files and "key_lesion_2.png" not in files
    assert paths["mask"] == str(out / "mask.nii.gz") and paths["dicom"]["seg"] == str(out / "dicom" / "seg.dcm")
    assert len(json.loads((out / "report.json").read_text())["lesions"]) == 1
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz"))))) == {0, 1}
    import pydicom

    assert len(pydicom.dcmread(out / "dicom" / "seg.dcm").SegmentSequence) == 1
    assert _modes(out) == ({0o666 & ~umask}, {0o777 & ~umask})
    assert [p.name for p in out.parent.iterdir()] == ["case"]          # no temporary folder left

    # a run that fails while writing leaves the previous folder as it was
    before = _snapshot(out)
    import nnunet_isrg.inference.predict_cli as predict_module

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    real = predict_module.write_key_image
    predict_module.write_key_image = broken
    try:
        with pytest.raises(OSError, match="disk full"):
            predict_image(session, str(two_images[0]), spec, out, dicom=True)
    finally:
        predict_module.write_key_image = real
    assert _snapshot(out) == before and [p.name for p in out.parent.iterdir()] == ["case"]


KILLABLE_PREDICT = """
import sys
sys.path.insert(0, {tests!r})
import nnunet_isrg.inference.session as session_module
from stand_ins import ClickSpheresStandIn
real = session_module.load_trained_model
def load(*args, **kwargs):
    m = real(*args, **kwargs)
    m.network = ClickSpheresStandIn(m.crop_size, m.schema)
    return m
session_module.load_trained_model = load
from nnunet_isrg.inference.predict_cli import main
main(sys.argv[1:])
"""


def test_a_killed_run_leaves_the_previous_folder_intact(debug_model, two_images, tmp_path):
    """``isrg predict`` killed (SIGKILL) while it writes an image's outputs: the folder is the previous
    run's, whole; the next run removes the killed run's temporary folder and replaces the old one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "predict_with_stand_in.py"
    script.write_text(KILLABLE_PREDICT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "out"
    image = two_images[0]
    base = [sys.executable, str(script), "-i", str(image), "-m", str(debug_model), "-o", str(out), "--dicom"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(base + ["-c", str(_clicks_file(tmp_path, image, CENTRES[:1]))], check=True, env=env,
                   capture_output=True, timeout=300)
    folder = out / image_name(image)
    before = _snapshot(folder)
    assert "key_lesion_1.png" in before and "key_lesion_2.png" not in before

    proc = subprocess.Popen(base + ["-c", str(_clicks_file(tmp_path, image, CENTRES))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_while_writing = False
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        partial = list(out.glob(f".{folder.name}.*.partial/dicom/ct/*.dcm"))
        if partial:                   # halfway: the CT series of the DICOM export is being written
            proc.send_signal(signal.SIGKILL)
            killed_while_writing = True
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert killed_while_writing, "the run ended before its outputs were half written; nothing was tested"
    assert _snapshot(folder) == before
    assert list(out.glob(".*.partial"))                               # the killed run's leftovers...

    subprocess.run(base + ["-c", str(_clicks_file(tmp_path, image, CENTRES))], check=True, env=env,
                   capture_output=True, timeout=300)
    assert not list(out.glob(".*"))                                    # ...removed by the next run
    after = _snapshot(folder)
    assert "key_lesion_2.png" in after and len(json.loads(after["report.json"])["lesions"]) == 2


def test_prompts_file_with_boxes_scribbles_and_lassos(debug_model, two_images, tmp_path, monkeypatch):
    """Each prompt of the file becomes the session call of its kind, in order: the mask equals the
    session's for the same calls, and the report lists the prompts."""
    from nnunet_isrg.inference.session import ISRGSession
    import nnunet_isrg.inference.session as session_module

    real = session_module.load_trained_model

    def load(*args, **kwargs):
        m = real(*args, **kwargs)
        m.network = ClickSpheresStandIn(m.crop_size, m.schema)
        m.prompt_kinds = ("clicks", "boxes", "scribbles", "lassos")
        return m

    monkeypatch.setattr(session_module, "load_trained_model", load)
    prompts = [{"kind": "box", "corners": [[20, 18, 18], [26, 28, 30]]},
               {"kind": "click", "point": [23, 22, 24], "positive": False},
               {"kind": "scribble", "points": [[23, 30, 20], [23, 30, 28]]},
               {"kind": "lasso", "slice_axis": "z", "slice_index": 22, "polygon": [[19, 19], [19, 23], [23, 23]],
                "positive": False}]
    cfile = tmp_path / "prompts.json"
    cfile.write_text(json.dumps({"space": "voxel", "lesions": [{"prompts": prompts}]}))
    out = tmp_path / "out"
    run_predict_from_args(_args(["-i", str(two_images[0]), "-m", str(debug_model), "-c", str(cfile), "-o", str(out)]))
    s = ISRGSession(debug_model)
    s.set_image(str(two_images[0]))
    s.add_box([20, 18, 18], [26, 28, 30])
    s.add_click([23, 22, 24], positive=False)
    s.add_scribble([[23, 30, 20], [23, 30, 28]])
    expected = s.add_lasso("z", 22, [[19, 19], [19, 23], [23, 23]], positive=False).mask
    folder = out / image_name(two_images[0])
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask.nii.gz"))) == 1, expected)
    doc = json.loads((folder / "report.json").read_text())
    assert [p["kind"] for p in doc["lesions"][0]["prompts"]] == ["box", "scribble", "lasso"]
    assert len(doc["lesions"][0]["clicks"]) == 1


@pytest.mark.parametrize("prompt, message", [
    ({"kind": "circle"}, r"prompts\[0\]: \"kind\" must be one of \['click', 'box', 'scribble', 'lasso'\]"),
    ({"kind": "box", "corners": [[1, 2, 3]]}, r"\"corners\" must be two points of three numbers"),
    ({"kind": "scribble", "points": []}, r"\"points\" must be a non-empty list"),
    ({"kind": "lasso", "slice_axis": "w", "slice_index": 1, "polygon": [[1, 1], [1, 2], [2, 2]]},
     r"a lasso needs \"slice_axis\" \(z, y or x\)"),
    ({"kind": "click", "point": [1, 2, 3], "positive": "yes"}, r"\"positive\" must be true or false"),
])
def test_prompts_file_errors_name_the_prompt(tmp_path, prompt, message):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"lesions": [{"prompts": [prompt]}]}))
    with pytest.raises(ClicksFileError, match=message):
        load_clicks(f, ["a.nii.gz"])
