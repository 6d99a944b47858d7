"""What a trained model draws after the first click: predicted against true lesion volume per case.

For each validation case of a fold of the demo phantom, the whole 64^3 volume is the crop; the
protocol's first click (the interior point farthest from the boundary) is given, and the script
prints the predicted and true lesion volumes (voxels), the Dice and the model's own IoU estimate,
with the lesion type and the number of training lesions of that type in the fold. It shows
whether the model follows the lesion or draws a blob of typical size at the click, and whether
the kinds of lesion it has seen least are the ones it misses.

    python scripts/experiments/first_click_masks.py                      # the demo's ISRGTrainer_Tiny, fold 0
    python scripts/experiments/first_click_masks.py --training-weights   # its raw weights, not their average
    python scripts/experiments/first_click_masks.py --cases training     # the fold's training cases instead
    python scripts/experiments/first_click_masks.py --checkpoint checkpoint_latest.pth   # another checkpoint of the fold
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]  # the package, and fit_few_cases beside this file

from fit_few_cases import add_demo_fold_arguments, first_click_predictions, load_fold  # noqa: E402
from nnunet_isrg.attributes import ATTRIBUTES_FILENAME  # noqa: E402
from nnunet_isrg.inference.model_loading import load_trained_model  # noqa: E402
from nnunet_isrg.training.isrg_trainer import TRAINING_WEIGHTS_KEY  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_fold_arguments(p)
    p.add_argument("--training-weights", action="store_true",
                   help="score the raw training weights stored beside the averaged ones in the checkpoint")
    p.add_argument("--checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file inside fold_X (default checkpoint_final.pth)")
    p.add_argument("--cases", choices=("validation", "training"), default="validation",
                   help="the fold's validation cases (default) or its training cases")
    args = p.parse_args()

    torch.set_num_threads(1)
    images, masks, clicks, names, train, val = load_fold(args.raw, args.preprocessed, args.fold)
    cases = val if args.cases == "validation" else train
    network = load_trained_model(args.model, folds=(args.fold,), checkpoint=args.checkpoint).network
    if args.training_weights:
        checkpoint = torch.load(args.model / f"fold_{args.fold}" / args.checkpoint, map_location="cpu",
                                weights_only=False)
        if TRAINING_WEIGHTS_KEY not in checkpoint:
            raise SystemExit(f"{args.model}/fold_{args.fold}/{args.checkpoint} has no {TRAINING_WEIGHTS_KEY!r}: "
                             "it was trained without a weight average")
        network.load_state_dict(checkpoint[TRAINING_WEIGHTS_KEY])
    # lesion types and how many training lesions of each type the fold has: is an unseen kind of
    # lesion what the model misses?
    lesion_type = {case: entry.get("lesion_type", "?")
                   for case, entry in json.loads((args.raw / ATTRIBUTES_FILENAME).read_text()).items()}
    n_training = Counter(lesion_type.get(names[i], "?") for i in train)
    print(f"{'case':<10} {'lesion type':<20} {'n train':>7} {'true':>6} {'pred':>6} {'Dice':>5} {'IoU est.':>8}")
    true, pred, dices, ious, dice_by_count = [], [], [], [], defaultdict(list)
    predictions = first_click_predictions(network, images[cases], masks[cases], clicks[cases])
    for i, (mask, dice, iou) in zip(cases, predictions):
        kind = lesion_type.get(names[i], "?")
        true.append(int(masks[i].sum()))
        pred.append(int(mask.sum()))
        dices.append(dice)
        ious.append(iou)
        dice_by_count[n_training[kind]].append(dice)
        print(f"{names[i]:<10} {kind:<20} {n_training[kind]:>7} {true[-1]:>6} {pred[-1]:>6} {dice:>5.2f} {iou:>8.2f}")
    print(f"mean Dice {np.mean(dices):.3f}; true volumes {min(true)}-{max(true)}, predicted {min(pred)}-{max(pred)}; "
          f"Pearson r of log volumes {np.corrcoef(np.log(true), np.log(pred))[0, 1]:.2f}; "
          f"IoU estimates {min(ious):.2f}-{max(ious):.2f}")
    print("mean Dice by training lesions of the same type: " + ", ".join(
        f"{n}: {np.mean(d):.2f} ({len(d)} case{'s' if len(d) > 1 else ''})" for n, d in sorted(dice_by_count.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
