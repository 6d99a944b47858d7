"""scripts/benchmark_realdata.py: crop-coverage measures against brute-force / analytic oracles, the
summary and report on protocol results, and one real sarcoma through a trained (debug) model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
from nnunet_isrg.evaluation.metrics import dice
from nnunet_isrg.evaluation.protocol import run_interactive_protocol

REPO = Path(__file__).resolve().parents[1]
STS_002 = REPO.parent / "shared" / "realdata" / "ibsi-sts" / "STS_002"


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark_realdata")


def _brute_force_best(gt: np.ndarray, crop) -> float:
    best = 0
    ranges = [range(-c, n + 1) for c, n in zip(crop, gt.shape)]
    for z in ranges[0]:
        for y in ranges[1]:
            for x in ranges[2]:
                sl = tuple(slice(max(a, 0), max(a + c, 0)) for a, c in zip((z, y, x), crop))
                best = max(best, int(gt[sl].sum()))
    return best / gt.sum()


@pytest.mark.parametrize("seed,crop", [(0, (5, 4, 6)), (1, (3, 7, 2)), (2, (20, 20, 20))])
def test_best_single_crop_fraction_matches_brute_force(bench, seed, crop):
    gt = np.random.default_rng(seed).random((12, 10, 9)) < 0.3
    assert bench.best_single_crop_fraction(gt, crop) == pytest.approx(_brute_force_best(gt, crop), abs=1e-12)


def test_best_single_crop_fraction_of_a_long_bar(bench):
    gt = np.zeros((10, 40, 10), bool)
    gt[2:6, 5:35, 3:7] = True  # 30 voxels long in y: a crop 10 long holds a third of it
    assert bench.best_single_crop_fraction(gt, (16, 10, 16)) == pytest.approx(1 / 3)


def test_fraction_inside_with_a_bbox_leaving_the_volume(bench):
    gt = np.zeros((8, 8, 8), bool)
    gt[:4] = True  # 256 voxels
    # z -3..5 -> rows 0..4 (4 lesion rows); y 0..8 all; x 6..12 -> columns 6, 7 of 8
    assert bench.fraction_inside(gt, [[-3, 5], [0, 8], [6, 12]]) == pytest.approx(2 / 8)


def _sphere(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def test_dice_bound_is_the_dice_of_the_lesion_part_inside_the_crop(bench):
    gt = _sphere((40, 40, 40), (20, 20, 20), 14)
    bbox = [[10, 30], [5, 25], [12, 32]]
    pred = np.zeros_like(gt)
    pred[10:30, 5:25, 12:32] = gt[10:30, 5:25, 12:32]
    assert dice(pred, gt) == pytest.approx(bench.dice_bound(bench.fraction_inside(gt, bbox)))


def test_summary_and_report_on_a_crop_limited_oracle(bench):
    """An oracle confined to a 20^3 crop around the first click: its Dice is exactly the bound of its crop."""
    gt = _sphere((40, 40, 40), (20, 20, 20), 14)
    spacing = (1.5, 1.5, 1.5)
    crop = (20, 20, 20)
    cases = []
    for cid, centre_shift in (("A", 0), ("B", 4)):
        bbox_of = {}

        def predict_fn(clicks, bbox_of=bbox_of, shift=centre_shift):
            c = clicks[0][0]
            bbox = [[int(p) - 10 + shift, int(p) + 10 + shift] for p in c]
            bbox_of.setdefault("b", bbox)
            pred = np.zeros_like(gt)
            sl = tuple(slice(max(lo, 0), hi) for lo, hi in bbox)
            pred[sl] = gt[sl]
            return pred, None

        r = run_interactive_protocol(predict_fn, gt, spacing, n_clicks=3, case_id=cid, keep_final_mask=False)
        f = bench.fraction_inside(gt, bbox_of["b"])
        best = bench.best_single_crop_fraction(gt, crop)
        cases.append({"case": cid, "volume_ml": gt.sum() * 1.5 ** 3 / 1000, "mean_hu": 40.0,
                      "extent_mm_zyx": [43.5] * 3, "evaluated_volume_ml": gt.sum() * 1.5 ** 3 / 1000,
                      "best_crop_fraction": best, "dice_bound_single_crop": bench.dice_bound(best),
                      "crop_fraction": [f] * 3, "pred_volume_ml": [f * gt.sum() * 1.5 ** 3 / 1000] * 3,
                      "preprocess_s": 1.0, "protocol_s": 1.0, "dice_whole_first_crop": 0.5,
                      "protocol": r.to_dict(), "result": r})
        assert r.dice[0] == pytest.approx(bench.dice_bound(f))
        assert f <= best + 1e-12
    s = bench.summarise(cases, 3)
    assert s["n_cases"] == 2 and s["n_lesions_larger_than_crop"] == 2
    expected = np.mean([bench.dice_bound(c["crop_fraction"][0]) for c in cases])
    assert s["mean_per_click"]["dice"][0] == pytest.approx(expected)
    assert s["mean_crop_fraction_per_click"][0] == pytest.approx(np.mean([c["crop_fraction"][0] for c in cases]))

    doc = {"command": "python scripts/benchmark_realdata.py", "generated": "2026-01-01T00:00:00",
           "machine": {"cpus": 2, "device": "cpu", "torch": "x"}, "run_time_s": 60.0, "timings_s": {"zero_shot_s": 30},
           "n_clicks": 3, "summary": s, "cases": [{k: v for k, v in c.items() if k != "result"} for c in cases],
           "dataset": {"id": 600, "n_cases": 24, "n_cases_evaluated": 2},
           "model": {"trainer": "ISRGTrainer_Tiny", "preset": "tiny", "trained_on": "Dataset500_ISRGPhantom",
                     "folds": ["0"], "checkpoint": "checkpoint_final.pth", "checkpoint_epoch": 30,
                     "spacing_mm": [1.5] * 3, "normalization": ["CTNormalization"], "crop_size": [20] * 3,
                     "ct_normalisation_hu": {"percentile_00_5": -300, "percentile_99_5": 600, "mean": 80, "std": 190}},
           "gpu_commands": bench.cross_validation_commands(600), "cross_validation": {"run": False}}
    md = bench.report_markdown(doc)
    assert f"| mean Dice | {s['mean_per_click']['dice'][0]:.3f} |" in md
    assert "| A |" in md and "| B |" in md and "nnUNetv2_train 600 3d_fullres F -tr ISRGTrainer -device cuda" in md


def test_cross_validation_commands(bench):
    cmds = bench.cross_validation_commands(600, folds=(0, 1), out_dir=Path("/x"))
    assert cmds[:4] == [["nnUNetv2_train", "600", "3d_fullres", f, "-tr", tr, "-device", "cuda"]
                        for tr in ("nnUNetTrainer", "ISRGTrainer") for f in ("0", "1")]
    assert cmds[-1] == ["isrg", "compare", "-d", "600", "--baseline", "nnUNetTrainer", "--trainers", "ISRGTrainer",
                        "-f", "0", "1", "--clicks", "1", "3", "5", "-device", "cuda", "-o", "/x"]


@pytest.mark.skipif(not STS_002.is_dir(), reason="real data (../shared/realdata/ibsi-sts) not present")
def test_real_sarcoma_through_the_debug_model(bench, debug_model):
    """STS_002 (0.98 x 0.98 x 3.27 mm) preprocessed with the phantom model's plans and run for 2 clicks."""
    import SimpleITK as sitk
    import torch

    from nnunet_isrg.evaluation.compare import HeldOutCase
    from nnunet_isrg.inference.model_loading import load_trained_model

    torch.set_num_threads(1)
    loaded = load_trained_model(debug_model, folds=(0,))
    case = HeldOutCase("STS_002", [str(STS_002 / "CT_image.nii.gz")], str(STS_002 / "CT_mask.nii.gz"))
    r = bench.evaluate_case(loaded, case, n_clicks=2)
    assert "error" not in r, r.get("error")

    img = sitk.ReadImage(str(STS_002 / "CT_image.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(STS_002 / "CT_mask.nii.gz"))) != 0
    raw_ml = mask.sum() * np.prod(img.GetSpacing()) / 1000
    assert r["volume_ml"] == pytest.approx(raw_ml, rel=1e-6)
    # resampled onto the *model's* grid (its spacing, not the real data's 3.27 mm slices)
    spacing = loaded.target_spacing
    expected_shape = [round(n * s / t) for n, s, t in zip(reversed(img.GetSize()), reversed(img.GetSpacing()), spacing)]
    assert np.all(np.abs(np.array(r["preprocessed_shape_zyx"]) - expected_shape) <= 1)
    assert r["evaluated_volume_ml"] == pytest.approx(raw_ml, rel=0.1)  # one component, volume kept by resampling
    # a prediction lives in one crop: its Dice never beats the bound of the lesion part inside that crop
    for d, f in zip(r["protocol"]["dice"], r["crop_fraction"]):
        assert 0.0 <= d <= bench.dice_bound(f) + 1e-9
        assert f <= r["best_crop_fraction"] + 1e-9
    assert len(r["protocol"]["dice"]) == 2 and r["n_encodes"][0] >= 1
    # the model-free reference (whole first crop) is also confined to one crop
    assert 0.0 < r["dice_whole_first_crop"] <= bench.dice_bound(r["best_crop_fraction"]) + 1e-9
