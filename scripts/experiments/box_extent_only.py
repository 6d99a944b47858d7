"""How much of a nodule a box tells without the image: the ellipsoid inscribed in each nodule's tight
box, scored against its mask, beside the cross-validated model's Dice after the box (CVPR 2025
protocol) and after one click (click protocol), per diameter quartile.

If the ellipsoid alone scores about what the model scores after a box, the box's extent is all the
model takes from it: on small round nodules a centred click already says as much. It reads each
ISRG fold's ``validation/reports/`` and ``validation/reports_cvpr25/`` (so run
``python scripts/benchmark_realdata.py --datasets nodules`` first), the preprocessed masks those
protocols scored (voxels of the plans' spacing), and the diameters of ``nodules.csv``.

    python scripts/experiments/box_extent_only.py
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class  # noqa: E402

from nnunet_isrg.lesions import largest_lesion_component  # noqa: E402
from nnunet_isrg.prompts import bounding_box  # noqa: E402
from script_support import nnunet_env  # noqa: E402

DATASET = "Dataset601_LIDCNodules"


def inscribed_ellipsoid(mask: np.ndarray) -> np.ndarray:
    """The ellipsoid inscribed in the tight box of ``mask`` (axes half the box's voxel extents)."""
    box = bounding_box(mask)
    lo, hi = np.asarray(box.lo), np.asarray(box.hi)
    centre, radii = (lo + hi) / 2, (hi - lo + 1) / 2
    grid = np.indices(mask.shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", default="ISRGTrainer_Tiny_20epochs__nnUNetISRGPlans__3d_fullres")
    p.add_argument("--nodules-csv", type=Path, default=REPO.parent / "shared/realdata/lidc-nodules/nodules.csv")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = p.parse_args()

    env = nnunet_env()
    results = Path(env["nnUNet_results"]) / DATASET / args.trainer
    plans = json.loads((results / "plans.json").read_text())
    pre = Path(env["nnUNet_preprocessed"]) / DATASET / plans["configurations"]["3d_fullres"]["data_identifier"]
    dataset = infer_dataset_class(str(pre))(str(pre))
    diameter = {r["case"]: float(r["diameter_mm"]) for r in csv.DictReader(args.nodules_csv.open())}
    rows = []
    for fold in args.folds:
        for boxed in sorted((results / f"fold_{fold}" / "validation" / "reports_cvpr25").glob("*.json")):
            box_first = json.loads(boxed.read_text())
            click_first = json.loads((boxed.parent.parent / "reports" / boxed.name).read_text())
            case = box_first["case_id"]
            gt, _ = largest_lesion_component(np.asarray(dataset.load_case(case)[1][0]), [1])
            rows.append((diameter[case], dice(inscribed_ellipsoid(gt), gt), box_first["dice"][0],
                         click_first["dice"][0]))
    if not rows:
        raise SystemExit(f"no reports_cvpr25 under {results}/fold_*/validation: "
                         "run the nodules' cross-validation first")
    table = np.array(rows)
    edges = [0.0, *np.quantile(table[:, 0], [0.25, 0.5, 0.75]), np.inf]
    print(f"{len(table)} nodules, folds {args.folds}")
    print(f"{'diameter (mm)':<16} {'n':>4} {'ellipsoid in box':>17} {'model: box':>11} {'model: 1 click':>15}")
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (table[:, 0] >= lo) & (table[:, 0] < hi)
        print(f"{lo:5.1f} - {hi:<8.1f} {m.sum():>4} {table[m, 1].mean():>17.3f} {table[m, 2].mean():>11.3f} "
              f"{table[m, 3].mean():>15.3f}")
    print(f"{'all':<16} {len(table):>4} {table[:, 1].mean():>17.3f} {table[:, 2].mean():>11.3f} "
          f"{table[:, 3].mean():>15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
