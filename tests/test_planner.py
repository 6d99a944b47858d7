"""The ISRG planner through `isrg plan`: isotropic spacing from lesion extents, cubic crop as patch."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from conftest import PHANTOM_ID, nnunet_cmd, run_cmd


def test_isrg_plan_writes_cubic_isotropic_plans_and_preprocesses(phantom_preprocessed, phantom_raw):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    # a raw splits_final.json is carried to the preprocessed folder; this one is nnU-Net's own default
    # split of these cases, so the other tests of the session see the folds they would have had anyway
    ids = sorted(p.name[: -len(".nii.gz")] for p in (phantom_raw / "labelsTr").glob("*.nii.gz"))
    raw_splits = phantom_raw / "splits_final.json"
    raw_splits.write_text(json.dumps(generate_crossval_split(ids, seed=12345, n_splits=5)))
    try:
        proc = run_cmd([nnunet_cmd("isrg"), "plan", "-d", str(PHANTOM_ID), "--preset", "tiny", "-np", "2",
                        "-npfp", "2"])
        assert "cross-validation folds copied" in proc.stdout
        assert json.loads((phantom_preprocessed / "splits_final.json").read_text()) == \
            json.loads(raw_splits.read_text())
    finally:
        raw_splits.unlink()
    plans = json.loads((phantom_preprocessed / "nnUNetISRGPlans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["patch_size"] == [64, 64, 64]
    assert cfg["preprocessor_name"] == "DefaultPreprocessor"  # nnUNetv2_predict keeps working
    assert len(set(cfg["spacing"])) == 1
    # phantom lesions are a few cm at most: the finest spacing (1.5 mm) already fits them in 64 voxels
    assert cfg["spacing"][0] == 1.5
    assert "nnUNetISRGPlans" in proc.stdout and "ISRGTrainer" in proc.stdout
    data = sorted((phantom_preprocessed / "nnUNetISRGPlans_3d_fullres").glob("*.b2nd"))
    n_cases = len(list((phantom_raw / "labelsTr").glob("*.nii.gz")))
    assert len([d for d in data if not d.name.endswith("_seg.b2nd")]) == n_cases
    assert (phantom_preprocessed / "attributesTr.json").is_file()


def test_spacing_grows_when_lesions_do_not_fit_the_crop(phantom_preprocessed, phantom_raw):
    from nnunet_isrg_planners.isrg_planner import ISRGPlanner, lesion_extents_mm

    ds = json.loads((phantom_raw / "dataset.json").read_text())
    extents = lesion_extents_mm(str(phantom_raw), ds, [1])
    # oracle: bounding box of the first case's label, by hand
    first = sorted((phantom_raw / "labelsTr").glob("*.nii.gz"))[0]
    img = sitk.ReadImage(str(first))
    idx = np.argwhere(sitk.GetArrayFromImage(img) > 0)
    expected = np.max((idx.max(0) - idx.min(0) + 1) * np.array(img.GetSpacing()[::-1]))
    assert np.isclose(extents[0], expected)
    small = ISRGPlanner(PHANTOM_ID, crop_size=(8, 8, 8))
    spacing = small.determine_fullres_target_spacing()
    needed = np.percentile(extents, 90) / (0.75 * 8)
    assert np.allclose(spacing, [min(max(1.5, needed), 3.0)] * 3)
    assert spacing[0] > 1.5


def test_debug_trainer_trains_on_the_isrg_plans(phantom_preprocessed, nnunet_dirs):
    """`-p nnUNetISRGPlans`: the trainer works with the ISRG planner's plans as with nnU-Net's default ones."""
    if not (phantom_preprocessed / "nnUNetISRGPlans.json").exists():
        run_cmd([nnunet_cmd("isrg"), "plan", "-d", str(PHANTOM_ID), "--preset", "tiny", "-np", "2", "-npfp", "2"])
    run_cmd([nnunet_cmd("nnUNetv2_train"), str(PHANTOM_ID), "3d_fullres", "0", "-tr", "ISRGTrainer_Debug_Vanilla",
             "-p", "nnUNetISRGPlans", "-device", "cpu"])
    out = (nnunet_dirs["nnUNet_results"] / phantom_preprocessed.name /
           "ISRGTrainer_Debug_Vanilla__nnUNetISRGPlans__3d_fullres")
    plans = json.loads((out / "plans.json").read_text())
    assert plans["plans_name"] == "nnUNetISRGPlans"
    assert plans["configurations"]["3d_fullres"]["isrg"]["crop_size"] == [32, 32, 32]
    summary = json.loads((out / "fold_0" / "validation" / "interactive_summary.json").read_text())
    assert summary["n_cases"] > 0 and len(summary["mean_per_click"]["dice"]) == 3


def _fake_raw_dataset(root, cases):
    raw = root / "Dataset999_Fake"
    (raw / "labelsTr").mkdir(parents=True)
    for c in cases:
        (raw / "labelsTr" / f"{c}.nii.gz").write_bytes(b"")  # only the names are read
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                                                           "lesion": 1},
                                                  "numTraining": len(cases), "file_ending": ".nii.gz"}))
    pre = root / "pre" / raw.name
    pre.mkdir(parents=True)
    return raw, pre


def test_copy_splits_to_preprocessed_copies_checks_and_replaces(tmp_path, capsys):
    import pytest

    from nnunet_isrg.data.verify import DatasetVerificationError, copy_splits_to_preprocessed

    raw, pre = _fake_raw_dataset(tmp_path, ["a", "b", "c", "d"])
    assert copy_splits_to_preprocessed(raw, pre) is None and not (pre / "splits_final.json").exists()
    grouped = [{"train": ["a", "b"], "val": ["c", "d"]}, {"train": ["c", "d"], "val": ["a", "b"]}]
    (raw / "splits_final.json").write_text(json.dumps(grouped))
    target = copy_splits_to_preprocessed(raw, pre)
    assert target == pre / "splits_final.json" and json.loads(target.read_text()) == grouped
    # an older, different split there (e.g. nnU-Net's own) is replaced, and the user is told
    target.write_text(json.dumps([{"train": ["a", "c"], "val": ["b", "d"]}]))
    copy_splits_to_preprocessed(raw, pre)
    assert json.loads(target.read_text()) == grouped and "replaced" in capsys.readouterr().out
    for bad, message in (([{"train": ["a", "x"], "val": ["c"]}], "not in"),
                         ([{"train": ["a", "b"], "val": ["b"]}], "both"),
                         ([{"train": ["a"]}], "'train' and 'val'")):
        (raw / "splits_final.json").write_text(json.dumps(bad))
        with pytest.raises(DatasetVerificationError, match=message):
            copy_splits_to_preprocessed(raw, pre)
    assert json.loads(target.read_text()) == grouped  # a refused file changes nothing
