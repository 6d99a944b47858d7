#!/usr/bin/env python
"""How strict is a Dice of 0.80 on the phantom's lesions? Scores masks that no model produces.

For every case of a phantom dataset (default: the demo's, fold 0's validation cases first), this
scores three reference masks against the ground truth:

* the ground truth eroded by one voxel, and dilated by one voxel (6-connected): a mask whose
  boundary is everywhere one voxel off;
* an intensity oracle: the image smoothed (Gaussian, sigma 0.7 voxel), thresholded to an HU
  window taken from the *true* lesion's own percentiles (25 windows tried, the best one kept),
  and the connected component under the protocol's first click. It shows how far intensity alone
  goes.

Next to them, when a trained model's validation folder has a report for the case (default: the
demo's), the model's Dice after the first and the last click of the protocol.

Writes ``results/phantom_difficulty.json`` and ``.md``; ``--update-readme`` also fills the README
section "phantom-difficulty".

    python scripts/phantom_difficulty.py
    python scripts/phantom_difficulty.py --raw $nnUNet_raw/Dataset501_ISRGPhantom --splits none
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # the package, and script_support beside this file

from nnunet_isrg.attributes import ATTRIBUTES_FILENAME  # noqa: E402
from nnunet_isrg.files import write_json_atomic  # noqa: E402
from nnunet_isrg.clicks import first_click_deterministic  # noqa: E402
from nnunet_isrg.evaluation.metrics import dice  # noqa: E402
from script_support import replace_readme_section  # noqa: E402

SECTION = "phantom-difficulty"
LOW_PERCENTILES = (0, 2, 5, 10, 20)
HIGH_PERCENTILES = (80, 90, 95, 98, 100)


def intensity_oracle_dice(hu: np.ndarray, lesion: np.ndarray, click_zyx: tuple[int, int, int]) -> float:
    """Best Dice over HU windows from the lesion's own percentiles, component under the click."""
    smooth = ndi.gaussian_filter(hu.astype(np.float32), 0.7)
    inside = smooth[lesion]
    best = 0.0
    for lo in np.percentile(inside, LOW_PERCENTILES):
        for hi in np.percentile(inside, HIGH_PERCENTILES):
            components, _ = ndi.label((smooth >= lo) & (smooth <= hi))
            if components[click_zyx]:
                best = max(best, dice(components == components[click_zyx], lesion))
    return best


def score_case(raw: Path, case: str) -> dict:
    image = raw / "imagesTr" / f"{case}_0000.nii.gz"
    label = raw / "labelsTr" / f"{case}.nii.gz"
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    label_image = sitk.ReadImage(str(label))
    lesion = sitk.GetArrayFromImage(label_image) > 0
    if not lesion.any():
        raise SystemExit(f"{label}: no lesion voxel; every phantom case has one lesion")
    spacing_zyx = tuple(reversed(label_image.GetSpacing()))
    click = tuple(int(round(c)) for c in first_click_deterministic(lesion, spacing_zyx))
    extent = np.ptp(np.argwhere(lesion), axis=0) + 1
    return {"case": case, "voxels": int(lesion.sum()), "max_extent_voxels": int(extent.max()),
            "eroded_1_voxel": dice(ndi.binary_erosion(lesion), lesion),
            "dilated_1_voxel": dice(ndi.binary_dilation(lesion), lesion),
            "intensity_oracle": intensity_oracle_dice(hu, lesion, click)}


def model_dice(validation: Path, case: str) -> tuple[float, float] | None:
    """(Dice after the first click, after the last) from a validation report, None without one."""
    report = validation / "reports" / f"{case}.json"
    if not report.is_file():
        return None
    dice_per_click = json.loads(report.read_text())["dice"]
    return float(dice_per_click[0]), float(dice_per_click[-1])


def markdown(result: dict) -> str:
    rows = result["cases"]
    attrs = result["attributes"]
    with_model = all(r.get("model_dice") for r in rows)
    model_head = " model, 1st click | model, last click |" if with_model else ""
    lines = [f"Reference masks scored against the ground truth on {result['dataset']} "
             f"({result['which']}). Dice; the three reference-mask columns involve no model"
             + (f"; the last two are the model in `{result['validation']}`." if with_model else "."), "",
             "| case | lesion type | shape | density | voxels | GT eroded 1 voxel | GT dilated 1 voxel | "
             "intensity oracle |" + model_head, "|---|---|---|---|---|---|---|---|" + ("---|---|" if with_model else "")]
    for r in rows:
        a = attrs.get(r["case"], {})
        model = " {:.2f} | {:.2f} |".format(*r["model_dice"]) if with_model else ""
        lines.append(f"| {r['case']} | {a.get('lesion_type', '?')} | {a.get('shape', '?')} | {a.get('density', '?')} | "
                     f"{r['voxels']} | {r['eroded_1_voxel']:.2f} | {r['dilated_1_voxel']:.2f} | "
                     f"{r['intensity_oracle']:.2f} |" + model)
    m = result["mean"]
    model = ""
    if with_model:
        model = " **{:.3f}** | **{:.3f}** |".format(*np.mean([r["model_dice"] for r in rows], axis=0))
    lines.append(f"| **mean** | | | | | **{m['eroded_1_voxel']:.3f}** | **{m['dilated_1_voxel']:.3f}** | "
                 f"**{m['intensity_oracle']:.3f}** |" + model)
    lines += ["", f"Produced by `python scripts/phantom_difficulty.py --update-readme` ({result['seconds']:.0f} s)."]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", type=Path, default=REPO / "work" / "nnUNet_raw" / "Dataset500_ISRGPhantom")
    p.add_argument("--splits", default=None,
                   help="splits_final.json whose fold 0 validation cases are scored, or 'none' for every case "
                        "(default: the dataset's in work/nnUNet_preprocessed)")
    p.add_argument("--validation", type=Path, default=None,
                   help="a trained model's validation folder whose reports/CASE.json give its Dice per click "
                        "(default: the dataset's ISRGTrainer_Tiny fold 0 in work/nnUNet_results)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "phantom_difficulty")
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args()

    t0 = time.time()
    work = REPO / "work"
    if args.splits is None:
        args.splits = str(work / "nnUNet_preprocessed" / args.raw.name / "splits_final.json")
    if args.validation is None:
        args.validation = (work / "nnUNet_results" / args.raw.name / "ISRGTrainer_Tiny__nnUNetPlans__3d_fullres" /
                           "fold_0" / "validation")
    if args.splits == "none":
        cases = sorted(f.name[:-len(".nii.gz")] for f in (args.raw / "labelsTr").glob("*.nii.gz"))
        which = f"all {len(cases)} cases"
    else:
        splits = Path(args.splits)
        if not splits.is_file():
            raise SystemExit(f"{splits} is missing: run `make demo` first, or pass --splits none")
        cases = sorted(json.loads(splits.read_text())[0]["val"])
        which = f"the {len(cases)} validation cases of fold 0, as in the demo"
    if not cases:
        raise SystemExit(f"no cases to score in {args.raw / 'labelsTr'}")
    attributes_file = args.raw / ATTRIBUTES_FILENAME
    attributes = json.loads(attributes_file.read_text()) if attributes_file.is_file() else {}
    rows = [{**score_case(args.raw, c), "model_dice": model_dice(args.validation, c)} for c in cases]
    keys = ("eroded_1_voxel", "dilated_1_voxel", "intensity_oracle")
    try:
        shown = args.validation.resolve().relative_to(REPO)
    except ValueError:
        shown = args.validation
    result = {"dataset": args.raw.name, "which": which, "validation": str(shown), "cases": rows,
              "attributes": {c: attributes.get(c, {}) for c in cases},
              "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}, "seconds": time.time() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out.with_suffix(".json"), result)
    text = markdown(result)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(args.out.with_suffix(".md"))
    print(text)
    if args.update_readme:
        replace_readme_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
