"""scripts/benchmark_realdata.py: crop-coverage measures against brute-force / analytic oracles, the
summary and report on protocol results, one real sarcoma through a trained (debug) model, and the whole
real-data comparison (import, plan, training, isrg compare, README-style report) run end to end with
the debug trainers on a few real sarcomas and nodules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
from nnunet_isrg.evaluation.metrics import dice
from nnunet_isrg.evaluation.protocol import run_interactive_protocol

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
STS_002 = REALDATA / "ibsi-sts" / "STS_002"
HAVE_REALDATA = (REALDATA / "ibsi-sts").is_dir() and (REALDATA / "lidc-nodules" / "nodules.csv").is_file()


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
                     "ct_normalisation_hu": {"percentile_00_5": -300, "percentile_99_5": 600, "mean": 80, "std": 190}}}
    md = bench.report_markdown(doc)
    assert f"| mean Dice | {s['mean_per_click']['dice'][0]:.3f} |" in md
    assert "| A |" in md and "| B |" in md and "the next section" in md


def test_pipeline_commands_of_the_full_run(bench):
    args = bench.parse_args([])
    assert args.trainer == "ISRGTrainer_Tiny_20epochs" and args.baseline_trainer == "nnUNetTrainer_CPUBudget"
    sts = bench.pipeline_commands(bench.DATASETS["sts"], args)
    assert sts[0] == ["isrg", "import", str(REALDATA / "ibsi-sts"), "-d", "600", "-n", "IBSISTS"]
    assert sts[1] == ["isrg", "plan", "-d", "600", "--preset", "tiny", "-np", "2", "-npfp", "2"]
    assert sts[2:8] == [["nnUNetv2_train", "600", "3d_fullres", str(f), "-tr", tr, "-p", "nnUNetISRGPlans", "-device",
                         "cpu"] for tr, f in [("ISRGTrainer_Tiny_20epochs", f) for f in range(5)]
                        + [("nnUNetTrainer_CPUBudget", 0)]]
    # all folds without the UNet (trained on fold 0 only), then fold 0 with it
    assert sts[8][:13] == ["isrg", "compare", "-d", "600", "-p", "nnUNetISRGPlans", "--baseline", "--trainers",
                           "ISRGTrainer_Tiny_20epochs", "-f", "0", "1", "2"]
    assert "--classical-baseline" in sts[8] and "--attribute-baseline" not in sts[8]
    assert sts[9][6:12] == ["--baseline", "nnUNetTrainer_CPUBudget", "--trainers", "ISRGTrainer_Tiny_20epochs",
                            "-f", "0"]
    nodules = bench.pipeline_commands(bench.DATASETS["nodules"], args)
    assert nodules[0][-1] == "--lidc" and "--attribute-baseline" in nodules[-1]
    # a UNet trained on every fold joins the one comparison
    both = bench.parse_args(["--folds", "0", "1", "--baseline-folds", "0", "1"])
    assert [b["block"] for b in bench.compare_blocks(both.folds, both.baseline_folds)] == ["all_folds"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--folds", "0", "--baseline-folds", "1"])


@pytest.mark.skipif(not HAVE_REALDATA, reason="real data (../shared/realdata) not present")
def test_smoke_selection_spreads_nodules_over_patients(bench):
    from nnunet_isrg.data.lidc import patient_of

    nodules = bench.select_cases(bench.DATASETS["nodules"], 10)
    assert len(nodules) == 10 and len({patient_of(c) for c in nodules}) >= 5
    assert max(sum(patient_of(c) == p for c in nodules) for p in map(patient_of, nodules)) <= 2
    assert len({patient_of(c) for c in bench.select_cases(bench.DATASETS["nodules"], 6)}) == 6
    assert bench.select_cases(bench.DATASETS["sts"], 3) == ["STS_001", "STS_002", "STS_004"]
    assert bench.select_cases(bench.DATASETS["sts"], None) is None


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
    # a prediction lives in its region: its Dice never beats the bound of the lesion part inside it
    for d, f, zoom in zip(r["protocol"]["dice"], r["crop_fraction"], r["zoom"]):
        assert 0.0 <= d <= bench.dice_bound(f) + 1e-9
        assert zoom > 1.0 or f <= r["best_crop_fraction"] + 1e-9  # one crop holds at most the best placement
    assert len(r["protocol"]["dice"]) == 2 and r["n_encodes"][0] >= 1
    # the model-free reference (whole first crop) is also confined to one crop
    assert 0.0 < r["dice_whole_first_crop"] <= bench.dice_bound(r["best_crop_fraction"]) + 1e-9


def _row(md: str, start: str) -> list[str]:
    hits = [line for line in md.splitlines() if line.startswith(start)]
    assert hits, f"no row starting {start!r}"
    return [c.strip() for c in hits[0].strip("|").split("|")]


def _mean(cell: str) -> float:
    return float(cell.split("±")[0])


@pytest.mark.skipif(not HAVE_REALDATA, reason="real data (../shared/realdata) not present")
def test_end_to_end_smoke_run_on_real_cases(bench, debug_model, nnunet_dirs, tmp_path):
    """6 sarcomas and 10 nodules (5 patients), fold 0, 3 clicks, the debug trainers: every step of the real
    run, in smoke datasets of their own; a second run skips every step."""
    import json
    import time

    out = tmp_path / "bench.json"
    argv = ["--cases", "6", "10", "--trainer", "ISRGTrainer_Debug", "--baseline-trainer", "nnUNetTrainer_ISRGDebug",
            "--folds", "0", "--clicks", "1", "2", "3", "--model", str(debug_model), "--out", str(out)]
    t0 = time.time()
    assert bench.main(argv) == 0
    print(f"\n[test_realdata_script] smoke run of the real-data comparison: {time.time() - t0:.0f} s")
    raw = nnunet_dirs["nnUNet_raw"]
    assert not (raw / "Dataset600_IBSISTS").exists() and not (raw / "Dataset601_LIDCNodules").exists()
    summary = json.loads((tmp_path / "bench_cv" / "summary.json").read_text())
    md = (tmp_path / "bench_cv" / "summary.md").read_text()
    assert [d["dataset"] for d in summary["datasets"]] == ["Dataset960_IBSISTSSmoke", "Dataset961_LIDCNodulesSmoke"]
    sts, nodules = summary["datasets"]
    assert sts["n_cases"] == 6 and nodules["n_cases"] == 10 and nodules["n_patients"] >= 5
    # the nodules' patient-grouped folds reached the trainer: no patient on both sides of fold 0
    splits = json.loads((nnunet_dirs["nnUNet_preprocessed"] / nodules["dataset"] / "splits_final.json").read_text())
    assert not {c.split("_")[0] for c in splits[0]["train"]} & {c.split("_")[0] for c in splits[0]["val"]}
    for d in (sts, nodules):
        assert [b["block"] for b in d["blocks"]] == ["all_folds"]  # the UNet is on fold 0 too
        doc = d["blocks"][0]["comparison"]
        assert [m["trainer"] for m in doc["methods"]] == ["nnUNetTrainer_ISRGDebug", "classical-baseline",
                                                          "ISRGTrainer_Debug"]
        seg = doc["validation"]["segmentation"]
        for trainer in ("nnUNetTrainer_ISRGDebug", "classical-baseline", "ISRGTrainer_Debug"):
            for k in ("1", "2", "3"):
                assert 0.0 <= seg[trainer]["dice"][k]["mean"] <= 1.0 and 0.0 <= seg[trainer]["nsd"][k]["mean"] <= 1.0
        assert doc["classical_baseline"]["per_fold"]["0"]["setting"] in doc["classical_baseline"]["settings_tried"]
        for png in ("dice_vs_clicks.png", "comparison.md", "comparison_segmentation.csv"):
            assert (Path(d["blocks"][0]["out_dir"]) / png).is_file()
        steps = {s["step"] for s in d["steps"]}
        assert {"import", "plan", "ISRG training", "UNet training", "compare"} <= steps
        assert all(s["wall_s"] is not None and s["command"] for s in d["steps"])
    # Table 2 in the report (each dataset's first table): the three methods, numbers in range
    parts = md.split("\n#### ")[1:]
    assert len(parts) == 2 and parts[0].startswith(sts["title"]) and parts[1].startswith(nodules["title"])
    for part in parts:
        table2 = part.split("**Interactive segmentation (validation)**")[1].split("\n\n")[1]
        for label in ("| nnU-Net UNet (no clicks) | `nnUNetTrainer_ISRGDebug` |",
                      "| Region growing / threshold (classical, clicks) | — |", "| ISRG (Full) | `ISRGTrainer_Debug` |"):
            cells = _row(table2, label)
            assert len(cells) == 11 and all(0.0 <= _mean(c) <= 1.0 for c in cells[2:5] + cells[8:11]), cells
    # Table 3 for the nodules only: accuracy and balanced accuracy, the attribute baseline, the majority references
    attrs = nodules["blocks"][0]["comparison"]["validation"]["attributes"]
    assert set(attrs) == {"ISRGTrainer_Debug", "attribute-baseline"}
    assert "attribute_accuracy.png" in {p.name for p in Path(nodules["blocks"][0]["out_dir"]).iterdir()}
    assert "Attribute balanced accuracy" in md and md.count("| Image measurements + random forest (non-deep) | — |") == 2
    head = _row(md, "| Method | Trainer | sphericity |")
    assert head[-1] == "Average" and "malignancy" in head
    for e in attrs["attribute-baseline"]["per_attribute"].values():
        for key in ("accuracy", "balanced_accuracy", "majority_rate"):
            assert e[key] is None or 0.0 <= e[key] <= 1.0
    assert not sts["blocks"][0]["comparison"]["validation"]["attributes"]  # the sarcomas have no attribute labels
    # the zero-shot block of the phantom model stays, as its own report and as a reference row
    zero_shot = json.loads(out.read_text())
    assert zero_shot["summary"]["n_cases"] == 6 and len(zero_shot["summary"]["mean_per_click"]["dice"]) == 3
    assert "trained on the phantom only: zero-shot" in parts[0] and "trained on the phantom" not in parts[1]
    assert "How to read these" in md and md.count("| run time | import |") == 2
    # each fold's training log: losses on the training and held-out cases, pseudo Dice, as JSON, plot and a line
    for d in (sts, nodules):
        (fold,) = d["learning_curves"]["folds"].values()
        assert len(fold["train_loss"]) == len(fold["val_loss"]) == len(fold["pseudo_dice"]) >= 1
        assert all(0.0 <= v <= 1.0 for v in fold["pseudo_dice"]) and Path(d["learning_curves"]["png"]).is_file()
    assert md.count("**Learning curves**") == 2
    # the CVPR 2025 protocol (box first) beside the click protocol, for each dataset
    for d, part in zip((sts, nodules), parts):
        (row,) = d["blocks"][0]["comparison"]["cvpr25"]
        assert row["trainer"] == "ISRGTrainer_Debug" and len(row["dice"]) == 4  # the box, then 3 clicks
        assert "**CVPR 2025 interactive protocol (validation)**" in part
        # the quality targets, from the pooled Dice after every click and the box protocol
        t = d["targets"]
        assert t["n_clicks"] == 3 and t["dice_1"] == pytest.approx(row["click_protocol_dice"][0])
        assert t["box_gain"] == pytest.approx(row["dice"][0] - row["click_protocol_dice"][0])
        assert t["never_falls"] == all(b >= a - 1e-9 for a, b in zip(row["click_protocol_dice"],
                                                                     row["click_protocol_dice"][1:]))
        assert f"**Targets** (ISRG, folds 0 pooled, {row['n_cases']} held-out cases): Dice after 1 click" in part

    # the README: a run of the sarcomas alone rewrites their section and leaves the nodules' as it was
    readme = tmp_path / "README.md"
    readme.write_text("".join(f"<!-- BEGIN {k} -->\nold {k}\n<!-- END {k} -->\n"
                              for k in ("realdata-results", "realdata-cv", "realdata-cv-sts", "realdata-cv-nodules")))
    sts_only = {**summary, "datasets": [sts]}
    assert bench.update_readme(sts_only, tmp_path / "bench_cv", out, readme, tmp_path / "figures")
    text = readme.read_text()
    assert "old realdata-cv-nodules" in text and "old realdata-cv-sts" not in text and "old realdata-cv\n" not in text
    sts_part = text.split("<!-- BEGIN realdata-cv-sts -->")[1].split("<!-- END realdata-cv-sts -->")[0]
    assert sts_part.lstrip().startswith(f"#### {sts['title']}") and "](figures/" in sts_part
    assert "old realdata-results" not in text  # the zero-shot block ran in this smoke run

    # every output exists: a second run skips each step and reports the same tables
    t0 = time.time()
    assert bench.main(argv) == 0
    again = json.loads((tmp_path / "bench_cv" / "summary.json").read_text())
    assert all(s["skipped"] for s in again["steps"]), [s["command"] for s in again["steps"] if not s["skipped"]]
    assert again["total_s"] == pytest.approx(summary["total_s"], abs=1.0)  # earlier wall times, from the ledger
    assert time.time() - t0 < 120
