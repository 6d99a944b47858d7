"""``isrg evaluate`` / ``isrg compare`` on real nnU-Net result folders made by the debug trainers.

Three trainers on fold 0 of the session phantom, each trained by the real ``nnUNetv2_train``:
ISRGTrainer_Debug (conftest), ISRGTrainer_Debug_Vanilla and the UNet baseline nnUNetTrainer_ISRGDebug
(here, in parallel). The tables must hold the means of the per-case reports (ISRG) and of an
independent Dice of the UNet's exported masks against the raw labels (the phantom is stored at
the plans' spacing with nothing to crop, so both spaces coincide).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PHANTOM_ID, PHANTOM_NAME, nnunet_cmd

from nnunet_isrg.evaluation.cli import (add_compare_arguments, add_evaluate_arguments, run_compare_from_args,
                                        run_evaluate_from_args)

BASELINE = "nnUNetTrainer_ISRGDebug"
VANILLA = "ISRGTrainer_Debug_Vanilla"
FULL = "ISRGTrainer_Debug"
CLICKS = ["1", "2", "3"]  # the debug trainers validate with 3 clicks


def _parse(add, argv):
    import argparse

    return add(argparse.ArgumentParser()).parse_args(argv)


@pytest.fixture(scope="module")
def trained_env(debug_model, nnunet_dirs, tmp_path_factory) -> dict[str, str]:
    """Fold 0 of the three trainers in a results folder of this module's own (other test files retrain
    or delete debug models in the shared one); returns the environment variables that point there."""
    root = tmp_path_factory.mktemp("results_compare")
    (root / PHANTOM_NAME).mkdir()
    shutil.copytree(debug_model, root / PHANTOM_NAME / debug_model.name)
    # the UNet baseline trainers are found like the ISRG ones: trainers/ re-exports them
    env = {"nnUNet_results": str(root)}
    t0 = time.time()
    procs = {tr: subprocess.Popen([nnunet_cmd("nnUNetv2_train"), str(PHANTOM_ID), "3d_fullres", "0", "-tr", tr,
                                   "-device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=dict(os.environ, **env))
             for tr in (VANILLA, BASELINE)}
    for tr, p in procs.items():
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"nnUNetv2_train -tr {tr} failed:\n{out[-4000:]}"
    print(f"\n[test_compare] {VANILLA} + {BASELINE} trained in parallel in {time.time() - t0:.0f} s")
    return env


@pytest.fixture
def trained(trained_env, monkeypatch) -> Path:
    """The dataset's results folder holding the three trainers; nnU-Net's variables point at it for the test."""
    for k, v in trained_env.items():
        monkeypatch.setenv(k, v)
    return Path(trained_env["nnUNet_results"]) / PHANTOM_NAME


def _reports_mean(folder: Path, metric: str, click: int) -> float:
    reports = sorted((folder / "fold_0" / "validation" / "reports").glob("*.json"))
    assert reports
    values = [json.loads(p.read_text())[metric][click - 1] for p in reports]
    # null = undefined (HD95 of an empty prediction): left out of the mean, as documented in metrics.py
    values = np.array([np.nan if v is None else v for v in values], dtype=float)
    return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else float("nan")


def _baseline_dice_oracle(results: Path, raw: Path) -> tuple[float, list[str], dict[str, float]]:
    """Dice of the UNet's exported validation masks against the raw labels, plain numpy (mean, cases, per case)."""
    splits = json.loads((Path(os.environ["nnUNet_preprocessed"]) / PHANTOM_NAME / "splits_final.json").read_text())
    cases = sorted(splits[0]["val"])
    dices = []
    for k in cases:
        p = sitk.GetArrayFromImage(sitk.ReadImage(str(results / f"{BASELINE}__nnUNetPlans__3d_fullres" / "fold_0" /
                                                      "validation" / f"{k}.nii.gz"))) == 1
        g = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{k}.nii.gz"))) == 1
        dices.append(2 * np.logical_and(p, g).sum() / (p.sum() + g.sum()))
    return float(np.mean(dices)), cases, dict(zip(cases, dices))


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_aggregates_reports_and_scores_the_unet(trained, phantom_raw, capsys):
    rc = run_evaluate_from_args(_parse(add_evaluate_arguments, ["-d", str(PHANTOM_ID), "-tr", FULL, BASELINE,
                                                                "-f", "0", "--n-clicks", "3"]))
    assert rc == 0, capsys.readouterr().err
    full = json.loads((trained / f"{FULL}__nnUNetPlans__3d_fullres" / "crossval_interactive.json").read_text())
    assert full["kind"] == "interactive" and full["folds"] == [0]
    for k in (1, 2, 3):
        for m in ("dice", "nsd"):
            expected = _reports_mean(trained / f"{FULL}__nnUNetPlans__3d_fullres", m, k)
            assert full["pooled"]["per_click"][m][k - 1]["mean"] == pytest.approx(expected, abs=1e-9)
            assert full["per_fold"]["0"]["per_click"][m][k - 1]["mean"] == pytest.approx(expected, abs=1e-9)
    attrs = full["pooled"]["attributes"]["per_attribute"]
    assert np.asarray(attrs["density"]["confusion_matrix"]).shape == (3, 3)
    assert np.asarray(attrs["density"]["confusion_matrix"]).sum() == attrs["density"]["n"] > 0
    assert "by_lesion_type" in full["pooled"]

    base = json.loads((trained / f"{BASELINE}__nnUNetPlans__3d_fullres" / "crossval_interactive.json").read_text())
    oracle, cases, _ = _baseline_dice_oracle(trained, phantom_raw)
    assert base["kind"] == "no-click baseline" and sorted(base["cases"]["0"]) == cases
    dice = base["pooled"]["mean_per_click"]["dice"]
    assert len(dice) == 3 and dice[0] == dice[1] == dice[2] == pytest.approx(oracle, abs=1e-9)
    rows = _csv(trained / f"{BASELINE}__nnUNetPlans__3d_fullres" / "crossval_interactive.csv")
    assert {r["scope"] for r in rows} >= {"pooled", "fold_0"}


def test_compare_writes_paper_tables_and_plots(trained, phantom_raw, tmp_path, capsys):
    # zero-shot oracle: held-out copies of two validation cases must reproduce their validation results
    # through the zero-shot path (nnU-Net preprocessing of raw files + LesionPredictor / nnUNetPredictor)
    val = sorted(json.loads((Path(os.environ["nnUNet_preprocessed"]) / PHANTOM_NAME /
                             "splits_final.json").read_text())[0]["val"])[:2]
    zs = tmp_path / "zero_shot"
    for sub in ("imagesTs", "labelsTs"):
        (zs / sub).mkdir(parents=True)
    table = json.loads((phantom_raw / "attributesTr.json").read_text())
    for k in val:
        shutil.copy(phantom_raw / "imagesTr" / f"{k}_0000.nii.gz", zs / "imagesTs" / f"{k}_0000.nii.gz")
        shutil.copy(phantom_raw / "labelsTr" / f"{k}.nii.gz", zs / "labelsTs" / f"{k}.nii.gz")
    (zs / "attributesTs.json").write_text(json.dumps({k: table[k] for k in val}))

    out = tmp_path / "cmp"
    rc = run_compare_from_args(_parse(add_compare_arguments, [
        "-d", str(PHANTOM_ID), "--baseline", BASELINE, "--trainers", VANILLA, FULL, "-f", "0", "--clicks", *CLICKS,
        "--attribute-baseline", "--classical-baseline", "--zero-shot", "--zero-shot-dir", str(zs), "-o", str(out),
        "--protocol", "cvpr25"]))
    assert rc == 0, capsys.readouterr().err
    # the CVPR 2025 protocol's table: per ISRG trainer, the box then each click, from reports_cvpr25/
    doc = json.loads((out / "comparison.json").read_text())
    assert [r["trainer"] for r in doc["cvpr25"]] == [VANILLA, FULL]
    for row in doc["cvpr25"]:
        assert len(row["dice"]) == len(row["click_protocol_dice"]) + 1 and row["final_dice"] == row["dice"][-1]
        assert row["n_cases"] == doc["n_validation_cases"]
    assert "**CVPR 2025 interactive protocol (validation)**" in (out / "comparison.md").read_text()
    for name in ("comparison.md", "comparison.json", "comparison_segmentation.csv", "comparison_attributes.csv",
                 "dice_vs_clicks.png", "attribute_accuracy.png"):
        assert (out / name).is_file(), name
    import matplotlib.image as mpimg

    for png in ("dice_vs_clicks.png", "attribute_accuracy.png"):
        img = mpimg.imread(out / png)
        assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.01  # drawn, not blank

    md = (out / "comparison.md").read_text()
    header = "| Method | Trainer | DSC@1 | DSC@2 | DSC@3 | HD95@1 | HD95@2 | HD95@3 | NSD@1 | NSD@2 | NSD@3 |"
    assert md.count(header) == 2  # validation and zero-shot
    assert "| Method | Trainer | shape | invasion | density | heterogeneity | surface | Average |" in md
    for row in (f"| nnU-Net UNet (no clicks) | `{BASELINE}` |", f"| ISRG Vanilla | `{VANILLA}` |",
                f"| ISRG (Full) | `{FULL}` |", "| Image measurements + random forest (non-deep) | — |",
                "| Majority-class rate (reference) | — |", "| Region growing / threshold (classical, clicks) | — |",
                "| Majority class (reference) | — |"):
        assert row in md, row
    assert md.count("| Region growing / threshold (classical, clicks) | — |") == 2  # validation and zero-shot
    assert "**Attribute balanced accuracy (validation, at the last click)**" in md

    seg = _csv(out / "comparison_segmentation.csv")
    def value(split, trainer, metric, click):
        hits = [r for r in seg if (r["split"], r["trainer"], r["metric"], r["click"]) == (split, trainer, metric,
                                                                                          str(click))]
        assert len(hits) == 1, (split, trainer, metric, click)
        return float(hits[0]["mean"] or "nan")  # empty: no finite value (e.g. HD95 with every prediction empty)

    oracle, _, per_case = _baseline_dice_oracle(trained, phantom_raw)
    for k in (1, 2, 3):
        for tr in (VANILLA, FULL):
            folder = trained / f"{tr}__nnUNetPlans__3d_fullres"
            for m in ("dice", "nsd", "hd95"):
                assert value("validation", tr, m, k) == pytest.approx(_reports_mean(folder, m, k), rel=1e-5, abs=1e-6,
                                                                      nan_ok=True)
        assert value("validation", BASELINE, "dice", k) == pytest.approx(oracle, rel=1e-5, abs=1e-6)
    # the markdown shows the same numbers, rounded
    full_dice_1 = _reports_mean(trained / f"{FULL}__nnUNetPlans__3d_fullres", "dice", 1)
    full_row = next(l for l in md.splitlines() if l.startswith(f"| ISRG (Full) | `{FULL}` |"))
    assert full_row.split("|")[3].strip().startswith(f"{full_dice_1:.3f} ±")

    doc = json.loads((out / "comparison.json").read_text())
    assert [m["trainer"] for m in doc["methods"]] == [BASELINE, "classical-baseline", VANILLA, FULL]
    _check_classical(doc, value, trained, phantom_raw, val)
    # attribute table: ISRG accuracies are the fraction of reports whose last-click prediction is right
    reports = [json.loads(p.read_text()) for p in
               sorted((trained / f"{FULL}__nnUNetPlans__3d_fullres" / "fold_0" / "validation" / "reports").glob("*.json"))]
    for a in ("shape", "density", "surface"):
        acc = np.mean([r["attributes_pred"][a] == r["attribute_truth"][a] for r in reports])
        assert doc["validation"]["attributes"][FULL]["per_attribute"][a]["accuracy"] == pytest.approx(acc)
    attr_rows = _csv(out / "comparison_attributes.csv")
    assert {(r["split"], r["trainer"]) for r in attr_rows if r["attribute"] == "average"} == {
        (s, t) for s in ("validation", "zero-shot") for t in (VANILLA, FULL, "attribute-baseline")}
    # balanced accuracy: the mean recall over the true classes of the same confusion matrix
    for a in ("shape", "density"):
        e = doc["validation"]["attributes"][FULL]["per_attribute"][a]
        cm = np.asarray(e["confusion_matrix"], dtype=float)
        rows = cm.sum(1) > 0
        assert e["balanced_accuracy"] == pytest.approx(np.mean(np.diag(cm)[rows] / cm.sum(1)[rows]))
        assert e["majority_balanced_accuracy"] == pytest.approx(1 / rows.sum())

    # zero-shot block on copies of validation cases == the validation results of those cases
    z = doc["zero_shot"]["segmentation"]
    for tr in (VANILLA, FULL):
        rep = [json.loads((trained / f"{tr}__nnUNetPlans__3d_fullres" / "fold_0" / "validation" / "reports" /
                           f"{k}.json").read_text()) for k in val]
        for k in (1, 2, 3):
            assert z[tr]["dice"][str(k)]["mean"] == pytest.approx(np.mean([r["dice"][k - 1] for r in rep]), abs=1e-5)
    # the UNet through nnUNetPredictor on the re-preprocessed copies == its exported validation masks
    assert z[BASELINE]["dice"]["1"]["n"] == 2
    assert z[BASELINE]["dice"]["1"]["mean"] == pytest.approx(np.mean([per_case[k] for k in val]), abs=1e-4)


def _check_classical(doc, value, trained, phantom_raw, zero_shot_cases):
    """The classical row: its setting is the best on the fold's training cases, its validation cases are the
    models', and its Dice is what the chosen setting gives on the raw phantom normalised by hand."""
    from nnunet_isrg.evaluation.classical_baseline import ClassicalSetting, ClassicalCase, run_classical_baseline
    from nnunet_isrg.lesions import largest_lesion_component

    fold = doc["classical_baseline"]["per_fold"]["0"]
    assert fold["setting"] == max(fold["training_mean_dice"], key=fold["training_mean_dice"].get)
    splits = json.loads((Path(os.environ["nnUNet_preprocessed"]) / PHANTOM_NAME / "splits_final.json").read_text())
    assert fold["n_training_cases_used"] == fold["n_training_cases"] == len(splits[0]["train"])  # every one, < 100
    val = doc["validation_cases"]["0"]
    assert fold["n_validation_cases"] == len(val) == doc["validation"]["segmentation"]["classical-baseline"]["n_cases"]
    # oracle: the raw phantom (stored at the plans' spacing, nothing to crop) with nnU-Net's CT normalisation by hand
    plans = json.loads((trained / f"{FULL}__nnUNetPlans__3d_fullres" / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["normalization_schemes"] == ["CTNormalization"] and plans["transpose_forward"] == [0, 1, 2]
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    setting = ClassicalSetting(fold["method"], fold["params"])
    cases = {}
    for k in val:
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_raw / "imagesTr" / f"{k}_0000.nii.gz")))
        img = (np.clip(img.astype(np.float32), props["percentile_00_5"], props["percentile_99_5"]) - props["mean"]) \
            / max(props["std"], 1e-8)
        gt, _ = largest_lesion_component(sitk.GetArrayFromImage(sitk.ReadImage(
            str(phantom_raw / "labelsTr" / f"{k}.nii.gz"))), [1])
        cases[k] = ClassicalCase(k, img.astype(np.float32), gt, cfg["spacing"])
    results = {r.case_id: r for r in run_classical_baseline(list(cases.values()), setting, n_clicks=3)}
    for k in (1, 2, 3):
        expected = np.mean([r.dice[k - 1] for r in results.values()])
        assert value("validation", "classical-baseline", "dice", k) == pytest.approx(expected, abs=1e-4)
        # the zero-shot copies of two validation cases score as they do in validation
        z = doc["zero_shot"]["segmentation"]["classical-baseline"]["dice"][str(k)]["mean"]
        assert z == pytest.approx(np.mean([results[c].dice[k - 1] for c in zero_shot_cases]), abs=1e-4)


def test_score_attribute_pairs_balanced_accuracy_by_hand():
    from nnunet_isrg.evaluation.protocol import score_attribute_pairs

    schema = {"density": ["Hypodense", "Isodense", "Hyperdense"], "surface": ["Well", "Ill"]}
    # density truth: 4 hypo (3 right), 2 iso (1 right), no hyper; one prediction of a class never true
    pairs = {"density": [("Hypodense", "Hypodense")] * 3 + [("Hypodense", "Hyperdense")]
             + [("Isodense", "Isodense"), ("Isodense", "Hypodense")]}
    s = score_attribute_pairs(pairs, schema)
    d = s["per_attribute"]["density"]
    assert d["accuracy"] == pytest.approx(4 / 6) and d["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert d["majority_rate"] == pytest.approx(4 / 6) and d["majority_balanced_accuracy"] == pytest.approx(1 / 2)
    assert s["per_attribute"]["surface"]["balanced_accuracy"] is None and s["per_attribute"]["surface"]["n"] == 0
    assert s["mean_balanced_accuracy"] == pytest.approx(d["balanced_accuracy"])


def test_missing_fold_or_trainer_is_a_clear_error_and_writes_nothing(trained, tmp_path, capsys):
    out = tmp_path / "cmp_missing"
    rc = run_compare_from_args(_parse(add_compare_arguments, [
        "-d", str(PHANTOM_ID), "--baseline", BASELINE, "--trainers", FULL, "ISRGTrainer_DoesNotExist",
        "-f", "0", "1", "--clicks", *CLICKS, "-o", str(out)]))
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "nothing was written" in err
    assert f"{FULL} fold 1: not trained" in err and f"{BASELINE} fold 1: not trained" in err
    assert "ISRGTrainer_DoesNotExist: no trained model folder" in err
    assert f"nnUNetv2_train {PHANTOM_ID} 3d_fullres 1 -tr {FULL}" in err  # says how to produce it

    rc = run_compare_from_args(_parse(add_compare_arguments, [
        "-d", str(PHANTOM_ID), "--baseline", BASELINE, "--trainers", FULL, "-f", "0", "--clicks", "1", "3", "5",
        "-o", str(out)]))
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert f"{FULL} fold 0: validated with 3 clicks, the table asks for click 5" in err

    rc = run_evaluate_from_args(_parse(add_evaluate_arguments, ["-d", str(PHANTOM_ID), "-tr", VANILLA, "-f", "0", "2"]))
    err = capsys.readouterr().err
    assert rc == 2 and f"{VANILLA} fold 2: not trained" in err


# ------------------------------------------------------------------------------ building blocks (no training)
def test_restrict_to_target_keeps_the_targets_share_only():
    from nnunet_isrg.evaluation.aggregate import restrict_to_target

    seg = np.zeros((20, 20, 40), np.uint8)
    seg[5:15, 5:15, 2:12] = 1      # target (largest)
    seg[8:12, 8:12, 30:34] = 1     # another lesion
    target = np.zeros(seg.shape, bool)
    target[5:15, 5:15, 2:12] = True
    pred = seg > 0
    pred[0:2, 0:2, 14:16] = True   # false positive nearer the target than the other lesion
    out = restrict_to_target(pred, seg, target, [1], (1.0, 1.0, 1.0))
    expected = target.copy()
    expected[0:2, 0:2, 14:16] = True
    np.testing.assert_array_equal(out, expected)
    # with a single lesion nothing is removed
    only = np.where(target, 1, 0)
    np.testing.assert_array_equal(restrict_to_target(pred, only, target, [1], (1.0, 1.0, 1.0)), pred)


def test_constant_case_result_repeats_metrics_at_every_click():
    from nnunet_isrg.evaluation.aggregate import constant_case_result

    r = constant_case_result({"dice": 0.8, "nsd": 0.7, "hd95": 3.0, "pred_empty": False}, 5, "c1", (1.5, 1.5, 1.5),
                             {"shape": "Irregular"}, "liver_tumour")
    assert r.dice == [0.8] * 5 and r.hd95 == [3.0] * 5 and r.n_clicks_used == 0 and r.clicks == []
    assert r.auc["dice"] == pytest.approx(0.8) and r.noc["85"] == {"clicks": 5, "failed": True}
    assert r.attributes_pred is None and r.lesion_type == "liver_tumour"


def test_seg_to_preprocessed_space_crops_like_nnunet(phantom_preprocessed, tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_isrg.evaluation.aggregate import seg_to_preprocessed_space

    pm = PlansManager(str(phantom_preprocessed / "nnUNetPlans.json"))
    cm = pm.get_configuration("3d_fullres")
    spacing = [float(s) for s in cm.spacing]
    rng = np.random.default_rng(0)
    arr = (rng.random((12, 14, 16)) > 0.7).astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[::-1])
    sitk.WriteImage(img, str(tmp_path / "p.nii.gz"))
    bbox = [[1, 11], [2, 14], [0, 15]]
    props = {"shape_before_cropping": arr.shape, "bbox_used_for_cropping": bbox, "spacing": spacing}
    out = seg_to_preprocessed_space(tmp_path / "p.nii.gz", props, pm, cm, (10, 12, 15))
    np.testing.assert_array_equal(out, arr[1:11, 2:14, 0:15])
    with pytest.raises(ValueError, match="differs from the case's original shape"):
        seg_to_preprocessed_space(tmp_path / "p.nii.gz", dict(props, shape_before_cropping=(13, 14, 16)), pm, cm,
                                  (10, 12, 15))
