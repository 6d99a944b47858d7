"""Interactive segmentation of real soft-tissue sarcomas (IBSI STS, 24 CT cases): ``python scripts/benchmark_realdata.py``.

1. ``isrg import`` (:func:`nnunet_isrg.data.import_dataset.import_image_mask_pairs`) of
   ``../shared/realdata/ibsi-sts`` into ``$nnUNet_raw/Dataset600_IBSISTS`` (default nnU-Net folders:
   the repository's ``work/``, as ``scripts/demo.py``), then
   ``nnUNetv2_plan_and_preprocess -d 600 -c 3d_fullres -npfp 2 -np 2 --verify_dataset_integrity``
   (``--no-preprocess`` skips it; the zero-shot step below does not need it). Each step is skipped
   when its output exists.
2. Zero-shot on real CT: a model trained on the phantom only (``--model``, default the demo's
   ``ISRGTrainer_Tiny`` fold 0) runs the deterministic click protocol
   (:func:`nnunet_isrg.evaluation.protocol.run_interactive_protocol`, 5 clicks) on every case. Each
   case is preprocessed with the *model's* plans (its 1.5 mm spacing and its CT normalisation, i.e.
   the phantom's intensity statistics) by nnU-Net's ``DefaultPreprocessor``, exactly as the zero-shot
   block of ``isrg compare`` does, and predicted by
   :class:`nnunet_isrg.inference.crop_predictor.CropPredictor` (one network crop per prediction,
   shifted towards the lesion when the mask is cut by the crop border). Metrics (Dice, NSD @ 2 mm,
   HD95) are computed in that preprocessed space on the largest connected lesion component.

   These sarcomas (17-820 mL) are mostly larger than one crop (64^3 voxels at 1.5 mm = 96 mm), and
   a prediction never leaves its crop, so the script also reports per case the fraction of the
   lesion inside the crop of each prediction and the best fraction any single crop placement can
   hold, with the Dice that this caps a single-crop prediction at (``2 f / (1 + f)``), and a
   model-free reference: the Dice of taking the whole first crop as the mask.
3. Writes ``results/benchmark_realdata.json`` and ``.md``; ``--update-readme`` replaces the README
   section ``realdata-results``.

``--gpu``: additionally trains ``nnUNetTrainer`` (no clicks) and ``ISRGTrainer`` (base preset) on
the 24 real cases with nnU-Net's 5-fold cross-validation (``nnUNetv2_train 600 3d_fullres F -tr T
-device cuda``, nnU-Net's full schedules) and compares them with
``isrg compare -d 600 --baseline nnUNetTrainer --trainers ISRGTrainer -f 0 1 2 3 4 -device cuda``
(tables in ``results/benchmark_realdata_cv/``). The cases carry no attribute labels, so only the
segmentation table is meaningful there. The commands are written into the JSON in every mode.
``--cross-validate`` runs the same with ``--cv-trainers`` (no-click baseline first), ``--cv-folds``,
``--cv-clicks`` and ``--cv-device``, e.g. a CPU smoke test of that path with the debug trainers:
``--cross-validate --cv-trainers nnUNetTrainer_ISRGDebug ISRGTrainer_Debug --cv-folds 0 --cv-clicks 1 3``.

``--cases 3`` (or ``--case-ids STS_001 ...``): a smoke run on a few cases.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # the package, and script_support beside this file

from nnunet_isrg.files import write_json_atomic  # noqa: E402
from script_support import nnunet_env, run_command as run  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "realdata" / "ibsi-sts"
DEFAULT_MODEL = (REPO / "work" / "nnUNet_results" / "Dataset500_ISRGPhantom"
                 / "ISRGTrainer_Tiny__nnUNetPlans__3d_fullres")
CONFIGURATION = "3d_fullres"
README_SECTION = "realdata-results"
CV_TRAINERS = ("nnUNetTrainer", "ISRGTrainer")
CV_FOLDS = (0, 1, 2, 3, 4)
CV_CLICKS = (1, 3, 5)


# ------------------------------------------------------------------------------------------ environment
def setup_env() -> dict:
    return nnunet_env()


# ------------------------------------------------------------------------------------------ step 1: dataset
def build_raw_dataset(source: Path, raw_root: Path, dataset_id: int, name: str) -> tuple[Path, float | None]:
    """Imports ``source`` unless the dataset exists with the same cases; returns its folder and the time taken."""
    from nnunet_isrg.data.import_dataset import find_pairs, import_image_mask_pairs

    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    expected = {p.case_id for p in find_pairs(source)}
    if (folder / "dataset.json").is_file():
        have = {p.name[: -len(".nii.gz")] for p in (folder / "labelsTr").glob("*.nii.gz")}
        if have != expected:
            raise SystemExit(f"{folder} exists but holds other cases ({len(have)}, {len(expected)} expected from "
                             f"{source}); remove it or choose another --dataset-id")
        return folder, None
    print(f"\n$ isrg import {source} -d {dataset_id} -n {name} -o {raw_root}", flush=True)
    t = time.time()
    import_image_mask_pairs(source, raw_root, dataset_id, name, progress=False)
    return folder, time.time() - t


def plan_and_preprocess(dataset_id: int, preprocessed: Path, n_cases: int, n_proc: int, env: dict) -> float | None:
    """``nnUNetv2_plan_and_preprocess`` (3d_fullres) unless every case is preprocessed already."""
    done = (preprocessed / "nnUNetPlans.json").is_file() and \
        len(list((preprocessed / "nnUNetPlans_3d_fullres").glob("*.pkl"))) >= n_cases
    if done:
        return None
    bindir = Path(sys.executable).parent
    return run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", CONFIGURATION,
                "-npfp", str(n_proc), "-np", str(n_proc), "--verify_dataset_integrity"], env)


# ------------------------------------------------------------------------------------------ step 2: zero-shot
def best_single_crop_fraction(gt: np.ndarray, crop_size: Sequence[int]) -> float:
    """The largest fraction of ``gt`` (bool z,y,x) that one box of ``crop_size`` voxels can contain.

    A box sum over every placement (``scipy.ndimage.uniform_filter`` with zero padding) on the
    lesion's bounding box: the voxels outside it are zero, so the maximum is the same as over the
    whole volume.
    """
    from scipy.ndimage import uniform_filter

    gt = np.asarray(gt, dtype=bool)
    total = int(gt.sum())
    if total == 0:
        raise ValueError("best_single_crop_fraction: empty lesion mask")
    idx = np.nonzero(gt)
    box = gt[tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)]
    size = [min(int(s), n) for s, n in zip(crop_size, box.shape)]  # a box larger than the lesion sees all of it
    counts = uniform_filter(box.astype(np.float64), size=size, mode="constant", cval=0.0) * float(np.prod(size))
    return min(1.0, float(np.round(counts.max())) / total)


def fraction_inside(gt: np.ndarray, bbox: Sequence[Sequence[int]]) -> float:
    """Fraction of ``gt`` (bool z,y,x) inside ``bbox``.

    ``bbox``: [[z0, z1], [y0, y1], [x0, x1]] voxels, half open; it may reach outside the volume.
    """
    sl = tuple(slice(max(int(lo), 0), max(min(int(hi), n), 0)) for (lo, hi), n in zip(bbox, gt.shape))
    total = int(gt.sum())
    return float(gt[sl].sum()) / total if total else float("nan")


def dice_bound(fraction: float) -> float:
    """Highest Dice of a prediction confined to a region holding ``fraction`` of the lesion: 2f / (1 + f)."""
    return 2.0 * fraction / (1.0 + fraction)


def raw_lesion_stats(image_file: str, label_file: str) -> dict:
    """Lesion volume (mL, all lesion voxels) and mean/median attenuation (HU) in the raw image."""
    import SimpleITK as sitk

    lab = sitk.ReadImage(label_file)
    mask = sitk.GetArrayViewFromImage(lab) > 0
    hu = sitk.GetArrayViewFromImage(sitk.ReadImage(image_file))[mask]
    voxel_ml = float(np.prod(lab.GetSpacing())) / 1000.0
    return {"volume_ml": float(mask.sum()) * voxel_ml, "mean_hu": float(hu.mean()) if hu.size else None,
            "median_hu": float(np.median(hu)) if hu.size else None,
            "raw_spacing_zyx_mm": [float(s) for s in reversed(lab.GetSpacing())],
            "raw_shape_zyx": list(reversed(lab.GetSize()))}


def evaluate_case(loaded, case, n_clicks: int, device: str = "cpu", lesion_labels: Sequence[int] = (1,)) -> dict:
    """One case through the model's preprocessing, the click protocol and the crop-coverage measures.

    ``loaded``: :class:`nnunet_isrg.inference.model_loading.LoadedModel`; ``case``:
    :class:`nnunet_isrg.evaluation.compare.HeldOutCase`; ``lesion_labels``: the label values of the
    case's label file that are lesion (the real dataset's, not the model's). Returns a JSON-able dict with the
    :class:`CaseResult` under ``protocol`` (``result`` holds the object itself).
    """
    import torch

    from nnunet_isrg.evaluation.compare import preprocess_held_out
    from nnunet_isrg.evaluation.protocol import run_interactive_protocol
    from nnunet_isrg.evaluation.metrics import dice
    from nnunet_isrg.inference.crop_predictor import CropPredictor, centred_bbox
    from nnunet_isrg.lesions import largest_lesion_component

    out = {"case": case.case_id, **raw_lesion_stats(case.image_files[0], case.label_file)}
    t = time.time()
    data, seg, _ = preprocess_held_out([case], loaded.folder, CONFIGURATION)[case.case_id]
    out["preprocess_s"] = round(time.time() - t, 2)
    spacing = loaded.target_spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    seg = np.asarray(seg[0])
    lesion_labels = [int(v) for v in lesion_labels]
    gt, label_value = largest_lesion_component(seg, lesion_labels)
    out["preprocessed_shape_zyx"] = list(gt.shape)
    if label_value == 0:
        out["error"] = "no lesion voxel left after preprocessing"
        return out
    n_lesion = int(np.isin(seg, lesion_labels).sum())
    idx = np.nonzero(gt)
    out.update(evaluated_volume_ml=float(gt.sum()) * voxel_ml,
               evaluated_component_fraction=float(gt.sum()) / n_lesion,
               extent_mm_zyx=[float((i.max() - i.min() + 1) * s) for i, s in zip(idx, spacing)])
    crop = tuple(int(s) for s in loaded.network.crop_size)
    best = best_single_crop_fraction(gt, crop)
    out.update(best_crop_fraction=best, dice_bound_single_crop=dice_bound(best))

    predictor = CropPredictor(loaded.network, loaded.schema, torch.from_numpy(np.asarray(data, dtype=np.float32)),
                              device=device)
    per_click: list[dict] = []

    def predict_fn(clicks):
        p = predictor.predict(clicks)
        per_click.append({"bbox": p.bbox, "n_encodes": p.n_encodes, "crop_fraction": fraction_inside(gt, p.bbox),
                          "pred_volume_ml": float(p.mask.sum()) * voxel_ml, "iou_pred": p.iou_pred})
        return p.mask, p.attribute_probs

    t = time.time()
    with torch.no_grad():
        result = run_interactive_protocol(predict_fn, gt, spacing, n_clicks=n_clicks, case_id=case.case_id,
                                          keep_final_mask=False)
    out["protocol_s"] = round(time.time() - t, 2)
    # Trivial reference: the whole first crop (placed as CropPredictor places it) as the mask, no model.
    box = np.zeros_like(gt)
    first = centred_bbox(result.clicks[0]["point"], crop, gt.shape)
    box[tuple(slice(max(lo, 0), max(min(hi, n), 0)) for (lo, hi), n in zip(first, gt.shape))] = True
    out["dice_whole_first_crop"] = dice(box, gt)
    while len(per_click) < n_clicks:  # the protocol carries a perfect prediction forward
        per_click.append(dict(per_click[-1], n_encodes=0))
    out.update(crop_fraction=[c["crop_fraction"] for c in per_click],
               pred_volume_ml=[c["pred_volume_ml"] for c in per_click],
               crop_bbox=[c["bbox"] for c in per_click], n_encodes=[c["n_encodes"] for c in per_click],
               iou_pred=[c["iou_pred"] for c in per_click],
               protocol=result.to_dict(), result=result)
    return out


def model_info(loaded, checkpoint: str) -> dict:
    """What the evaluated model is: folder, trainer, training data, spacing, crop, normalisation, epoch."""
    import torch

    cm = loaded.configuration_manager
    props = loaded.plans_manager.plans.get("foreground_intensity_properties_per_channel", {}).get("0", {})
    epoch = None
    for f in loaded.folds:
        saved = torch.load(loaded.folder / ("fold_all" if f == "all" else f"fold_{f}") / checkpoint,
                           map_location="cpu", weights_only=False)
        epoch = saved.get("current_epoch") if isinstance(saved, dict) else None
        del saved
    return {"folder": str(loaded.folder), "trainer": loaded.folder.name.split("__")[0],
            "trained_on": loaded.folder.parent.name, "folds": [str(f) for f in loaded.folds],
            "checkpoint": checkpoint, "checkpoint_epoch": epoch, "preset": loaded.isrg_block.get("preset"),
            "crop_size": list(loaded.crop_size), "spacing_mm": loaded.target_spacing,
            "normalization": list(cm.normalization_schemes),
            "ct_normalisation_hu": {k: props.get(k) for k in ("percentile_00_5", "percentile_99_5", "mean", "std")}}


def summarise(cases: list[dict], n_clicks: int) -> dict:
    """Protocol summary (summarise_cases) plus the mean crop coverage per click over the evaluated cases."""
    from nnunet_isrg.evaluation.protocol import summarise_cases
    from nnunet_isrg.files import json_safe

    ok = [c for c in cases if "result" in c]
    if not ok:
        return {"n_cases": 0, "n_failed": len(cases)}
    s = summarise_cases([c["result"] for c in ok])
    s["mean_crop_fraction_per_click"] = [float(np.mean([c["crop_fraction"][k] for c in ok])) for k in range(n_clicks)]
    s["mean_pred_volume_ml_per_click"] = [float(np.mean([c["pred_volume_ml"][k] for c in ok])) for k in range(n_clicks)]
    s["mean_evaluated_volume_ml"] = float(np.mean([c["evaluated_volume_ml"] for c in ok]))
    s["mean_dice_whole_first_crop"] = float(np.mean([c["dice_whole_first_crop"] for c in ok]))
    s["mean_best_crop_fraction"] = float(np.mean([c["best_crop_fraction"] for c in ok]))
    s["mean_dice_bound_single_crop"] = float(np.mean([c["dice_bound_single_crop"] for c in ok]))
    s["n_lesions_larger_than_crop"] = int(sum(c["best_crop_fraction"] < 1.0 for c in ok))
    s["n_failed"] = len(cases) - len(ok)
    return json_safe(s)


# ------------------------------------------------------------------------------------------ --gpu / --cross-validate
def cross_validation_commands(dataset_id: int, folds: Sequence[int] = CV_FOLDS, trainers: Sequence[str] = CV_TRAINERS,
                              out_dir: Path | None = None, device: str = "cuda",
                              clicks: Sequence[int] = CV_CLICKS) -> list[list[str]]:
    """The training and comparison commands of the real-data cross-validation (run by ``--gpu``).

    ``trainers[0]`` is the no-click baseline (an nnU-Net trainer), the others are ISRG trainers.
    """
    if len(trainers) < 2:
        raise ValueError(f"cross-validation needs a baseline and at least one ISRG trainer, got {list(trainers)}")
    cmds = [["nnUNetv2_train", str(dataset_id), CONFIGURATION, str(f), "-tr", tr, "-device", device]
            for tr in trainers for f in folds]
    cmd = ["isrg", "compare", "-d", str(dataset_id), "--baseline", trainers[0], "--trainers", *trainers[1:],
           "-f", *map(str, folds), "--clicks", *map(str, clicks), "-device", device]
    if out_dir is not None:
        cmd += ["-o", str(out_dir)]
    return cmds + [cmd]


def run_cross_validation(dataset_id: int, results_root: Path, out_dir: Path, env: dict,
                         folds: Sequence[int] = CV_FOLDS, trainers: Sequence[str] = CV_TRAINERS,
                         device: str = "cuda", clicks: Sequence[int] = CV_CLICKS) -> dict:
    """Trains the folds not trained yet (``nnUNetv2_train``), then ``isrg compare``; returns timings and the tables."""
    bindir = Path(sys.executable).parent
    timings = {}
    for cmd in cross_validation_commands(dataset_id, folds, trainers, out_dir, device, clicks):
        exe = [str(bindir / cmd[0]), *cmd[1:]]
        if cmd[0] == "nnUNetv2_train":
            tr, fold = cmd[5], cmd[3]
            fold_dir = results_root / f"{tr}__nnUNetPlans__{CONFIGURATION}" / f"fold_{fold}"
            validated = any((fold_dir / "validation" / f).is_file()
                            for f in ("summary.json", "interactive_summary.json"))
            if (fold_dir / "checkpoint_final.pth").is_file() and validated:
                continue
            if (fold_dir / "checkpoint_latest.pth").is_file():
                exe.append("--c")
            timings[f"{tr}_fold{fold}_s"] = round(run(exe, env), 1)
        else:
            timings["compare_s"] = round(run(exe, env), 1)
    md = out_dir / "comparison.md"
    return {"run": True, "trainers": list(trainers), "folds": list(folds), "device": device,
            "timings_s": timings, "out_dir": str(out_dir),
            "comparison": json.loads((out_dir / "comparison.json").read_text())
            if (out_dir / "comparison.json").is_file() else None,
            "comparison_markdown": md.read_text() if md.is_file() else None}


# ------------------------------------------------------------------------------------------ report
def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def report_markdown(doc: dict) -> str:
    m, s, n = doc["model"], doc["summary"], doc["n_clicks"]
    norm = m["ct_normalisation_hu"]
    lines = [
        f"Produced by `{doc['command']}` on {doc['generated'][:10]} ({doc['machine']['cpus']} CPU cores, "
        f"{doc['machine']['device']}, torch {doc['machine']['torch']}); run time {doc['run_time_s'] / 60:.1f} min "
        f"(zero-shot evaluation {doc['timings_s'].get('zero_shot_s', 0) / 60:.1f} min).",
        "",
        f"**Zero-shot on real CT.** Model `{m['trainer']}` (preset `{m['preset']}`) trained on the synthetic "
        f"phantom `{m['trained_on']}` only, fold(s) {', '.join(m['folds'])}, `{m['checkpoint']}`"
        + (f" (epoch {m['checkpoint_epoch']})" if m["checkpoint_epoch"] is not None else "")
        + f"; no real case was seen in training. Data: {doc['dataset']['n_cases_evaluated']} of the "
        f"{doc['dataset']['n_cases']} IBSI soft-tissue-sarcoma CT cases (TCIA Soft-tissue-Sarcoma, CC BY 3.0). "
        f"Each case is preprocessed with the model's plans: {'x'.join(_f(v, 2) for v in m['spacing_mm'])} mm, "
        f"{', '.join(m['normalization'])} with the phantom's statistics (clip {_f(norm['percentile_00_5'], 0)} to "
        f"{_f(norm['percentile_99_5'], 0)} HU, mean {_f(norm['mean'], 1)}, std {_f(norm['std'], 1)}). "
        f"Deterministic click protocol, {n} clicks, on the largest lesion component; metrics in the preprocessed "
        f"space. One prediction is one {'x'.join(map(str, m['crop_size']))}-voxel crop "
        f"({' x '.join(_f(c * sp, 0) for c, sp in zip(m['crop_size'], m['spacing_mm']))} mm), moved towards the "
        f"lesion when cut by its border.",
        "",
    ]
    if s.get("n_cases", 0) == 0:
        return "\n".join(lines + ["No case could be evaluated."]) + "\n"
    lines += ["| clicks | " + " | ".join(str(k + 1) for k in range(n)) + " |", "|---|" + "---|" * n]
    for key, label, digits in (("dice", "mean Dice", 3), ("nsd", "mean NSD @ 2 mm", 3), ("hd95", "mean HD95 (mm)", 1)):
        lines.append(f"| {label} | " + " | ".join(_f(v, digits) for v in s["mean_per_click"][key]) + " |")
    lines.append("| mean lesion fraction inside the crop | "
                 + " | ".join(_f(v, 3) for v in s["mean_crop_fraction_per_click"]) + " |")
    lines.append(f"| mean predicted volume (mL; lesions {_f(s['mean_evaluated_volume_ml'], 0)}) | "
                 + " | ".join(_f(v, 1) for v in s["mean_pred_volume_ml_per_click"]) + " |")
    lines += ["",
              f"{s['n_lesions_larger_than_crop']} of {s['n_cases']} lesions do not fit in one crop: the best single "
              f"crop placement holds on average {_f(s['mean_best_crop_fraction'])} of the lesion, which caps the Dice "
              f"of any one-crop prediction at {_f(s['mean_dice_bound_single_crop'])} on average (2f/(1+f)). "
              f"Reference without any model: taking the whole first crop as the mask gives a mean Dice of "
              f"{_f(s['mean_dice_whole_first_crop'])}. At click {n} the predictions average "
              f"{_f(s['mean_pred_volume_ml_per_click'][-1], 1)} mL against {_f(s['mean_evaluated_volume_ml'], 0)} mL "
              f"of lesion. NoC@85: {_f(s['noc']['85']['mean'], 2)} clicks, "
              f"{s['noc']['85']['n_failed']} of {s['n_cases']} "
              f"never reach Dice 0.85 within {n} clicks."
              + (f" {s['n_failed']} case(s) failed (see the JSON)." if s.get("n_failed") else ""),
              "",
              "| case | lesion mL | extent z/y/x mm | mean HU | best crop fraction | Dice bound | "
              + " | ".join(f"Dice@{k + 1}" for k in range(n))
              + f" | crop fraction@{n} | predicted mL@{n} | whole-crop Dice | s |",
              "|---|---|---|---|---|---|" + "---|" * n + "---|---|---|---|"]
    for c in doc["cases"]:
        if "protocol" not in c:
            lines.append(f"| {c['case']} | {_f(c['volume_ml'], 0)} | failed: {c.get('error', '?')} | | | | "
                         + " | ".join("" for _ in range(n)) + " | | | | |")
            continue
        lines.append(f"| {c['case']} | {_f(c['volume_ml'], 0)} | {'/'.join(_f(e, 0) for e in c['extent_mm_zyx'])} | "
                     f"{_f(c['mean_hu'], 0)} | {_f(c['best_crop_fraction'])} | {_f(c['dice_bound_single_crop'])} | "
                     + " | ".join(_f(d) for d in c["protocol"]["dice"]) + f" | {_f(c['crop_fraction'][-1])} | "
                     f"{_f(c['pred_volume_ml'][-1], 1)} | {_f(c['dice_whole_first_crop'])} | "
                     f"{_f(c['preprocess_s'] + c['protocol_s'], 0)} |")
    cv = doc.get("cross_validation", {})
    if cv.get("comparison_markdown"):
        lines += ["", f"**Trained on the real cases** (nnU-Net cross-validation, "
                      f"folds {', '.join(map(str, cv['folds']))}, "
                      f"{cv['device']}; trainers {', '.join(f'`{t}`' for t in cv['trainers'])}; training times in the "
                      f"JSON); plots in `{cv['out_dir']}`.", "",
                  "\n".join(line for line in cv["comparison_markdown"].splitlines()
                            if not line.startswith("!["))]  # the plots' relative links only work there
    else:
        folds = " ".join(map(str, CV_FOLDS))
        lines += ["", "Training ISRG and the nnU-Net UNet on these cases (5-fold cross-validation) needs a GPU and was "
                      "not run here: `python scripts/benchmark_realdata.py --gpu` runs "
                  + ", ".join(f"`nnUNetv2_train {doc['dataset']['id']} {CONFIGURATION} F -tr {tr} -device cuda`"
                              for tr in CV_TRAINERS)
                  + f" for F in {folds}, then `isrg compare -d {doc['dataset']['id']} --baseline {CV_TRAINERS[0]} "
                    f"--trainers {' '.join(CV_TRAINERS[1:])} -f {folds} --clicks {' '.join(map(str, CV_CLICKS))} "
                    f"-device cuda`."]
    return "\n".join(lines) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="folder with STS_XXX/CT_image.nii.gz + CT_mask.nii.gz")
    p.add_argument("--dataset-id", type=int, default=600)
    p.add_argument("--name", default="IBSISTS")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="trained ISRG model folder (Trainer__Plans__3d_fullres)")
    p.add_argument("--fold", nargs="+", default=["0"], help="fold(s) of --model (several are ensembled)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--cases", type=int, default=None, help="only the first N cases (sorted by id), a smoke run")
    p.add_argument("--case-ids", nargs="+", default=None, help="only these cases (e.g. STS_001)")
    p.add_argument("--no-preprocess", action="store_true",
                   help="skip nnU-Net planning/preprocessing of the real dataset (only --gpu training needs it)")
    p.add_argument("-np", "--n-proc", type=int, default=2, help="processes for nnU-Net planning/preprocessing")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the zero-shot evaluation")
    p.add_argument("--device", default="cpu", help="device of the zero-shot evaluation")
    p.add_argument("--gpu", action="store_true",
                   help="also train nnUNetTrainer and ISRGTrainer on the real cases (5 folds, CUDA) and compare "
                        "(= --cross-validate --cv-device cuda)")
    p.add_argument("--cross-validate", action="store_true",
                   help="train --cv-trainers on the real cases and compare them (isrg compare)")
    p.add_argument("--cv-trainers", nargs="+", default=list(CV_TRAINERS),
                   help="no-click baseline first, then ISRG trainer(s) (default: %(default)s); e.g. "
                        "nnUNetTrainer_ISRGDebug ISRGTrainer_Debug for a CPU smoke run")
    p.add_argument("--cv-folds", nargs="+", type=int, default=list(CV_FOLDS))
    p.add_argument("--cv-clicks", nargs="+", type=int, default=list(CV_CLICKS),
                   help="clicks in the comparison table (default %(default)s; the debug trainers validate 3)")
    p.add_argument("--cv-device", default=None, help="device for training (default cuda with --gpu, else cpu)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmark_realdata.json"))
    p.add_argument("--update-readme", action="store_true", help=f"replace the README section '{README_SECTION}'")
    args = p.parse_args(argv)
    subset = args.cases is not None or args.case_ids is not None
    if args.update_readme and subset:
        raise SystemExit("--update-readme with --cases/--case-ids would publish a partial table; run on all cases")
    cross_validate = args.gpu or args.cross_validate
    cv_device = args.cv_device or ("cuda" if args.gpu else "cpu")
    if cross_validate and args.no_preprocess:
        raise SystemExit("--gpu/--cross-validate train on the preprocessed real dataset; drop --no-preprocess")
    if cross_validate and len(args.cv_trainers) < 2:
        raise SystemExit(f"--cv-trainers needs a no-click baseline and at least one ISRG trainer, "
                         f"got {args.cv_trainers}")
    if cross_validate and cv_device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device visible to torch; the real-data cross-validation needs a GPU "
                             "(--cross-validate --cv-device cpu with the debug trainers runs a CPU smoke test)")

    t0 = time.time()
    env = setup_env()
    import torch

    torch.set_num_threads(max(1, args.threads))
    from nnunet_isrg.attributes import lesion_labels_from_dataset_json
    from nnunet_isrg.evaluation.compare import HeldOutCase
    from nnunet_isrg.inference.model_loading import load_trained_model

    timings: dict[str, float] = {}
    raw, dt = build_raw_dataset(Path(args.source), Path(env["nnUNet_raw"]), args.dataset_id, args.name)
    if dt is not None:
        timings["import_s"] = dt
    all_ids = sorted(f.name[: -len(".nii.gz")] for f in (raw / "labelsTr").glob("*.nii.gz"))
    if not args.no_preprocess:
        dt = plan_and_preprocess(args.dataset_id, Path(env["nnUNet_preprocessed"]) / raw.name, len(all_ids),
                                 args.n_proc, env)
        if dt is not None:
            timings["plan_preprocess_s"] = dt

    ids = all_ids
    if args.case_ids:
        unknown = sorted(set(args.case_ids) - set(all_ids))
        if unknown:
            raise SystemExit(f"--case-ids {unknown} not in {raw / 'labelsTr'}; available: {all_ids}")
        ids = [c for c in all_ids if c in set(args.case_ids)]
    if args.cases is not None:
        ids = ids[: args.cases]
    cases = [HeldOutCase(c, [str(raw / "imagesTr" / f"{c}_0000.nii.gz")], str(raw / "labelsTr" / f"{c}.nii.gz"))
             for c in ids]

    lesion_labels = lesion_labels_from_dataset_json(json.loads((raw / "dataset.json").read_text()))
    loaded = load_trained_model(args.model, folds=args.fold, checkpoint=args.checkpoint, device=args.device)
    info = model_info(loaded, args.checkpoint)
    print(f"\nzero-shot: {info['trainer']} ({info['trained_on']}, {args.checkpoint}, epoch {info['checkpoint_epoch']}) "
          f"on {len(cases)} real case(s), {args.clicks} clicks", flush=True)
    t = time.time()
    results = []
    for c in cases:
        try:
            r = evaluate_case(loaded, c, args.clicks, args.device, lesion_labels)
        except Exception as e:  # one bad case is reported, not the end of the benchmark
            r = {"case": c.case_id, "volume_ml": None, "error": f"{type(e).__name__}: {e}"}
        results.append(r)
        dice = " ".join(_f(d) for d in r["protocol"]["dice"]) if "protocol" in r else r.get("error")
        print(f"  {c.case_id}: {_f(r.get('volume_ml'), 0)} mL, "
              f"best crop fraction {_f(r.get('best_crop_fraction'), 2)}, "
              f"Dice per click {dice} ({_f(r.get('preprocess_s', 0) + r.get('protocol_s', 0), 1)} s)", flush=True)
    timings["zero_shot_s"] = time.time() - t
    command = "python scripts/benchmark_realdata.py" + (" --gpu" if args.gpu else "")
    if args.cross_validate:
        command += " --cross-validate"
        if args.cv_trainers != list(CV_TRAINERS):
            command += " --cv-trainers " + " ".join(args.cv_trainers)
        if args.cv_folds != list(CV_FOLDS):
            command += " --cv-folds " + " ".join(map(str, args.cv_folds))
        if args.cv_clicks != list(CV_CLICKS):
            command += " --cv-clicks " + " ".join(map(str, args.cv_clicks))
        if args.cv_device:
            command += f" --cv-device {args.cv_device}"
    if args.cases is not None:
        command += f" --cases {args.cases}"
    if args.case_ids:
        command += " --case-ids " + " ".join(args.case_ids)
    if Path(args.model).resolve() != DEFAULT_MODEL.resolve():
        command += f" --model {args.model}"
    if args.checkpoint != "checkpoint_final.pth":
        command += f" --checkpoint {args.checkpoint}"
    out_json = Path(args.out)
    cv_dir = out_json.with_name(out_json.stem + "_cv")
    doc = {
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": args.device, "torch_threads": torch.get_num_threads()},
        "dataset": {"id": args.dataset_id, "raw": str(raw), "source": str(Path(args.source).resolve()),
                    "n_cases": len(all_ids), "n_cases_evaluated": len(cases), "cases": ids},
        "model": info,
        "n_clicks": args.clicks,
        "summary": summarise(results, args.clicks),
        "cases": [{k: v for k, v in r.items() if k != "result"} for r in results],
        "timings_s": {},
        "run_time_s": None,
        "run_time_note": "this invocation only; steps whose outputs existed were skipped",
        "gpu_commands": cross_validation_commands(args.dataset_id, out_dir=cv_dir),
        "cross_validation": {"run": False, "reason": "needs --gpu (CUDA); see gpu_commands"},
    }

    def write(doc: dict) -> str:
        doc["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
        doc["run_time_s"] = round(time.time() - t0, 1)
        write_json_atomic(out_json, doc)
        md = report_markdown(doc)
        write_text_atomic(out_json.with_suffix(".md"), md)
        print(f"\nwrote {out_json} and {out_json.with_suffix('.md')} (run time {doc['run_time_s'] / 60:.1f} min)")
        return md

    md = write(doc)  # the zero-shot results are kept even if the cross-validation fails
    s = doc["summary"]
    if s.get("n_cases"):
        print("mean Dice per click: " + " ".join(_f(v) for v in s["mean_per_click"]["dice"])
              + f"; mean best crop fraction {_f(s['mean_best_crop_fraction'])}")
    rc = 0
    if cross_validate:
        t = time.time()
        try:
            doc["cross_validation"] = run_cross_validation(
                args.dataset_id, Path(env["nnUNet_results"]) / raw.name, cv_dir, env, args.cv_folds,
                args.cv_trainers, cv_device, args.cv_clicks)
        except subprocess.CalledProcessError as e:
            doc["cross_validation"] = {"run": True, "error": f"command failed with status {e.returncode}: "
                                                             f"{' '.join(map(str, e.cmd))}"}
            print(f"cross-validation failed: {doc['cross_validation']['error']}", file=sys.stderr)
            rc = 1
        timings["cross_validation_s"] = time.time() - t
        md = write(doc)
        if rc:
            return rc

    if args.update_readme:
        from script_support import replace_readme_section

        if not replace_readme_section(README_SECTION, md):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
