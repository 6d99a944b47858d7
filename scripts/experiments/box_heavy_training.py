"""Does training with more boxes first widen the gap between a box and a click as the first prompt?

Trains ``ISRGTrainer_Tiny_20epochs_BoxHeavy`` (``box_heavy/box_heavy_trainer.py``: a 3D box first in 60 %
of iterations instead of 35 %, the rest as ``ISRGTrainer_Tiny_20epochs``) on one fold of the lung
nodules with ``nnUNetv2_train`` (its own validation runs both protocols), then prints its Dice after
one click and after the box beside those of the same fold of ``ISRGTrainer_Tiny_20epochs`` from the
nodules' cross-validation (``python scripts/benchmark_realdata.py --datasets nodules`` first). About
9 minutes on 2 cores; a finished fold is not retrained.

    python scripts/experiments/box_heavy_training.py [--fold 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

from script_support import nnunet_env, run_command  # noqa: E402

DATASET, PLANS = "Dataset601_LIDCNodules", "nnUNetISRGPlans"
BASELINE, VARIANT = "ISRGTrainer_Tiny_20epochs", "ISRGTrainer_Tiny_20epochs_BoxHeavy"


def first_prompt_dice(results: Path, trainer: str, fold: int) -> dict[str, float]:
    folder = results / DATASET / f"{trainer}__{PLANS}__3d_fullres" / f"fold_{fold}" / "validation"
    summary = json.loads((folder / "interactive_summary.json").read_text())
    clicks, boxed = summary["mean_per_click"]["dice"], summary["cvpr25"]["dice_per_interaction"]
    return {"one click": clicks[0], "box": boxed[0], "box - click": boxed[0] - clicks[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fold", type=int, default=0)
    args = p.parse_args()
    env = nnunet_env()
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(HERE / "box_heavy" / "ext")])
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(HERE / "box_heavy"), env.get("PYTHONPATH", "")) if x)
    results = Path(env["nnUNet_results"])
    done = results / DATASET / f"{VARIANT}__{PLANS}__3d_fullres" / f"fold_{args.fold}" / "validation"
    if not (done / "interactive_summary.json").is_file():
        run_command(["nnUNetv2_train", "601", "3d_fullres", str(args.fold), "-tr", VARIANT, "-p", PLANS,
                     "-device", "cpu"], env)
    for trainer in (BASELINE, VARIANT):
        scores = first_prompt_dice(results, trainer, args.fold)
        print(f"{trainer:<40} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
