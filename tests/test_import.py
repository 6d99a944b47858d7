"""Import of image/mask pairs (real IBSI soft-tissue-sarcoma CT and small synthetic pairs) into an nnU-Net raw dataset."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_isrg.attributes import ATTRIBUTES_FILENAME, DEFAULT_SCHEMA, AttributeLabelError
from nnunet_isrg.data.import_dataset import (
    DatasetImportError,
    add_import_arguments,
    find_pairs,
    import_image_mask_pairs,
    run_import_from_args,
    sanitise_case_id,
)
from nnunet_isrg.data.verify import verify_raw_dataset

# ../shared/realdata beside the repository; ISRG_REALDATA points elsewhere
REALDATA = Path(os.environ.get("ISRG_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
STS = REALDATA / "ibsi-sts"
REAL_CASES = ("STS_001", "STS_002")
CSV = ("case,shape,invasion,density,heterogeneity,surface,lesion_type\n"
       "STS_001,irregular,No close relationship with surrounding structures,,Heterogeneous,,sarcoma\n"
       "STS_002,Round-like,,Hypodense,,Well-defined margin,\n")

needs_real_data = pytest.mark.skipif(not (STS / "STS_001" / "CT_image.nii.gz").is_file(),
                                     reason=f"real data not found at {STS}")


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    csv_path = root.parent / "sts_attributes.csv"
    csv_path.write_text(CSV)
    return import_image_mask_pairs(STS, root, 611, "STS", cases=list(REAL_CASES), attributes_csv=csv_path,
                                   progress=False)


@needs_real_data
def test_real_cases_are_imported_unchanged(real_dataset):
    assert real_dataset.name == "Dataset611_STS"
    assert sorted(p.name for p in real_dataset.parent.iterdir()) == ["Dataset611_STS"]  # no temporary left
    for case in REAL_CASES:
        src_image = sitk.ReadImage(str(STS / case / "CT_image.nii.gz"))
        src_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(STS / case / "CT_mask.nii.gz")))
        image = sitk.ReadImage(str(real_dataset / "imagesTr" / f"{case}_0000.nii.gz"))
        label = sitk.ReadImage(str(real_dataset / "labelsTr" / f"{case}.nii.gz"))
        for img in (image, label):
            assert img.GetSize() == src_image.GetSize()
            assert img.GetSpacing() == src_image.GetSpacing()
            assert img.GetOrigin() == src_image.GetOrigin()
            assert img.GetDirection() == src_image.GetDirection()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(src_image))
        seg = sitk.GetArrayFromImage(label)
        assert seg.dtype == np.uint8 and set(np.unique(seg).tolist()) == {0, 1}
        assert int(seg.sum()) == int(np.count_nonzero(src_mask))
        np.testing.assert_array_equal(seg, (src_mask != 0).astype(np.uint8))

    dataset_json = json.loads((real_dataset / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "lesion": 1}
    assert dataset_json["numTraining"] == 2 and dataset_json["file_ending"] == ".nii.gz"
    assert dataset_json["isrg"] == {"attributes": dict(DEFAULT_SCHEMA), "lesion_labels": [1]}
    table = json.loads((real_dataset / ATTRIBUTES_FILENAME).read_text())
    assert table == {
        "STS_001": {"shape": "Irregular", "invasion": "No close relationship with adjacent structures",
                    "heterogeneity": "Heterogeneous", "lesion_type": "sarcoma"},
        "STS_002": {"shape": "Round-like", "density": "Hypodense", "surface": "Well-defined margin"},
    }


@needs_real_data
def test_imported_dataset_passes_verification(real_dataset):
    report = verify_raw_dataset(real_dataset, check_pixels=True)
    assert report.n_cases == 2 and report.n_labelled == 2
    assert report.class_counts["shape"] == {"Round-like": 1, "Irregular": 1, "Wall thickening": 0,
                                            "Punctate, nodular": 0, "unknown": 0}


@needs_real_data
def test_imported_dataset_passes_nnunet_integrity_check(real_dataset, capfd):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(real_dataset), num_processes=1)
    # nnU-Net only prints origin/direction/affine mismatches (from its worker process, hence capfd)
    out = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in out
    assert "Warning" not in out and "Error" not in out, out
    assert "Warning" not in out and "Error" not in out


def _write_pair(folder: Path, mask: np.ndarray | None = None, image_spacing=(0.9, 0.9, 3.0),
                mask_spacing=None, mask_size=None, origin=(1.0, 2.0, 3.0)) -> Path:
    """A 12x16x16 (z,y,x) CT with a lesion block, in folder/CT_image.nii.gz + folder/CT_mask.nii.gz."""
    folder.mkdir(parents=True)
    ct = np.full((12, 16, 16), -100, np.int16)
    ct[3:7, 4:10, 5:11] = 40
    if mask is None:
        mask = (ct == 40).astype(np.uint8)
    if mask_size is not None:
        mask = np.zeros(mask_size, np.uint8)
    for arr, name, spacing in ((ct, "CT_image.nii.gz", image_spacing), (mask, "CT_mask.nii.gz", mask_spacing or image_spacing)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        sitk.WriteImage(img, str(folder / name))
    return folder


@pytest.mark.parametrize("kwargs, prop", [
    (dict(mask_spacing=(0.9, 0.9, 2.0)), "spacing"),
    (dict(mask_size=(12, 16, 15)), "size"),
])
def test_geometry_mismatch_is_refused_naming_both_files(tmp_path, kwargs, prop):
    src = tmp_path / "src"
    _write_pair(src / "P1")
    _write_pair(src / "P2", **kwargs)
    out = tmp_path / "out"
    with pytest.raises(DatasetImportError) as e:
        import_image_mask_pairs(src, out, 612, "Bad", progress=False)
    msg = str(e.value)
    assert str(src / "P2" / "CT_image.nii.gz") in msg and str(src / "P2" / "CT_mask.nii.gz") in msg
    assert prop in msg and "case 'P2'" in msg
    assert list(out.iterdir()) == []  # nothing half-written, no temporary folder left


def test_multi_valued_mask_is_binarised_and_ids_sanitised(tmp_path):
    src = tmp_path / "src"
    mask = np.zeros((12, 16, 16), np.uint8)
    mask[1:3, 1:3, 1:3] = 2
    mask[5:8, 5:9, 5:9] = 255
    _write_pair(src / "pat 01.a", mask=mask)
    ds = import_image_mask_pairs(src, tmp_path / "out", 613, "Multi", case_prefix="x-", progress=False)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "labelsTr" / "x-pat_01_a.nii.gz")))
    np.testing.assert_array_equal(seg, (mask != 0).astype(np.uint8))
    assert int(seg.sum()) == 2 ** 3 + 3 * 4 * 4
    assert not (ds / ATTRIBUTES_FILENAME).exists()  # no CSV: attributes unknown, verify warns
    assert any("not found" in w for w in verify_raw_dataset(ds).warnings)


def test_flat_layout_with_mask_pattern(tmp_path):
    src = tmp_path / "src"
    for case in ("a", "b"):
        _write_pair(tmp_path / "tmp" / case)
        (src / "images").mkdir(parents=True, exist_ok=True)
        (src / "masks").mkdir(exist_ok=True)
        (tmp_path / "tmp" / case / "CT_image.nii.gz").rename(src / "images" / f"{case}.nii.gz")
        (tmp_path / "tmp" / case / "CT_mask.nii.gz").rename(src / "masks" / f"{case}_seg.nii.gz")
    pairs = find_pairs(src, "images/*.nii.gz", "../masks/{stem}_seg.nii.gz")
    assert [(p.case_id, p.mask.name) for p in pairs] == [("a", "a_seg.nii.gz"), ("b", "b_seg.nii.gz")]


def test_existing_dataset_and_id_clash_are_refused(tmp_path):
    src = tmp_path / "src"
    _write_pair(src / "P1")
    out = tmp_path / "out"
    first = import_image_mask_pairs(src, out, 614, "One", progress=False)
    with pytest.raises(DatasetImportError, match="already exists"):
        import_image_mask_pairs(src, out, 614, "One", progress=False)
    with pytest.raises(DatasetImportError, match="another dataset already uses id 614"):
        import_image_mask_pairs(src, out, 614, "Two", progress=False)
    (first / "stale.txt").write_text("old")
    assert import_image_mask_pairs(src, out, 614, "One", overwrite=True, progress=False) == first
    assert not (first / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["Dataset614_One"]


@pytest.mark.parametrize("csv_text, expected", [
    ("case,shape\nP1,Oval\n", ["row 2", "'P1'", "'shape'", "'Oval'", "Round-like", "Punctate, nodular"]),
    ("case,density\nP1,Hypodense\nP9,Isodense\n", ["row 3", "unknown case 'P9'", "P1"]),
    ("case,colour\nP1,red\n", ["unknown column(s) ['colour']", "heterogeneity"]),
    ("shape\nIrregular\n", ["'case' column"]),
    ("case,shape\nP1,Irregular\nP1,Round-like\n", ["row 3", "already given in row 2"]),
])
def test_attribute_csv_errors(tmp_path, csv_text, expected):
    src = tmp_path / "src"
    _write_pair(src / "P1")
    (tmp_path / "a.csv").write_text(csv_text)
    with pytest.raises(AttributeLabelError) as e:
        import_image_mask_pairs(src, tmp_path / "out", 615, "Csv", attributes_csv=tmp_path / "a.csv", progress=False)
    msg = str(e.value)
    assert str(tmp_path / "a.csv") in msg
    for text in expected:
        assert text in msg, (text, msg)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_semicolon_csv_and_empty_cells(tmp_path):
    src = tmp_path / "src"
    _write_pair(src / "P1")
    _write_pair(src / "P2")
    (tmp_path / "a.csv").write_text("case;surface;invasion\nP1;;close relationship with surrounding structures\n\n")
    ds = import_image_mask_pairs(src, tmp_path / "out", 616, "Semi", attributes_csv=tmp_path / "a.csv", progress=False)
    assert json.loads((ds / ATTRIBUTES_FILENAME).read_text()) == {
        "P1": {"invasion": "Close relationship with adjacent structures"}}


def test_nan_image_is_refused(tmp_path):
    src = tmp_path / "src"
    _write_pair(src / "P1")
    ct = np.zeros((12, 16, 16), np.float32)
    ct[0, 0, 0] = np.nan
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing((0.9, 0.9, 3.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(img, str(src / "P1" / "CT_image.nii.gz"))
    with pytest.raises(DatasetImportError, match=r"CT_image.nii.gz: image contains 1 NaN"):
        import_image_mask_pairs(src, tmp_path / "out", 617, "Nan", progress=False)


def test_sanitise_case_id():
    assert sanitise_case_id("STS_001") == "STS_001"
    assert sanitise_case_id("a b/c.d", "p_") == "p_a_b_c_d"
    with pytest.raises(DatasetImportError):
        sanitise_case_id("...")


def test_cli(tmp_path, capsys):
    src = tmp_path / "src"
    _write_pair(src / "P1")
    _write_pair(src / "P2", mask_spacing=(1.0, 0.9, 3.0))
    parser = argparse.ArgumentParser()
    add_import_arguments(parser)
    args = parser.parse_args([str(src), "-d", "618", "-n", "Cli", "-o", str(tmp_path / "out"), "--cases", "P1"])
    assert run_import_from_args(args) == 0
    assert (tmp_path / "out" / "Dataset618_Cli" / "labelsTr" / "P1.nii.gz").is_file()
    args = parser.parse_args([str(src), "-d", "619", "-n", "Cli2", "-o", str(tmp_path / "out")])
    assert run_import_from_args(args) == 1
    err = capsys.readouterr().err
    assert "P2" in err and "spacing" in err
