"""A quick A/B check of a model change: train on fold 0's training cases, score its validation cases.

Trains the tiny ISRG model on the demo phantom's fold-0 training cases (whole 64^3 volumes, random
flips, one click at a random interior point of the lesion, soft Dice + BCE) and prints the mean
first-click Dice on the fold's validation cases (click at the interior point farthest from the
boundary) every ``--every`` iterations. No nnU-Net augmentation, no correction rounds, no
attributes: about 0.37 s per iteration on two cores, so 400 iterations take under 3 minutes,
against 16 for the demo's training. It ranks changes early in training; the demo measures them.

    python scripts/experiments/quick_fold_fit.py                     # 400 iterations, scores every 100
    python scripts/experiments/quick_fold_fit.py --iterations 1800 --every 200
    python scripts/experiments/quick_fold_fit.py --ema 0.99          # score a moving average of the weights
    python scripts/experiments/quick_fold_fit.py --crop 32 --patch 4 # 32^3 crops at the click, 4-voxel patches
    python scripts/experiments/quick_fold_fit.py --train-score       # also the fitted (training) cases
    python scripts/experiments/quick_fold_fit.py --architecture click-unet --crop 48   # a conv reference
    python scripts/experiments/quick_fold_fit.py --extra-raw $nnUNet_raw/Dataset502_ISRGPhantomExtra  # more data

It ends with the learning curve as a markdown table (the form of docs/demo_quality.md's tables);
``--out results/quick_fit/NAME`` also writes it to NAME.md and the per-case figures to NAME.json.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]  # the package, and fit_few_cases beside this file

from fit_few_cases import first_click_predictions, load_cases, load_fold  # noqa: E402
from nnunet_isrg.files import write_json_atomic  # noqa: E402
from nnunet_isrg.clicks import sample_target_and_first_click  # noqa: E402
from nnunet_isrg.evaluation.metrics import dice  # noqa: E402
from nnunet_isrg.modeling.build import build_isrg_model  # noqa: E402
from nnunet_isrg.modeling.prompt_encoder import gaussian_click_maps  # noqa: E402
from nnunet_isrg.training.losses import soft_dice_loss  # noqa: E402
from nnunet_isrg.training.weight_average import WeightAverage  # noqa: E402


class ClickUNet(torch.nn.Module):
    """Reference model, not ISRG: nnU-Net's PlainConvUNet (instance norm, leaky ReLU, two convs per
    stage) reading the image and Gaussian maps of the positive and negative clicks at full
    resolution as input channels, as nnInteractive feeds its prompts. Same call as the ISRG model:
    (image (B, 1, D, H, W), points (B, N, 3) voxel zyx, labels (B, N)) -> {"mask_logits", "iou_pred"}.
    """

    def __init__(self, crop_size: int, base_features: int = 8, stages: int = 4, click_sigma: float = 2.0) -> None:
        super().__init__()
        features = [base_features * 2 ** i for i in range(stages)]
        self.unet = PlainConvUNet(1 + 2, stages, features, torch.nn.Conv3d, 3, [1] + [2] * (stages - 1),
                                  2, 1, 2, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                                  norm_op_kwargs={"eps": 1e-5, "affine": True},
                                  nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
        self.crop_size = (crop_size,) * 3
        self.click_sigma = click_sigma

    def forward(self, image: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> dict:
        maps = gaussian_click_maps(points, labels, self.crop_size, self.crop_size, self.click_sigma, image.dtype)
        logits = self.unet(torch.cat([image, maps], dim=1))
        return {"mask_logits": logits, "iou_pred": logits.new_zeros(len(image), 1)}


def crop_at(images: torch.Tensor, masks: torch.Tensor, centres: torch.Tensor, size: int):
    """Cubic ``size`` crops of (B, 1, D, H, W) volumes at ``centres`` (B, 3) voxel (z, y, x), kept
    inside the volume; returns the crops and their corners (B, 3)."""
    if size > min(images.shape[2:]):
        raise SystemExit(f"--crop {size} is larger than the volumes ({tuple(images.shape[2:])} voxels)")
    limits = torch.tensor(images.shape[2:]) - size
    corners = (centres.round().long() - size // 2).clamp(min=0).minimum(limits)
    xs, ys = [], []
    for x, y, (z0, y0, x0) in zip(images, masks, corners.tolist()):
        xs.append(x[:, z0:z0 + size, y0:y0 + size, x0:x0 + size])
        ys.append(y[:, z0:z0 + size, y0:y0 + size, x0:x0 + size])
    return torch.stack(xs), torch.stack(ys), corners


def first_click_dice(model, images, masks, clicks, crop: int | None = None) -> list[float]:
    """Dice after the deterministic first click, over the whole volume (a crop centred at the click)."""
    model.eval()
    if crop is None:
        scores = [dice for _, dice, _ in first_click_predictions(model, images, masks, clicks)]
    else:
        x, cropped, corners = crop_at(images, masks, clicks[:, 0], crop)
        scores = []
        for (pred, _, _), y, (z0, y0, x0) in zip(
                first_click_predictions(model, x, cropped, clicks - corners[:, None].float()),
                masks, corners.tolist()):
            full = torch.zeros_like(y)
            full[:, z0:z0 + crop, y0:y0 + crop, x0:x0 + crop] = pred
            scores.append(dice(full[0].numpy(), y[0].numpy()))
    model.train()
    return scores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    preprocessed = REPO / "work" / "nnUNet_preprocessed" / "Dataset500_ISRGPhantom"
    p.add_argument("--raw", type=Path, default=REPO / "work" / "nnUNet_raw" / "Dataset500_ISRGPhantom")
    p.add_argument("--preprocessed", type=Path, default=preprocessed,
                   help="nnU-Net's preprocessed folder of the dataset (plans and splits_final.json)")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--crop", type=int, default=None,
                   help="train and predict on cubic crops of this size around the click (jittered in training)")
    p.add_argument("--patch", type=int, default=None, help="the encoder's patch size (default: the preset's)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--architecture", choices=("isrg", "click-unet"), default="isrg",
                   help="click-unet: a reference that is not ISRG, nnU-Net's PlainConvUNet with the clicks as "
                        "input channels (nnInteractive's way): is the ISRG network the limit, or the data?")
    p.add_argument("--unet-features", type=int, default=8, help="click-unet: features of its first stage")
    p.add_argument("--ema", type=float, default=None,
                   help="score an exponential moving average of the weights with this decay (e.g. 0.99)")
    p.add_argument("--extra-raw", type=Path, default=None,
                   help="another phantom raw dataset (e.g. `isrg phantom --seed 1`) whose imagesTr/labelsTr cases "
                        "are added to the training cases: does more data help?")
    p.add_argument("--out", type=Path, default=None,
                   help="write the learning curve to OUT.json and its table to OUT.md (e.g. results/quick_fit/NAME)")
    p.add_argument("--train-score", action="store_true",
                   help="also score the fold's training cases (deterministic click; not the --extra-raw ones): "
                        "underfitting or overfitting?")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, masks, clicks, _, train, val = load_fold(args.raw, args.preprocessed)
    scored_train = torch.tensor(train)
    if args.extra_raw is not None:
        n_extra = len(list((args.extra_raw / "labelsTr").glob("*.nii.gz")))
        if not n_extra:
            raise SystemExit(f"--extra-raw: {args.extra_raw / 'labelsTr'} holds no case (*.nii.gz)")
        extra = load_cases(args.extra_raw, args.preprocessed / "nnUNetPlans.json", n_extra)
        if extra[0].shape[2:] != images.shape[2:]:
            raise SystemExit(f"--extra-raw: {args.extra_raw} has volumes of {tuple(extra[0].shape[2:])} voxels, "
                             f"{args.raw} of {tuple(images.shape[2:])}; generate it with the same --size")
        train = train + list(range(len(images), len(images) + n_extra))
        images, masks, clicks = (torch.cat([a, b]) for a, b in zip((images, masks, clicks), extra[:3]))
        print(f"{n_extra} extra training cases from {args.extra_raw}")
    train = torch.tensor(train)
    print(f"fold 0: {len(train)} training, {len(val)} validation cases")

    if args.architecture == "click-unet":
        model = ClickUNet(args.crop or images.shape[-1], args.unet_features)
    else:
        overrides = {} if args.patch is None else {"patch_size": args.patch}
        model = build_isrg_model("tiny", crop_size=args.crop, **overrides)
    print(f"{args.architecture}: {sum(t.numel() for t in model.parameters()) / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=0.05, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(0)
    average = None if args.ema is None else WeightAverage(model, args.ema)
    t0 = time.time()
    series: list[dict] = []
    for it in range(args.iterations):
        idx = train[torch.randint(len(train), (args.batch,), generator=generator)]
        x, y = images[idx], masks[idx]
        for axis in (2, 3, 4):
            if torch.rand(1, generator=generator) < 0.5:
                x, y = x.flip(axis), y.flip(axis)
        target, points, labels = sample_target_and_first_click(y, generator, interior_fraction=0.3)
        if args.crop is not None:
            jitter = (torch.rand(len(idx), 3, generator=generator) - 0.5) * (args.crop / 2)
            x, target, corners = crop_at(x, target, points[:, 0] + jitter, args.crop)
            points = points - corners[:, None].float()
        logits = model(x, points, labels)["mask_logits"]
        loss = soft_dice_loss(logits, target).mean() + F.binary_cross_entropy_with_logits(logits, target.float())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if average is not None:
            average.update(model)
        if (it + 1) % args.every == 0:
            with average.swapped_into(model) if average is not None else contextlib.nullcontext():
                scores = first_click_dice(model, images[val], masks[val], clicks[val], args.crop)
                row = {"iterations": it + 1, "validation": float(np.mean(scores)), "validation_per_case": scores,
                       "seconds": time.time() - t0}
                if args.train_score:
                    row["training"] = float(np.mean(first_click_dice(
                        model, images[scored_train], masks[scored_train], clicks[scored_train], args.crop)))
            series.append(row)
            fitted = f", training cases {row['training']:.3f}" if args.train_score else ""
            print(f"iteration {it + 1}: validation Dice after one click {row['validation']:.3f} "
                  f"({' '.join(f'{s:.2f}' for s in scores)}){fitted}  {row['seconds']:.0f} s", flush=True)
    table = learning_curve_table(series)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out.with_suffix(".json"), {"command": " ".join(sys.argv), "series": series})
        tmp = args.out.with_suffix(".md.tmp")
        tmp.write_text(table + "\n")
        tmp.replace(args.out.with_suffix(".md"))
        print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0


def learning_curve_table(series: list[dict]) -> str:
    """Markdown table of the mean first-click Dice per scored iteration count (docs/demo_quality.md's form)."""
    lines = ["| iterations | " + " | ".join(f"{r['iterations']:,}" for r in series) + " |",
             "|---|" + "---|" * len(series)]
    if series and "training" in series[0]:
        lines.append("| training cases | " + " | ".join(f"{r['training']:.3f}" for r in series) + " |")
    lines.append("| validation cases | " + " | ".join(f"{r['validation']:.3f}" for r in series) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
