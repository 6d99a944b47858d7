"""Fits the tiny ISRG model to a few phantom cases, one click at each lesion's centre, no augmentation.

A capacity and optimisation check behind "what limits the tiny model" (docs/demo_quality.md): if
the network cannot fit four cases, the trainer's budget is not the problem. Prints the Dice on the
fitted cases every 25 iterations (about 100 s for 150 iterations on one CPU thread).

    python scripts/experiments/fit_few_cases.py                       # the demo's phantom, first 4 training cases
    python scripts/experiments/fit_few_cases.py --no-click-prior      # the same without the mask head's click prior
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nnunet_isrg.clicks import first_click_deterministic  # noqa: E402
from nnunet_isrg.evaluation.metrics import dice  # noqa: E402
from nnunet_isrg.modeling.build import build_isrg_model  # noqa: E402
from nnunet_isrg.training.losses import soft_dice_loss  # noqa: E402


def load_cases(raw: Path, plans: Path, n: int):
    """First ``n`` training cases of a 64^3 phantom, CT-normalised with the plans' foreground statistics."""
    labels = sorted((raw / "labelsTr").glob("*.nii.gz"))[:n]
    if len(labels) < n or not plans.exists():
        raise SystemExit(f"{raw / 'labelsTr'} has {len(labels)} cases ({n} requested) and {plans} "
                         f"{'exists' if plans.exists() else 'is missing'}: run `make demo` first")
    props = json.loads(plans.read_text())["foreground_intensity_properties_per_channel"]["0"]
    clip, mean, std = (props["percentile_00_5"], props["percentile_99_5"]), props["mean"], props["std"]
    images, masks, clicks = [], [], []
    for f in labels:
        case = f.name[:-len(".nii.gz")]
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))).astype(np.float32)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(f))) > 0
        images.append((np.clip(hu, *clip) - mean) / std)
        masks.append(mask)
        clicks.append(first_click_deterministic(mask, (1.0, 1.0, 1.0)))
    return (torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(masks))[:, None],
            torch.tensor(clicks, dtype=torch.float32)[:, None], [f.name for f in labels])


def load_fold(raw: Path, preprocessed: Path, fold: int = 0):
    """Every case of the phantom, CT-normalised as :func:`load_cases`, and the indices of ``fold``'s
    training and validation cases in ``preprocessed/splits_final.json``."""
    splits_file = preprocessed / "splits_final.json"
    if not splits_file.is_file():
        raise SystemExit(f"{splits_file} is missing: run `make demo` first")
    split = json.loads(splits_file.read_text())[fold]
    images, masks, clicks, files = load_cases(raw, preprocessed / "nnUNetPlans.json",
                                              len(split["train"]) + len(split["val"]))
    names = [f[:-len(".nii.gz")] for f in files]
    train = [i for i, n in enumerate(names) if n in split["train"]]
    val = [i for i, n in enumerate(names) if n in split["val"]]
    return images, masks, clicks, names, train, val


def add_demo_fold_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --raw, --preprocessed and --fold, defaulting to the demo's trained model and phantom."""
    work = REPO / "work"
    parser.add_argument("--model", type=Path, default=work / "nnUNet_results" / "Dataset500_ISRGPhantom"
                        / "ISRGTrainer_Tiny__nnUNetPlans__3d_fullres")
    parser.add_argument("--raw", type=Path, default=work / "nnUNet_raw" / "Dataset500_ISRGPhantom")
    parser.add_argument("--preprocessed", type=Path, default=work / "nnUNet_preprocessed" / "Dataset500_ISRGPhantom")
    parser.add_argument("--fold", type=int, default=0)


def first_click_predictions(model, images, masks, clicks):
    """One positive click per case (no gradient): yields (predicted mask, Dice, predicted IoU)."""
    with torch.no_grad():
        for x, y, p in zip(images, masks, clicks):
            out = model(x[None], p[None], torch.ones(1, 1, dtype=torch.long))
            pred = out["mask_logits"][0] > 0
            yield pred, dice(pred[0].numpy(), y[0].numpy()), float(out["iou_pred"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", type=Path, default=REPO / "work" / "nnUNet_raw" / "Dataset500_ISRGPhantom")
    p.add_argument("--plans", type=Path,
                   default=REPO / "work" / "nnUNet_preprocessed" / "Dataset500_ISRGPhantom" / "nnUNetPlans.json")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-click-prior", action="store_true", help="zero and freeze the mask head's click prior")
    args = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y, points, names = load_cases(args.raw, args.plans, args.cases)
    labels = torch.ones(len(names), 1, dtype=torch.long)
    print("cases:", ", ".join(f"{n} ({int(m.sum())} voxels)" for n, m in zip(names, y)))
    model = build_isrg_model("tiny")
    if args.no_click_prior:
        for param in model.mask_head.click_prior.parameters():
            param.data.zero_()
            param.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], args.lr, weight_decay=0.05,
                            betas=(0.9, 0.98))
    t0 = time.time()
    for it in range(args.iterations):
        idx = torch.tensor([it % len(names), (it + 1) % len(names)])
        out = model(x[idx], points[idx], labels[idx])
        loss = soft_dice_loss(out["mask_logits"], y[idx]).mean() + \
            F.binary_cross_entropy_with_logits(out["mask_logits"], y[idx].float())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (it + 1) % 25 == 0:
            with torch.no_grad():
                pred = model(x, points, labels)["mask_logits"] > 0
            dice = [2 * (a & b).sum().item() / max(a.sum().item() + b.sum().item(), 1) for a, b in zip(pred, y)]
            print(f"iteration {it + 1}: Dice {' '.join(f'{d:.2f}' for d in dice)}  ({time.time() - t0:.0f} s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
