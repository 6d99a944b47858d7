"""Real CT lesions: cross-validation of ISRG against the UNet and the classical baseline, and the
phantom model's zero-shot on the sarcomas: ``python scripts/benchmark_realdata.py``.

One command runs, for each dataset of ``--datasets`` (``sts``: the 24 IBSI soft-tissue sarcomas,
``../shared/realdata/ibsi-sts`` -> ``Dataset600_IBSISTS``; ``nodules``: the 799 LIDC-IDRI lung nodules
of 436 patients, ``../shared/realdata/lidc-nodules`` -> ``Dataset601_LIDCNodules``, with the
radiologists' binned ratings as attributes and patient-grouped folds), each step echoed, timed and
skipped when its output exists:

1. ``isrg import SOURCE -d ID -n NAME [--lidc]``;
2. ``isrg plan -d ID --preset tiny`` (plans ``nnUNetISRGPlans``: isotropic spacing, 64^3 crop;
   carries the raw ``splits_final.json`` and ``attributesTr.json`` to the preprocessed folder);
3. ``nnUNetv2_train ID 3d_fullres F -tr TRAINER -p nnUNetISRGPlans -device cpu`` for every fold of
   ``--folds`` (default 0-4; ``--trainer``, default ``ISRGTrainer_Tiny_20epochs``, 20 x 50
   iterations, about 9 min per fold on 2 cores: 5 folds of ``ISRGTrainer_Tiny``'s 36 epochs on
   both datasets would take about 3 h of training alone);
4. the same with the UNet baseline (``--baseline-trainer``, default ``nnUNetTrainer_CPUBudget``,
   400 iterations at half width, about an hour per fold on 2 cores) on ``--baseline-folds``
   (default 0);
5. ``isrg compare -d ID -p nnUNetISRGPlans --trainers TRAINER ... --classical-baseline``
   (``--attribute-baseline`` for the nodules): Table 2 (Dice, HD95, NSD at ``--clicks``), Table 3
   (accuracy and balanced accuracy per attribute with the majority-class rates), the CVPR 2025
   protocol's table (``--protocol cvpr25``: the lesion's box first, then clicks, beside the click
   protocol), the Dice-per-click and accuracy plots and ``comparison.json``. All folds without the UNet when it was trained on
   fewer folds, and the UNet's folds with it.

Before that, for the sarcomas, the zero-shot block (kept from the first version of this script,
``--no-zero-shot`` leaves it out): a model trained on the phantom only (``--model``, default the
demo's ``ISRGTrainer_Tiny`` fold 0; skipped when it does not exist) runs the deterministic click
protocol (:func:`nnunet_isrg.evaluation.protocol.run_interactive_protocol`) on every case,
preprocessed with the *model's* plans (its 1.5 mm spacing and its CT normalisation, i.e. the
phantom's intensity statistics) by nnU-Net's ``DefaultPreprocessor`` and predicted by
:class:`nnunet_isrg.inference.lesion_predictor.LesionPredictor` (the crop at the clicks, zoomed
out while the lesion leaves it); metrics (Dice, NSD @ 2 mm, HD95) in that preprocessed space on
the largest connected lesion component. These sarcomas (17-820 mL) are mostly larger than one crop
(64^3 voxels at 1.5 mm = 96 mm), so the block also reports per case the fraction of the lesion
inside the region each prediction covered and its zoom, the best fraction any single crop
placement can hold with the Dice that this caps a single-crop prediction at (``2 f / (1 + f)``),
and a model-free reference: the Dice of taking the whole first crop as the mask.

Outputs: ``results/benchmark_realdata.json`` and ``.md`` (zero-shot), and in
``results/benchmark_realdata_cv/``: ``summary.json`` / ``summary.md`` (every dataset's tables, the
steps with their commands and wall times), ``DATASET/learning_curves.json`` / ``.png`` (each ISRG fold's
training log: losses on the training and held-out cases, held-out pseudo Dice), ``DATASET/all_folds/`` and ``DATASET/baseline_folds/``
(``isrg compare``'s tables, CSV, plots, JSON) and ``steps_ledger.json`` (the wall time of each
step when it ran, so a rerun that skips it still reports it). ``--update-readme`` replaces the
README sections ``realdata-results`` (zero-shot), ``realdata-cv`` (how to read the tables) and
``realdata-cv-sts`` / ``realdata-cv-nodules`` (one per dataset run, so that the datasets can be run by
separate invocations, e.g. on separate days) and copies the plots to ``docs/figures/benchmark_realdata/``.

``--cases N [M]``: a smoke run on the first N cases of each dataset (or N sarcomas and M nodules;
the nodules are spread over at least 5 patients, at most N // 5 per patient, so that 5
patient-grouped folds exist). It builds its own small datasets under ids 960 and 961
(``Dataset960_IBSISTSSmoke``, ``Dataset961_LIDCNodulesSmoke``, rebuilt when the cases change) and
never touches the full Dataset600/601; its outputs go to ``results/benchmark_realdata_smoke*``.
A test runs it with the debug trainers:
``--cases 6 10 --trainer ISRGTrainer_Debug --baseline-trainer nnUNetTrainer_ISRGDebug --folds 0 --clicks 1 2 3``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # the package, and script_support beside this file

from nnunet_isrg.files import write_json_atomic  # noqa: E402
from script_support import StepLog, nnunet_env  # noqa: E402

REALDATA = REPO.parent / "shared" / "realdata"
DEFAULT_MODEL = (REPO / "work" / "nnUNet_results" / "Dataset500_ISRGPhantom"
                 / "ISRGTrainer_Tiny__nnUNetPlans__3d_fullres")
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetISRGPlans"
README_SECTION = "realdata-results"
DEFAULT_TRAINER = "ISRGTrainer_Tiny_20epochs"
DEFAULT_BASELINE = "nnUNetTrainer_CPUBudget"
FIGURES_DIR = REPO / "docs" / "figures" / "benchmark_realdata"
SMOKE_MARKER = "benchmark_realdata_smoke.json"  # in a smoke dataset's raw folder: made by this script


class RealDataset(NamedTuple):
    key: str
    title: str
    source: Path
    dataset_id: int
    name: str
    lidc: bool
    smoke_id: int

    @property
    def image_glob(self) -> str:
        return "*/image.nii.gz" if self.lidc else "*/CT_image.nii.gz"

    @property
    def mask_name(self) -> str:
        return "mask.nii.gz" if self.lidc else "CT_mask.nii.gz"


DATASETS = {
    "sts": RealDataset("sts", "Soft-tissue sarcomas (IBSI STS, TCIA Soft-tissue-Sarcoma, CC BY 3.0)",
                       REALDATA / "ibsi-sts", 600, "IBSISTS", False, 960),
    "nodules": RealDataset("nodules", "Lung nodules (LIDC-IDRI, CC BY 3.0; ratings merged by majority vote)",
                           REALDATA / "lidc-nodules", 601, "LIDCNodules", True, 961),
}


# ------------------------------------------------------------------------------------------ environment
def setup_env() -> dict:
    """nnU-Net's variables (script_support.nnunet_env) and the environment's bin folder first on PATH,
    so the commands run (and are echoed) as a user types them: ``isrg ...``, ``nnUNetv2_train ...``."""
    env = nnunet_env()
    bindir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


# ------------------------------------------------------------------------------------------ cases
def source_cases(spec: RealDataset) -> list[str]:
    """The source case names (folders) of a dataset, sorted."""
    return sorted(p.parent.name for p in spec.source.glob(spec.image_glob))


def select_cases(spec: RealDataset, n: int | None) -> list[str] | None:
    """None (every case), or the first ``n`` cases; nodules at most ``n // 5`` per patient, so that
    ``n`` >= 5 nodules span at least 5 patients (5 patient-grouped folds)."""
    if n is None:
        return None
    names = source_cases(spec)
    if not spec.lidc:
        return names[:n]
    from nnunet_isrg.data.lidc import patient_of

    if n < 5:
        raise SystemExit(f"--cases {n} for the nodules: 5 patient-grouped folds need at least 5 nodules")
    per_patient, taken, out = max(1, n // 5), {}, []
    for c in names:
        p = patient_of(c)
        if taken.get(p, 0) < per_patient:
            taken[p] = taken.get(p, 0) + 1
            out.append(c)
            if len(out) == n:
                break
    return out


def expected_case_ids(spec: RealDataset, names: Sequence[str] | None) -> list[str]:
    from nnunet_isrg.data.import_dataset import find_pairs

    return [p.case_id for p in find_pairs(spec.source, spec.image_glob, spec.mask_name, cases=names)]


def dataset_identity(spec: RealDataset, smoke: bool) -> tuple[int, str]:
    """(id, DatasetNNN_Name): the full dataset, or this script's own smoke dataset."""
    if smoke:
        return spec.smoke_id, f"Dataset{spec.smoke_id:03d}_{spec.name}Smoke"
    return spec.dataset_id, f"Dataset{spec.dataset_id:03d}_{spec.name}"


def _labels(raw: Path) -> set[str]:
    return {p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz")}


def check_existing_dataset(raw: Path, expected: Sequence[str], smoke: bool, env: dict) -> bool:
    """True when ``raw`` holds the expected cases already. A smoke dataset of this script holding other
    cases is removed (raw, preprocessed and results); any other mismatch stops the run."""
    if not (raw / "dataset.json").is_file():
        leftovers = [Path(env[v]) / raw.name for v in ("nnUNet_preprocessed", "nnUNet_results")
                     if (Path(env[v]) / raw.name).exists()]
        if leftovers and not smoke:
            raise SystemExit(f"{leftovers} exist without the raw dataset {raw}; remove them or import it yourself")
        for folder in leftovers:  # a smoke run interrupted before its import finished
            shutil.rmtree(folder)
        return False
    have = _labels(raw)
    if have == set(expected):
        return True
    if smoke and (raw / SMOKE_MARKER).is_file():
        print(f"\n{raw.name}: made by an earlier smoke run for other cases; removing it (raw, preprocessed, results)")
        for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            if (Path(env[v]) / raw.name).exists():
                shutil.rmtree(Path(env[v]) / raw.name)
        return False
    raise SystemExit(f"{raw} exists but holds other cases ({len(have)}, {len(expected)} expected); remove it or run "
                     f"`isrg import` for these cases yourself")


# ------------------------------------------------------------------------------------------ zero-shot: building blocks
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
    from nnunet_isrg.inference.lesion_predictor import LesionPredictor, centred_bbox
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

    predictor = LesionPredictor(loaded.network, loaded.schema, torch.from_numpy(np.asarray(data, dtype=np.float32)),
                                device=device, untrained_attributes=loaded.untrained_attributes)
    per_click: list[dict] = []

    def predict_fn(clicks):
        p = predictor.predict(clicks)  # continues from the previous click's mask prompts
        per_click.append({"bbox": p.bbox, "n_encodes": p.n_encodes, "crop_fraction": fraction_inside(gt, p.bbox),
                          "pred_volume_ml": float(p.mask.sum()) * voxel_ml, "iou_pred": p.iou_pred,
                          "zoom": p.zoom, "truncated": p.truncated})
        return p.mask, p.attribute_probs

    t = time.time()
    with torch.no_grad():
        result = run_interactive_protocol(predict_fn, gt, spacing, n_clicks=n_clicks, case_id=case.case_id,
                                          keep_final_mask=False)
    out["protocol_s"] = round(time.time() - t, 2)
    # Trivial reference: the whole first crop (placed as the predictor places it) as the mask, no model.
    box = np.zeros_like(gt)
    first = centred_bbox(result.clicks[0]["point"], crop, gt.shape)
    box[tuple(slice(max(lo, 0), max(min(hi, n), 0)) for (lo, hi), n in zip(first, gt.shape))] = True
    out["dice_whole_first_crop"] = dice(box, gt)
    while len(per_click) < n_clicks:  # the protocol carries a perfect prediction forward
        per_click.append(dict(per_click[-1], n_encodes=0))
    out.update(crop_fraction=[c["crop_fraction"] for c in per_click],
               pred_volume_ml=[c["pred_volume_ml"] for c in per_click],
               crop_bbox=[c["bbox"] for c in per_click], n_encodes=[c["n_encodes"] for c in per_click],
               iou_pred=[c["iou_pred"] for c in per_click], zoom=[c["zoom"] for c in per_click],
               truncated=[c["truncated"] for c in per_click], protocol=result.to_dict(), result=result)
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
    if all("zoom" in c for c in ok):
        s["mean_zoom_per_click"] = [float(np.mean([c["zoom"][k] for c in ok])) for k in range(n_clicks)]
    s["mean_evaluated_volume_ml"] = float(np.mean([c["evaluated_volume_ml"] for c in ok]))
    s["mean_dice_whole_first_crop"] = float(np.mean([c["dice_whole_first_crop"] for c in ok]))
    s["mean_best_crop_fraction"] = float(np.mean([c["best_crop_fraction"] for c in ok]))
    s["mean_dice_bound_single_crop"] = float(np.mean([c["dice_bound_single_crop"] for c in ok]))
    s["n_lesions_larger_than_crop"] = int(sum(c["best_crop_fraction"] < 1.0 for c in ok))
    s["n_failed"] = len(cases) - len(ok)
    return json_safe(s)


# ------------------------------------------------------------------------------------------ the pipeline
def trainer_schedule(name: str) -> dict:
    """What a trainer class runs (its class attributes), for the report."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    if cls is None:
        raise SystemExit(f"trainer {name} not found by nnU-Net (nnunetv2.training.nnUNetTrainer or nnUNet_extTrainer)")
    epochs = getattr(cls, "epochs", None) or 1000
    its = getattr(cls, "iterations_per_epoch", None) or 250
    out = {"trainer": name, "epochs": int(epochs), "iterations_per_epoch": int(its), "iterations": int(epochs * its)}
    if hasattr(cls, "model_preset"):
        out.update(model="ISRG", preset=cls.model_preset)
    else:
        out.update(model="nnU-Net UNet", width_factor=float(getattr(cls, "feature_scale", 1.0)))
    return out


def _fold_dir(env: dict, dataset: str, trainer: str, fold: int) -> Path:
    return Path(env["nnUNet_results"]) / dataset / f"{trainer}__{PLANS}__{CONFIGURATION}" / f"fold_{fold}"


def _validation_file(env: dict, dataset: str, trainer: str, fold: int, interactive: bool) -> Path:
    return _fold_dir(env, dataset, trainer, fold) / "validation" / (
        "interactive_summary.json" if interactive else "summary.json")


def train_command(dataset_id: int, trainer: str, fold: int, device: str, fold_dir: Path | None = None) -> list[str]:
    """``nnUNetv2_train``, continuing (``--c``) or only validating (``--val``) an interrupted fold."""
    cmd = ["nnUNetv2_train", str(dataset_id), CONFIGURATION, str(fold), "-tr", trainer, "-p", PLANS, "-device", device]
    if fold_dir is not None and (fold_dir / "checkpoint_final.pth").is_file():
        cmd.append("--val")
    elif fold_dir is not None and (fold_dir / "checkpoint_latest.pth").is_file():
        cmd.append("--c")
    return cmd


def compare_blocks(folds: Sequence[int], baseline_folds: Sequence[int]) -> list[dict]:
    """The ``isrg compare`` runs: every fold (with the UNet when it was trained on all of them), and the
    UNet's folds with it when it was trained on fewer."""
    folds, baseline_folds = [int(f) for f in folds], [int(f) for f in baseline_folds]
    if baseline_folds and set(folds) <= set(baseline_folds):
        return [{"block": "all_folds", "folds": folds, "with_baseline": True}]
    blocks = [{"block": "all_folds", "folds": folds, "with_baseline": False}]
    if baseline_folds:
        blocks.append({"block": "baseline_folds", "folds": baseline_folds, "with_baseline": True})
    return blocks


def compare_command(dataset_id: int, trainer: str, baseline: str, block: dict, clicks: Sequence[int],
                    attribute_baseline: bool, out_dir: Path, device: str = "cpu") -> list[str]:
    cmd = ["isrg", "compare", "-d", str(dataset_id), "-p", PLANS, "--baseline",
           *([baseline] if block["with_baseline"] else []), "--trainers", trainer,
           "-f", *map(str, block["folds"]), "--clicks", *map(str, clicks), "--classical-baseline",
           "--protocol", "cvpr25"]
    if attribute_baseline:
        cmd.append("--attribute-baseline")
    return cmd + ["-device", device, "-o", str(out_dir)]


def pipeline_commands(spec: RealDataset, args, dataset_id: int | None = None, out_root: Path | None = None) -> list[list[str]]:
    """Every command of one dataset's pipeline, in order (what a full run executes; folds already done are skipped)."""
    dataset_id = dataset_id or spec.dataset_id
    name = f"Dataset{dataset_id:03d}_{spec.name}"
    out_root = out_root or Path("results/benchmark_realdata_cv")
    cmds = [["isrg", "import", str(spec.source), "-d", str(dataset_id), "-n", name.split("_", 1)[1]]
            + (["--lidc"] if spec.lidc else []),
            ["isrg", "plan", "-d", str(dataset_id), "--preset", "tiny", "-np", str(args.n_proc), "-npfp", str(args.n_proc)]]
    cmds += [train_command(dataset_id, args.trainer, f, args.device) for f in args.folds]
    cmds += [train_command(dataset_id, args.baseline_trainer, f, args.device) for f in args.baseline_folds]
    cmds += [compare_command(dataset_id, args.trainer, args.baseline_trainer, b, args.clicks, spec.lidc,
                             out_root / name / b["block"], args.device)
             for b in compare_blocks(args.folds, args.baseline_folds)]
    return cmds


def prepare(spec: RealDataset, args, env: dict, log: StepLog, n_cases: int | None) -> tuple[int, str, Path]:
    """Import and plan (steps 1-2) unless done; returns (id, dataset name, raw folder)."""
    from nnunet_isrg.data.verify import copy_splits_to_preprocessed

    smoke = n_cases is not None
    dataset_id, name = dataset_identity(spec, smoke)
    names = select_cases(spec, n_cases)
    expected = expected_case_ids(spec, names)
    raw = Path(env["nnUNet_raw"]) / name
    imported = check_existing_dataset(raw, expected, smoke, env)
    cmd = ["isrg", "import", str(spec.source), "-d", str(dataset_id), "-n", name.split("_", 1)[1]]
    cmd += (["--lidc"] if spec.lidc else []) + (["--cases", *names] if names else [])
    log.run(f"{name}:import", cmd, imported, dataset=name, step="import")
    if smoke:
        write_json_atomic(raw / SMOKE_MARKER, {"made_by": "scripts/benchmark_realdata.py --cases", "cases": names})
    pre = Path(env["nnUNet_preprocessed"]) / name
    data = pre / f"{PLANS}_{CONFIGURATION}"
    planned = (pre / f"{PLANS}.json").is_file() and len(list(data.glob("*.pkl"))) == len(expected)
    log.run(f"{name}:plan", ["isrg", "plan", "-d", str(dataset_id), "--preset", "tiny", "-np", str(args.n_proc),
                             "-npfp", str(args.n_proc)], planned, dataset=name, step="plan")
    splits = raw / "splits_final.json"
    if splits.is_file() and (not (pre / splits.name).is_file()
                             or json.loads((pre / splits.name).read_text()) != json.loads(splits.read_text())):
        log.call(f"{name}:splits", f"copy_splits_to_preprocessed({raw}, {pre})",
                 lambda: copy_splits_to_preprocessed(raw, pre), dataset=name, step="plan")
    return dataset_id, name, raw


def train(dataset_id: int, name: str, args, env: dict, log: StepLog) -> None:
    """Step 3-4: every fold of the ISRG trainer and of the UNet baseline that is not validated yet."""
    for trainer, folds, interactive in ((args.trainer, args.folds, True),
                                        (args.baseline_trainer, args.baseline_folds, False)):
        for f in folds:
            done = _validation_file(env, name, trainer, f, interactive).is_file()
            cmd = train_command(dataset_id, trainer, f, args.device, None if done else _fold_dir(env, name, trainer, f))
            log.run(f"{name}:train:{trainer}:{f}", cmd, done, dataset=name,
                    step="ISRG training" if interactive else "UNet training", trainer=trainer, fold=int(f))


def _compare_current(out_dir: Path, inputs: Sequence[Path], block: dict, methods: Sequence[str],
                     clicks: Sequence[int]) -> bool:
    """True when ``out_dir`` holds a comparison of these methods, folds and clicks newer than its inputs."""
    path = out_dir / "comparison.json"
    if not path.is_file() or not all(p.is_file() for p in inputs):
        return False
    doc = json.loads(path.read_text())
    same = (doc.get("folds") == list(block["folds"]) and doc.get("clicks") == sorted(set(clicks))
            and [m["trainer"] for m in doc.get("methods", [])] == list(methods) and bool(doc.get("cvpr25")))
    return same and path.stat().st_mtime > max(p.stat().st_mtime for p in inputs)


def compare(spec: RealDataset, dataset_id: int, name: str, args, env: dict, log: StepLog, out_root: Path) -> list[dict]:
    """Step 5: ``isrg compare`` per block; returns each block's comparison document."""
    out = []
    for block in compare_blocks(args.folds, args.baseline_folds):
        out_dir = out_root / name / block["block"]
        methods = ([args.baseline_trainer] if block["with_baseline"] else []) + ["classical-baseline", args.trainer]
        inputs = [_validation_file(env, name, args.trainer, f, True) for f in block["folds"]]
        if block["with_baseline"]:
            inputs += [_validation_file(env, name, args.baseline_trainer, f, False) for f in block["folds"]]
        cmd = compare_command(dataset_id, args.trainer, args.baseline_trainer, block, args.clicks, spec.lidc, out_dir,
                              args.device)
        log.run(f"{name}:compare:{block['block']}", cmd, _compare_current(out_dir, inputs, block, methods, args.clicks),
                dataset=name, step="compare")
        out.append({**block, "out_dir": str(out_dir),
                    "comparison": json.loads((out_dir / "comparison.json").read_text())})
    return out


# ------------------------------------------------------------------------------------------ the zero-shot block
LEARNING_CURVES_PNG = "learning_curves.png"


def learning_curves(env: dict, name: str, trainer: str, folds: Sequence[int], out_dir: Path) -> dict | None:
    """Each fold's training log (``logging`` of its ``checkpoint_final.pth``), per epoch: the loss on the
    training cases (the trainer's prompt mix), the loss and pseudo Dice on the held-out cases (one
    random click). Writes ``learning_curves.json`` and ``.png`` to ``out_dir``; None when no fold has
    a final checkpoint. ``late_gain``: the mean pseudo Dice of the last quarter of the epochs minus that of
    the quarter before, averaged over folds (above ~0.02: still learning when the schedule stopped)."""
    import torch

    from nnunet_isrg.evaluation.plots import plot_learning_curves

    curves = {}
    for f in folds:
        ckpt = _fold_dir(env, name, trainer, f) / "checkpoint_final.pth"
        if not ckpt.is_file():
            continue
        log = torch.load(ckpt, map_location="cpu", weights_only=False)["logging"]
        curves[str(f)] = {"train_loss": [float(v) for v in log["train_losses"]],
                          "val_loss": [float(v) for v in log["val_losses"]],
                          "pseudo_dice": [float(v) for v in log["mean_fg_dice"]]}
    if not curves:
        return None

    def quarter_gain(d: list[float]) -> float:
        q = max(1, len(d) // 4)
        return float(np.mean(d[-q:]) - np.mean(d[-2 * q:-q])) if len(d) >= 2 * q else float("nan")

    summary = {"trainer": trainer, "folds": curves,
               "final_pseudo_dice": {f: c["pseudo_dice"][-1] for f, c in curves.items()},
               "final_train_loss": {f: c["train_loss"][-1] for f, c in curves.items()},
               "final_val_loss": {f: c["val_loss"][-1] for f, c in curves.items()},
               "late_gain": float(np.nanmean([quarter_gain(c["pseudo_dice"]) for c in curves.values()])),
               "png": str(out_dir / LEARNING_CURVES_PNG)}
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_learning_curves(curves, out_dir / LEARNING_CURVES_PNG, title=f"{name}: {trainer}")
    write_json_atomic(out_dir / "learning_curves.json", summary)
    return summary


def _zero_shot_current(out_json: Path, info: dict, ids: Sequence[str], n_clicks: int) -> dict | None:
    """The zero-shot document in ``out_json`` when it is of this model (checkpoint unchanged), cases and clicks."""
    if not out_json.is_file():
        return None
    doc = json.loads(out_json.read_text())
    keys = ("folder", "folds", "checkpoint", "checkpoint_mtime")
    same = (all(doc.get("model", {}).get(k) == info.get(k) for k in keys)
            and doc.get("dataset", {}).get("cases") == list(ids) and doc.get("n_clicks") == n_clicks)
    return doc if same else None


def run_zero_shot(args, env: dict, log: StepLog, raw: Path, out_json: Path, command: str) -> dict | None:
    """The phantom model on the sarcomas of ``raw`` (see the module docstring); writes ``out_json`` and
    its ``.md``; returns the document (None when the model does not exist and was not asked for)."""
    import torch

    from nnunet_isrg.attributes import lesion_labels_from_dataset_json
    from nnunet_isrg.evaluation.compare import HeldOutCase
    from nnunet_isrg.inference.model_loading import load_trained_model

    model = Path(args.model)
    if not (model / "plans.json").is_file():
        if model.resolve() != DEFAULT_MODEL.resolve():
            raise SystemExit(f"--model {model}: no trained model folder (plans.json missing)")
        print(f"\nzero-shot block skipped: the phantom model {model} does not exist (make demo trains it)")
        return None
    torch.set_num_threads(max(1, args.threads))
    ids = sorted(_labels(raw))
    n_clicks = max(args.clicks)
    loaded = load_trained_model(model, folds=args.fold, checkpoint=args.checkpoint, device=args.device)
    info = model_info(loaded, args.checkpoint)
    info["checkpoint_mtime"] = max((loaded.folder / ("fold_all" if f == "all" else f"fold_{f}") / args.checkpoint)
                                   .stat().st_mtime for f in loaded.folds)
    previous = _zero_shot_current(out_json, info, ids, n_clicks)
    if previous is not None:
        log.call("zero-shot", f"zero-shot: {info['trainer']} ({info['trained_on']}) on {len(ids)} sarcomas",
                 lambda: None, done=True, dataset=raw.name, step="zero-shot")
        return previous
    lesion_labels = lesion_labels_from_dataset_json(json.loads((raw / "dataset.json").read_text()))
    cases = [HeldOutCase(c, [str(raw / "imagesTr" / f"{c}_0000.nii.gz")], str(raw / "labelsTr" / f"{c}.nii.gz"))
             for c in ids]

    def evaluate_all() -> list[dict]:
        results = []
        for c in cases:
            try:
                r = evaluate_case(loaded, c, n_clicks, args.device, lesion_labels)
            except Exception as e:  # one bad case is reported, not the end of the benchmark
                r = {"case": c.case_id, "volume_ml": None, "error": f"{type(e).__name__}: {e}"}
            results.append(r)
            dice = " ".join(_f(d) for d in r["protocol"]["dice"]) if "protocol" in r else r.get("error")
            print(f"  {c.case_id}: {_f(r.get('volume_ml'), 0)} mL, best crop fraction "
                  f"{_f(r.get('best_crop_fraction'), 2)}, Dice per click {dice} "
                  f"({_f(r.get('preprocess_s', 0) + r.get('protocol_s', 0), 1)} s)", flush=True)
        return results

    t = time.time()
    results = log.call("zero-shot", f"zero-shot: {info['trainer']} ({info['trained_on']}, {args.checkpoint}, epoch "
                                    f"{info['checkpoint_epoch']}) on {len(cases)} real case(s), {n_clicks} clicks",
                       evaluate_all, dataset=raw.name, step="zero-shot")
    zero_shot_s = time.time() - t
    doc = {
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "machine": _machine(args.device),
        "dataset": {"id": int(raw.name[7:10]), "raw": str(raw), "source": str(DATASETS["sts"].source),
                    "n_cases": len(ids), "n_cases_evaluated": len(cases), "cases": ids},
        "model": info,
        "n_clicks": n_clicks,
        "summary": summarise(results, n_clicks),
        "cases": [{k: v for k, v in r.items() if k != "result"} for r in results],
        "timings_s": {"zero_shot_s": round(zero_shot_s, 1)},
        "run_time_s": round(zero_shot_s, 1),
        "run_time_note": "the zero-shot evaluation; the datasets' import and planning are in the cross-validation "
                         "summary",
    }
    write_json_atomic(out_json, doc)
    write_text_atomic(out_json.with_suffix(".md"), report_markdown(doc))
    print(f"\nwrote {out_json} and {out_json.with_suffix('.md')}")
    s = doc["summary"]
    if s.get("n_cases"):
        print("zero-shot mean Dice per click: " + " ".join(_f(v) for v in s["mean_per_click"]["dice"])
              + f"; mean best crop fraction {_f(s['mean_best_crop_fraction'])}")
    return doc


def _machine(device: str) -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "device": device,
            "torch_threads": torch.get_num_threads()}


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
        f"space. Each prediction starts from one {'x'.join(map(str, m['crop_size']))}-voxel crop "
        f"({' x '.join(_f(c * sp, 0) for c, sp in zip(m['crop_size'], m['spacing_mm']))} mm) at the clicks and "
        f"zooms out (up to 4 crops per axis) while the lesion leaves it.",
        "",
    ]
    if s.get("n_cases", 0) == 0:
        return "\n".join(lines + ["No case could be evaluated."]) + "\n"
    lines += ["| clicks | " + " | ".join(str(k + 1) for k in range(n)) + " |", "|---|" + "---|" * n]
    for key, label, digits in (("dice", "mean Dice", 3), ("nsd", "mean NSD @ 2 mm", 3), ("hd95", "mean HD95 (mm)", 1)):
        lines.append(f"| {label} | " + " | ".join(_f(v, digits) for v in s["mean_per_click"][key]) + " |")
    lines.append("| mean lesion fraction inside the predicted region | "
                 + " | ".join(_f(v, 3) for v in s["mean_crop_fraction_per_click"]) + " |")
    if s.get("mean_zoom_per_click"):
        lines.append("| mean zoom (1: the crop held the lesion) | "
                     + " | ".join(_f(v, 2) for v in s["mean_zoom_per_click"]) + " |")
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
              + f" | region fraction@{n} | predicted mL@{n} | whole-crop Dice | s |",
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
    lines += ["", "Trained on these cases instead (cross-validation of ISRG against the UNet and the classical "
                  "baseline): the next section, written by the same script."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the cross-validation report
def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _schedule_text(t: dict) -> str:
    if t["model"] == "ISRG":
        return f"ISRG `{t['preset']}` preset, {t['epochs']} x {t['iterations_per_epoch']} = {t['iterations']} iterations"
    return (f"nnU-Net UNet, width x {t['width_factor']:g}, {t['epochs']} x {t['iterations_per_epoch']} = "
            f"{t['iterations']} iterations")


def _zero_shot_row(zs: dict, clicks: Sequence[int]) -> str:
    """The phantom model's zero-shot on the sarcomas in the layout of Table 2."""
    s, m = zs["summary"], zs["model"]
    head = ["Method", "Trainer"] + [f"{h}@{k}" for h in ("DSC", "HD95", "NSD") for k in clicks]
    cells = ["ISRG (Full), trained on the phantom only: zero-shot", f"`{m['trainer']}` ({m['trained_on']})"]
    for metric, digits in (("dice", 3), ("hd95", 2), ("nsd", 3)):
        for k in clicks:
            c = s["per_click"][metric][k - 1] if k <= len(s["per_click"][metric]) else {"mean": None}
            cells.append("n/a" if c["mean"] is None else f"{c['mean']:.{digits}f} ± {c['std']:.{digits}f}")
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(cells) + " |"])


STEP_KINDS = ("import", "plan", "zero-shot", "ISRG training", "UNet training", "compare")


#: the quality targets of the real datasets (pooled held-out folds, deterministic protocol): Dice after 1 and 5 clicks
DICE_TARGETS = {"sts": (0.82, 0.90), "nodules": (0.82, 0.88)}
BOX_GAIN_TARGET = 0.05   # a box as the first prompt against one click


def quality_targets(d: dict) -> dict | None:
    """The targets against the ISRG trainer's pooled figures of the all-folds block: Dice after 1 and 5
    clicks, Dice never falling as clicks are added, a box first against a click first, and the CVPR
    2025 protocol's final Dice against 5 clicks. None without the CVPR 2025 row (it carries the pooled
    Dice after every click)."""
    block = next((b for b in d["blocks"] if b["block"] == "all_folds"), None)
    rows = (block or {}).get("comparison", {}).get("cvpr25") or []
    row = next((r for r in rows if r["trainer"] == d["trainer"]["trainer"]), None)
    if row is None:
        return None
    clicks = row["click_protocol_dice"]
    one, five = DICE_TARGETS.get(d["key"], (None, None))
    n = min(5, len(clicks))
    return {"dice_1": clicks[0], "dice_5": clicks[n - 1], "n_clicks": n, "target_1": one, "target_5": five,
            "never_falls": all(b >= a - 1e-9 for a, b in zip(clicks, clicks[1:])),
            "box_first": row["dice"][0], "box_gain": row["box_minus_first_click"],
            "cvpr25_final": row["final_dice"], "folds": block["folds"], "n_cases": row["n_cases"]}


def targets_line(t: dict) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "missed"

    parts = [f"Dice after 1 click {t['dice_1']:.3f}" + (f" (target >= {t['target_1']:.2f}: "
                                                        f"{met(t['dice_1'] >= t['target_1'])})" if t["target_1"] else ""),
             f"after {t['n_clicks']} clicks {t['dice_5']:.3f}" + (f" (target >= {t['target_5']:.2f}: "
                                                                 f"{met(t['dice_5'] >= t['target_5'])})"
                                                                 if t["target_5"] else ""),
             f"mean Dice never falls as clicks are added: {met(t['never_falls'])}",
             f"a box first {t['box_first']:.3f}, {t['box_gain']:+.3f} against one click (target >= "
             f"+{BOX_GAIN_TARGET:.2f}: {met(t['box_gain'] >= BOX_GAIN_TARGET)})",
             f"the CVPR 2025 protocol's final Dice {t['cvpr25_final']:.3f} against {t['dice_5']:.3f} after "
             f"{t['n_clicks']} clicks ({met(t['cvpr25_final'] >= t['dice_5'])})"]
    return (f"**Targets** (ISRG, folds {' '.join(map(str, t['folds']))} pooled, {t['n_cases']} held-out cases): "
            + "; ".join(parts) + ".")


def dataset_markdown(d: dict, figures: dict[str, str], zero_shot: dict | None) -> str:
    """One dataset's part of the section: what was trained, the compare blocks' tables, the figures."""
    from nnunet_isrg.evaluation.compare import comparison_markdown

    patients = f", {d['n_patients']} patients" if d.get("n_patients") else ""
    folds = " ".join(map(str, d["folds"]))
    bfolds = " ".join(map(str, d["baseline_folds"])) or "none"
    lines = [f"#### {d['title']}: `{d['dataset']}` ({d['n_cases']} cases{patients})", "",
             f"ISRG `{d['trainer']['trainer']}` ({_schedule_text(d['trainer'])}) on fold(s) {folds}; UNet baseline "
             f"`{d['baseline']['trainer']}` ({_schedule_text(d['baseline'])}) on fold(s) {bfolds}; classical "
             f"baseline: region growing / threshold from the clicks, its setting chosen per fold on the fold's "
             f"training cases. Plans `{PLANS}`: {'x'.join(f'{v:g}' for v in d['spacing_mm'])} mm, "
             f"{'x'.join(map(str, d['patch_size']))} crop; folds of `splits_final.json`"
             + (" (grouped by patient)" if d["key"] == "nodules" else " (nnU-Net's 5-fold split)")
             + f". Run time of its steps {_hours(d['total_s'])}."]
    for b in d["blocks"]:
        title = ("**Fold(s) " + ", ".join(map(str, b["folds"])) + (", with the UNet baseline**" if b["with_baseline"]
                                                                  else "**"))
        tables = "\n".join(line for line in comparison_markdown(b["comparison"]).splitlines()
                           if not line.startswith("!["))
        lines += ["", title, "", tables.strip()]
    targets = quality_targets(d)
    if targets:
        lines += ["", targets_line(targets)]
    lc = d.get("learning_curves")
    if lc:
        finals = ", ".join(f"fold {f} {v:.3f}" for f, v in lc["final_pseudo_dice"].items())
        lines += ["", f"**Learning curves** (nnU-Net's log of each fold; the plot below): loss on the training cases "
                      f"(with the prompt mix) and on the held-out cases, and the held-out pseudo Dice after one random "
                      f"click, per epoch. Pseudo Dice at the last epoch: {finals}; the last quarter of the epochs "
                      f"{'gained' if lc['late_gain'] >= 0 else 'lost'} {abs(lc['late_gain']):.3f} over the quarter "
                      f"before ({'still learning when the schedule stopped' if lc['late_gain'] > 0.02 else 'flat'})."]
    if zero_shot is not None and zero_shot.get("summary", {}).get("n_cases"):
        lines += ["", f"Reference, the phantom model of the section above on all {zero_shot['summary']['n_cases']} "
                      f"sarcomas (not per fold; at its own {zero_shot['model']['spacing_mm'][0]:g} mm spacing):", "",
                  _zero_shot_row(zero_shot, d["clicks"])]
    if figures:
        lines += [""] + [f"![{k}]({v})" for k, v in figures.items()]
    return "\n".join(lines)


def provenance_line(doc: dict) -> str:
    return (f"Produced by `{doc['command']}` on {doc['generated'][:10]} ({doc['machine']['cpus']} CPU cores, "
            f"{doc['machine']['device']}, torch {doc['machine']['torch']}); this invocation "
            f"{_hours(doc['invocation_s'])}. Each step, its command and its wall time are in `{doc['summary_json']}`.")


def step_times_table(d: dict) -> str:
    per = {k: sum(s["wall_s"] or 0 for s in d["steps"] if s["step"] == k) for k in STEP_KINDS}
    return "\n".join(["| run time | " + " | ".join(STEP_KINDS) + " | total |",
                      "|---|" + "---|" * (len(STEP_KINDS) + 1),
                      f"| `{d['dataset']}` | " + " | ".join(_hours(per[k]) for k in STEP_KINDS)
                      + f" | {_hours(d['total_s'])} |"])


def dataset_section(doc: dict, d: dict, figures: dict[str, str]) -> str:
    """The README section ``realdata-cv-<key>`` of one dataset: its tables, figures and step times.

    One section per dataset, so that a run of one dataset (``--datasets sts``) updates its own section
    and leaves the other's as the run that wrote it."""
    zero_shot = doc.get("zero_shot") if d["key"] == "sts" else None
    return "\n".join([dataset_markdown(d, figures, zero_shot), "", provenance_line(doc), "", step_times_table(d)]) + "\n"


def cv_markdown(doc: dict, figures: dict[str, dict[str, str]]) -> str:
    """``summary.md``: every dataset's section of this run and how to read them."""
    lines = ["### Real CT: trained on real lesions (cross-validation)", ""]
    for d in doc["datasets"]:
        lines += [dataset_section(doc, d, figures.get(d["dataset"], {})), ""]
    lines += [HOW_TO_READ]
    return "\n".join(lines) + "\n"


HOW_TO_READ = (
    "How to read these: each dataset's cases are split into folds; every method is scored on the validation "
    "cases of each fold, never on the cases it was trained or tuned on, and the tables pool all validation cases "
    "(mean ± std). DSC and NSD are better higher, HD95 (mm) lower; \"@k\" is after k clicks of the same "
    "deterministic click protocol for ISRG and the classical baseline, while the UNet takes no clicks (the same "
    "value in every column). The classical baseline (region growing or threshold + connected component from the "
    "clicks, the tools a reader has without deep learning) is what an interactive model must beat; its setting "
    "per fold is in the JSON. For the nodules, Table 3 compares the attribute head with the non-deep baseline "
    "(a random forest on measurements inside the true mask, so it is given the segmentation the model has to "
    "find): an accuracy means little next to a high majority-class rate, and the balanced accuracy (the mean "
    "recall over the true classes; always answering the majority class scores 1 / classes present) shows whether "
    "the minority classes are found at all. The middle (indeterminate) LIDC ratings are unknown and not scored. "
    "The models are CPU-budget schedules (see each dataset's line), far from the paper's GPU training.")


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _figures(datasets: Sequence[dict], base: Path, rel_to: Path | None = None, copy_to: Path | None = None) -> dict:
    """Per dataset, caption -> path of each compare block's plots (relative to ``rel_to``; copied to ``copy_to``)."""
    out = {}
    for d in datasets:
        figs = {}
        for b in d["blocks"]:
            for png, caption in (("dice_vs_clicks.png", "Dice against clicks"),
                                 ("attribute_accuracy.png", "Attribute accuracy")):
                src = Path(b["out_dir"]) / png
                if not src.is_file():
                    continue
                label = f"{d['dataset']}, folds {' '.join(map(str, b['folds']))}: {caption}"
                if copy_to is not None:
                    copy_to.mkdir(parents=True, exist_ok=True)
                    dst = copy_to / f"{d['dataset']}_{b['block']}_{png}"
                    shutil.copy(src, dst)
                    src = dst
                figs[label] = os.path.relpath(src, rel_to or base)
        lc = d.get("learning_curves")
        if lc and Path(lc["png"]).is_file():
            src = Path(lc["png"])
            if copy_to is not None:
                copy_to.mkdir(parents=True, exist_ok=True)
                src = Path(shutil.copy(src, copy_to / f"{d['dataset']}_{LEARNING_CURVES_PNG}"))
            figs[f"{d['dataset']}: learning curves of the ISRG folds"] = os.path.relpath(src, rel_to or base)
        out[d["dataset"]] = figs
    return out


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["sts", "nodules"])
    p.add_argument("--cases", nargs="+", type=int, default=None,
                   help="smoke run: the first N cases of each dataset (or one N per dataset of --datasets), in "
                        "datasets of their own (ids 960, 961)")
    p.add_argument("--trainer", default=DEFAULT_TRAINER, help="ISRG trainer (default %(default)s)")
    p.add_argument("--baseline-trainer", default=DEFAULT_BASELINE, help="UNet baseline trainer (default %(default)s)")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds of the ISRG trainer")
    p.add_argument("--baseline-folds", nargs="*", type=int, default=[0], help="folds of the UNet baseline (default 0)")
    p.add_argument("--clicks", nargs="+", type=int, default=[1, 3, 5],
                   help="clicks in the tables (default 1 3 5; the debug trainers validate 3)")
    p.add_argument("--device", default="cpu", help="training (and zero-shot) device: cpu or cuda")
    p.add_argument("-np", "--n-proc", type=int, default=2, help="processes for nnU-Net planning/preprocessing")
    p.add_argument("--no-zero-shot", action="store_true", help="leave out the phantom model's zero-shot block")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="zero-shot: the phantom-trained model folder")
    p.add_argument("--fold", nargs="+", default=["0"], help="zero-shot: fold(s) of --model (several are ensembled)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="zero-shot: checkpoint of --model")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the zero-shot evaluation")
    p.add_argument("--out", default=None, help="zero-shot JSON (default results/benchmark_realdata.json, smoke "
                                               "runs results/benchmark_realdata_smoke.json); the cross-validation "
                                               "goes to the folder beside it, named <stem>_cv")
    p.add_argument("--update-readme", action="store_true",
                   help=f"replace the README sections '{README_SECTION}', 'realdata-cv' and 'realdata-cv-DATASET' "
                        f"of each dataset run (copies the plots to "
                        f"{FIGURES_DIR.relative_to(REPO)})")
    args = p.parse_args(argv)
    if args.cases is not None and len(args.cases) not in (1, len(args.datasets)):
        p.error(f"--cases takes one number or one per dataset of --datasets ({len(args.datasets)})")
    if args.update_readme and args.cases is not None:
        p.error("--update-readme with --cases would publish a smoke run; run on all cases")
    if not set(args.baseline_folds) <= set(args.folds):
        p.error(f"--baseline-folds {args.baseline_folds} must be among --folds {args.folds} (ISRG is compared with "
                f"the UNet on them)")
    if any(k < 1 for k in args.clicks):
        p.error("--clicks must be >= 1")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args.command = " ".join(["python scripts/benchmark_realdata.py", *argv_list])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import subprocess

    args = parse_args(argv)
    t0 = time.time()
    smoke = args.cases is not None
    n_cases = {k: (args.cases[i] if len(args.cases) > 1 else args.cases[0]) if smoke else None
               for i, k in enumerate(args.datasets)}
    out_json = Path(args.out) if args.out else REPO / "results" / (
        "benchmark_realdata_smoke.json" if smoke else "benchmark_realdata.json")
    cv_root = out_json.with_name(out_json.stem + "_cv")
    env = setup_env()
    log = StepLog(env, cv_root / "steps_ledger.json")
    doc = {"generated": None, "command": args.command, "machine": _machine(args.device), "smoke": smoke,
           "summary_json": os.path.relpath(cv_root / "summary.json", REPO) if cv_root.is_relative_to(REPO)
           else str(cv_root / "summary.json"),
           "datasets": [], "zero_shot": None, "steps": log.steps, "total_s": None, "invocation_s": None}

    def write() -> str:
        doc["generated"] = _dt.datetime.now().isoformat(timespec="seconds")
        doc["total_s"] = round(log.total_s(), 1)
        doc["invocation_s"] = round(time.time() - t0, 1)
        write_json_atomic(cv_root / "summary.json", doc)
        md = cv_markdown(doc, _figures(doc["datasets"], cv_root))
        write_text_atomic(cv_root / "summary.md", md)
        return md

    rc = 0
    try:
        for key in args.datasets:
            spec = DATASETS[key]
            first = len(log.steps)
            dataset_id, name, raw = prepare(spec, args, env, log, n_cases[key])
            if key == "sts" and not args.no_zero_shot:
                zs = run_zero_shot(args, env, log, raw, out_json, args.command)
                doc["zero_shot"] = {k: zs[k] for k in ("summary", "model", "n_clicks", "dataset")} if zs else None
            train(dataset_id, name, args, env, log)
            blocks = compare(spec, dataset_id, name, args, env, log, cv_root)
            curves = learning_curves(env, name, args.trainer, args.folds, cv_root / name)
            doc["datasets"].append(dataset_summary(spec, name, dataset_id, raw, args, env, blocks, log.steps[first:],
                                                   log.total_s(log.steps[first:]), curves))
            write()
    except subprocess.CalledProcessError as e:
        print(f"\nbenchmark_realdata: command failed with status {e.returncode}: {' '.join(map(str, e.cmd))}",
              file=sys.stderr)
        rc = 1
    md = write()
    print(f"\nwrote {cv_root / 'summary.json'} and {cv_root / 'summary.md'} (this invocation "
          f"{_hours(doc['invocation_s'])}; all steps {_hours(doc['total_s'])})")
    if rc or not args.update_readme:
        return rc
    return 0 if update_readme(doc, cv_root, out_json) and md else 1


def update_readme(doc: dict, cv_root: Path, out_json: Path, readme: Path | None = None,
                  figures_dir: Path = FIGURES_DIR) -> bool:
    """Rewrites the README sections of what ``doc`` holds: the zero-shot block when it ran, how to read
    the tables, and the section of each dataset run; another dataset's section stays as it was.
    The plots are copied to ``figures_dir`` and linked relative to the README."""
    from script_support import replace_readme_section

    readme = readme or REPO / "README.md"
    ok = True
    if doc["zero_shot"] is not None:
        ok &= replace_readme_section(README_SECTION, out_json.with_suffix(".md").read_text(), readme)
    figures = _figures(doc["datasets"], cv_root, readme.parent, figures_dir)
    ok &= replace_readme_section("realdata-cv", HOW_TO_READ, readme)
    for d in doc["datasets"]:
        ok &= replace_readme_section(f"realdata-cv-{d['key']}", dataset_section(doc, d, figures.get(d["dataset"], {})),
                                     readme)
    return ok


def dataset_summary(spec: RealDataset, name: str, dataset_id: int, raw: Path, args, env: dict, blocks: list[dict],
                    steps: list[dict], total_s: float, curves: dict | None = None) -> dict:
    """One dataset's part of ``summary.json``: what was trained on what, the comparisons, the steps."""
    plans = json.loads((Path(env["nnUNet_preprocessed"]) / name / f"{PLANS}.json").read_text())
    cfg = plans["configurations"][CONFIGURATION]
    ids = _labels(raw)
    d = {"key": spec.key, "title": spec.title, "dataset": name, "dataset_id": dataset_id,
            "source": str(spec.source), "n_cases": len(ids),
            "n_patients": len({c.split("_")[0] for c in ids}) if spec.lidc else None,
            "spacing_mm": cfg["spacing"], "patch_size": cfg["patch_size"],
            "trainer": trainer_schedule(args.trainer), "baseline": trainer_schedule(args.baseline_trainer),
            "folds": list(args.folds), "baseline_folds": list(args.baseline_folds), "clicks": list(args.clicks),
            "blocks": blocks, "learning_curves": curves, "steps": steps, "total_s": round(total_s, 1)}
    d["targets"] = quality_targets(d)
    return d


if __name__ == "__main__":
    sys.exit(main())
