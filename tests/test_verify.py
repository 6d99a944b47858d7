"""Verification of a raw dataset's ISRG side, and the copy of the labels into the preprocessed folder."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_isrg.attributes import ATTRIBUTES_FILENAME, DEFAULT_SCHEMA, AttributeLabelError
from nnunet_isrg.data.verify import (
    SCHEMA_FILENAME,
    UNKNOWN,
    DatasetVerificationError,
    add_verify_arguments,
    copy_attributes_to_preprocessed,
    find_attribute_table,
    load_attribute_table,
    run_verify_from_args,
    verify_raw_dataset,
)

CASES = ("case_a", "case_b", "case_c")
SPACING = (0.8, 0.8, 2.5)  # x,y,z mm
ORIGIN = (-10.0, 5.0, 100.0)


def _image(arr: np.ndarray, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def make_dataset(root: Path, attributes: dict | None = None, isrg: dict | None = None, name="Dataset987_Tiny") -> Path:
    """A 3-case raw dataset of 8x10x12 (z,y,x) volumes with a cube lesion (label 1)."""
    d = root / name
    (d / "imagesTr").mkdir(parents=True)
    (d / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for case in CASES:
        ct = rng.normal(40, 10, (8, 10, 12)).astype(np.float32)
        seg = np.zeros((8, 10, 12), np.uint8)
        seg[2:5, 3:6, 4:8] = 1
        sitk.WriteImage(_image(ct), str(d / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(_image(seg), str(d / "labelsTr" / f"{case}.nii.gz"))
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
                    "numTraining": len(CASES), "file_ending": ".nii.gz"}
    if isrg is not None:
        dataset_json["isrg"] = isrg
    (d / "dataset.json").write_text(json.dumps(dataset_json))
    if attributes is not None:
        (d / ATTRIBUTES_FILENAME).write_text(json.dumps(attributes) if not isinstance(attributes, str) else attributes)
    return d


GOOD = {
    "case_a": {"shape": "Round-like", "invasion": "No close relationship with surrounding structures",
               "density": "hypodense", "heterogeneity": "Homogeneous", "surface": "Well-defined margin",
               "lesion_type": "liver_cyst"},
    "case_b": {"shape": "Irregular", "invasion": "Close relationship with adjacent structures"},
}


def test_valid_dataset_counts_and_synonym(tmp_path):
    d = make_dataset(tmp_path, GOOD, isrg={"lesion_labels": [1]})
    report = verify_raw_dataset(d, check_pixels=True)
    assert report.n_cases == 3 and report.n_labelled == 2
    assert report.case_ids == list(CASES)
    # "surrounding" is folded onto the schema's "adjacent" spelling
    assert report.class_counts["invasion"] == {"No close relationship with adjacent structures": 1,
                                               "Close relationship with adjacent structures": 1, UNKNOWN: 1}
    assert report.class_counts["density"] == {"Hypodense": 1, "Isodense": 0, "Hyperdense": 0, UNKNOWN: 2}
    assert report.class_counts["shape"][UNKNOWN] == 1
    assert report.lesion_types == {"liver_cyst": 1}
    assert any("case_c" in w and "without any attribute" in w for w in report.warnings)
    assert any("case_b" in w and "some attributes unknown" in w for w in report.warnings)
    table = load_attribute_table(d / ATTRIBUTES_FILENAME, DEFAULT_SCHEMA, CASES)
    assert table["case_a"]["invasion"] == "No close relationship with adjacent structures"
    assert table["case_a"]["density"] == "Hypodense"
    assert "| invasion | No close relationship with adjacent structures | 1 |" in report.summary_table()


def test_missing_attribute_table_is_a_warning(tmp_path):
    d = make_dataset(tmp_path, None)
    report = verify_raw_dataset(d)
    assert report.n_labelled == 0 and not report.has_attribute_table
    assert all(counts[UNKNOWN] == 3 for counts in report.class_counts.values())
    assert any(ATTRIBUTES_FILENAME in w and "unknown" in w for w in report.warnings)
    assert any("no 'isrg' block" in w for w in report.warnings)


def test_unknown_class_string_names_case_attribute_and_allowed_values(tmp_path):
    d = make_dataset(tmp_path, {"case_b": {"shape": "Roundish"}})
    with pytest.raises(AttributeLabelError) as e:
        verify_raw_dataset(d)
    msg = str(e.value)
    assert str(d / ATTRIBUTES_FILENAME) in msg
    assert "'case_b'" in msg and "'shape'" in msg and "'Roundish'" in msg
    assert all(c in msg for c in DEFAULT_SCHEMA["shape"])


def test_unknown_case_id_names_case_and_allowed_ids(tmp_path):
    d = make_dataset(tmp_path, {"case_x": {"shape": "Irregular"}})
    with pytest.raises(AttributeLabelError) as e:
        verify_raw_dataset(d)
    msg = str(e.value)
    assert str(d / ATTRIBUTES_FILENAME) in msg and "unknown case id 'case_x'" in msg
    assert "case_a" in msg and "labelsTr" in msg


def test_malformed_json_names_file_and_position(tmp_path):
    d = make_dataset(tmp_path, '{"case_a": {"shape": "Irregular",}}')
    with pytest.raises(AttributeLabelError) as e:
        verify_raw_dataset(d)
    msg = str(e.value)
    assert str(d / ATTRIBUTES_FILENAME) in msg and "malformed JSON at line 1" in msg
    assert "Wall thickening" in msg  # says what the file should contain


@pytest.mark.parametrize("table, expected", [
    ({"case_a": {"density": 2}}, ["'case_a'", "'density'", "value must be a string", "Hypodense", "Hyperdense"]),
    ({"case_a": ["Irregular"]}, ["'case_a'", "must be an object", "Round-like"]),
    ({"case_a": {"colour": "red"}}, ["'case_a'", "unknown attribute 'colour'", "heterogeneity"]),
    (["case_a"], ["must be a JSON object, got list", "shape"]),
    ({"case_a": {"lesion_type": 3}}, ["'case_a'", "lesion_type", "must be a string"]),
])
def test_wrong_types(tmp_path, table, expected):
    d = make_dataset(tmp_path, table)
    with pytest.raises(AttributeLabelError) as e:
        verify_raw_dataset(d)
    msg = str(e.value)
    assert str(d / ATTRIBUTES_FILENAME) in msg
    for text in expected:
        assert text in msg, (text, msg)


def test_duplicate_case_id_is_an_error(tmp_path):
    d = make_dataset(tmp_path, '{"case_a": {"shape": "Irregular"}, "case_a": {"shape": "Round-like"}}')
    with pytest.raises(AttributeLabelError, match="duplicate key 'case_a'"):
        verify_raw_dataset(d)


def test_dataset_json_problems(tmp_path):
    with pytest.raises(DatasetVerificationError, match="dataset.json not found"):
        verify_raw_dataset(make_dataset(tmp_path / "a", GOOD).parent.parent / "a" / "Dataset987_Tiny" / "imagesTr")
    d = make_dataset(tmp_path / "b", GOOD)
    (d / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetVerificationError) as e:
        verify_raw_dataset(d)
    assert str(d / "dataset.json") in str(e.value) and "malformed JSON" in str(e.value)


def test_isrg_block_is_checked(tmp_path):
    d = make_dataset(tmp_path / "a", GOOD, isrg={"lesion_labels": [2]})
    with pytest.raises(AttributeLabelError, match=r"lesion_labels \[2\] are not foreground labels.*allowed values: \[1\]"):
        verify_raw_dataset(d)
    d = make_dataset(tmp_path / "b", GOOD, isrg={"attributes": {"shape": ["Round-like"]}})
    with pytest.raises(AttributeLabelError, match="at least two class strings"):
        verify_raw_dataset(d)
    # a custom schema replaces the default: 'density' no longer exists
    custom = {"attributes": {"shape": ["Round-like", "Irregular"], "margin": ["sharp", "blurred"]}}
    d = make_dataset(tmp_path / "c", {"case_a": {"margin": "Sharp"}}, isrg=custom)
    report = verify_raw_dataset(d)
    assert list(report.class_counts) == ["shape", "margin"]
    assert report.class_counts["margin"] == {"sharp": 1, "blurred": 0, UNKNOWN: 2}
    d = make_dataset(tmp_path / "d", {"case_a": {"density": "Hypodense"}}, isrg=custom)
    with pytest.raises(AttributeLabelError, match="unknown attribute 'density'"):
        verify_raw_dataset(d)


@pytest.mark.parametrize("change, prop", [
    (dict(spacing=(0.8, 0.8, 3.0)), "spacing"),
    (dict(origin=(-10.0, 5.0, 110.0)), "origin"),
])
def test_geometry_mismatch_names_both_files(tmp_path, change, prop):
    d = make_dataset(tmp_path, GOOD)
    label = d / "labelsTr" / "case_b.nii.gz"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    sitk.WriteImage(_image(seg, **{**dict(spacing=SPACING, origin=ORIGIN), **change}), str(label))
    with pytest.raises(DatasetVerificationError) as e:
        verify_raw_dataset(d)
    msg = str(e.value)
    assert "case 'case_b'" in msg and str(label) in msg and str(d / "imagesTr" / "case_b_0000.nii.gz") in msg
    assert prop in msg
    verify_raw_dataset(d, check_geometry=False)  # header-only check is optional


def test_geometry_within_float_tolerance_passes(tmp_path):
    d = make_dataset(tmp_path, GOOD)
    label = d / "labelsTr" / "case_a.nii.gz"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    sitk.WriteImage(_image(seg, spacing=(0.8000001, 0.8, 2.5), origin=(-10.00001, 5.0, 100.0)), str(label))
    verify_raw_dataset(d)


def test_pixel_checks(tmp_path):
    d = make_dataset(tmp_path, GOOD)
    image = d / "imagesTr" / "case_c_0000.nii.gz"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    ct[0, 0, :3] = np.nan
    sitk.WriteImage(_image(ct), str(image))
    verify_raw_dataset(d)  # NaN needs the pixel pass
    with pytest.raises(DatasetVerificationError, match=r"case_c_0000.nii.gz: image of case 'case_c' contains 3 NaN"):
        verify_raw_dataset(d, check_pixels=True)

    d = make_dataset(tmp_path / "b", GOOD)
    label = d / "labelsTr" / "case_a.nii.gz"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    seg[0, 0, 0] = 3
    sitk.WriteImage(_image(seg), str(label))
    with pytest.raises(DatasetVerificationError, match=r"contains values \[3\]; allowed values .*\[0, 1\]"):
        verify_raw_dataset(d, check_pixels=True)


def test_image_without_label_is_refused(tmp_path):
    d = make_dataset(tmp_path, GOOD)
    os.remove(d / "labelsTr" / "case_c.nii.gz")
    with pytest.raises(DatasetVerificationError, match="without a label file in labelsTr: case_c"):
        verify_raw_dataset(d)


def test_copy_to_preprocessed_is_atomic_and_idempotent(tmp_path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", GOOD)
    pre = tmp_path / "pre" / raw.name
    pre.mkdir(parents=True)
    target = copy_attributes_to_preprocessed(raw, pre)
    assert target == pre / ATTRIBUTES_FILENAME
    copied = json.loads(target.read_text())
    assert copied == load_attribute_table(raw / ATTRIBUTES_FILENAME, DEFAULT_SCHEMA, CASES)
    assert copied["case_a"]["invasion"] == "No close relationship with adjacent structures"  # normalised
    assert json.loads((pre / SCHEMA_FILENAME).read_text())["attributes"] == DEFAULT_SCHEMA
    before = (target.read_bytes(), target.stat().st_ino, target.stat().st_mtime_ns)
    assert copy_attributes_to_preprocessed(raw, pre) == target
    assert (target.read_bytes(), target.stat().st_ino, target.stat().st_mtime_ns) == before  # untouched
    assert sorted(p.name for p in pre.iterdir()) == sorted([ATTRIBUTES_FILENAME, SCHEMA_FILENAME])

    # a failure while replacing keeps the old copy whole and leaves no temporary file behind
    changed = dict(GOOD, case_c={"shape": "Wall thickening"})
    (raw / ATTRIBUTES_FILENAME).write_text(json.dumps(changed))

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        copy_attributes_to_preprocessed(raw, pre)
    monkeypatch.undo()
    assert target.read_bytes() == before[0]
    assert sorted(p.name for p in pre.iterdir()) == sorted([ATTRIBUTES_FILENAME, SCHEMA_FILENAME])
    copy_attributes_to_preprocessed(raw, pre)
    assert json.loads(target.read_text())["case_c"] == {"shape": "Wall thickening"}


def test_copy_refuses_invalid_table(tmp_path):
    raw = make_dataset(tmp_path / "raw", {"case_a": {"surface": "fuzzy"}})
    pre = tmp_path / "pre" / raw.name
    pre.mkdir(parents=True)
    with pytest.raises(AttributeLabelError, match="'surface'.*Well-defined margin"):
        copy_attributes_to_preprocessed(raw, pre)
    assert not (pre / ATTRIBUTES_FILENAME).exists()


def test_find_attribute_table(tmp_path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", GOOD)
    pre = tmp_path / "pre" / raw.name
    pre.mkdir(parents=True)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    found = find_attribute_table(pre)  # raw folder from $nnUNet_raw and the folder name
    assert found == pre / ATTRIBUTES_FILENAME and found.is_file()
    # a newer raw table is copied again
    (raw / ATTRIBUTES_FILENAME).write_text(json.dumps({"case_c": {"density": "Isodense"}}))
    os.utime(raw / ATTRIBUTES_FILENAME, (found.stat().st_mtime + 10,) * 2)
    assert json.loads(find_attribute_table(pre).read_text()) == {"case_c": {"density": "Isodense"}}
    # no table anywhere: None (every attribute unknown)
    monkeypatch.delenv("nnUNet_raw")
    raw2 = make_dataset(tmp_path / "raw2", None)
    pre2 = tmp_path / "pre2" / raw2.name
    pre2.mkdir(parents=True)
    assert find_attribute_table(pre2, raw2) is None


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_resolves_ids_and_reports(tmp_path, monkeypatch, capsys):
    raw = make_dataset(tmp_path / "raw", GOOD)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.delenv("nnUNet_results", raising=False)
    (tmp_path / "pre" / raw.name).mkdir(parents=True)
    assert run_verify_from_args(_args("987", "--copy-to-preprocessed")) == 0
    out = capsys.readouterr().out
    assert "cases: 3, with at least one attribute label: 2" in out and out.rstrip().endswith("OK")
    assert (tmp_path / "pre" / raw.name / ATTRIBUTES_FILENAME).is_file()
    assert run_verify_from_args(_args(raw.name, "--json", str(tmp_path / "r.json"))) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n_labelled"] == 2

    (raw / ATTRIBUTES_FILENAME).write_text(json.dumps({"case_a": {"density": "Dense"}}))
    assert run_verify_from_args(_args(str(raw))) == 1
    err = capsys.readouterr().err
    assert "case 'case_a'" in err and "'density'" in err and "Hyperdense" in err
    assert run_verify_from_args(_args("988")) == 1
    assert "988" in capsys.readouterr().err
