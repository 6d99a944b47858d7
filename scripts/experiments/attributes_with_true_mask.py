"""Are the attributes misread because of the masks? The trained model's attributes with its own mask
against the same model reading the true mask.

The attribute head pools image features inside the mask and in a shell around it
(`modeling/lesion_pooling.py`). For each validation case of the demo's fold, after the protocol's
first click (whole 64^3 volume as the crop), this scores the attributes twice: as predicted, and
with the pooling handed the ground-truth lesion at the low-res logits' resolution (+-8 logits)
instead of the model's own mask. Everything else (tokens, click, weights) is the same.

    python scripts/experiments/attributes_with_true_mask.py            # the demo's ISRGTrainer_Tiny, fold 0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]  # the package, and fit_few_cases beside this file

from fit_few_cases import add_demo_fold_arguments, load_fold  # noqa: E402
from nnunet_isrg.attributes import ATTRIBUTES_FILENAME, encode_case  # noqa: E402
from nnunet_isrg.inference.model_loading import load_trained_model  # noqa: E402


def attribute_logits(network, embedding, click, true_low_res=None) -> dict:
    """{attribute: logits (1, C)} after one positive click at ``click`` (1, 1, 3) voxel zyx, decoded
    from ``network.encode_image(crop)``; with ``true_low_res`` the lesion pooling reads that
    (1, 1, d, h, w) logit map instead of the model's own low-res logits."""
    hook = None
    if true_low_res is not None:
        hook = network.lesion_pooling.register_forward_pre_hook(lambda module, args: (true_low_res, *args[1:]))
    try:
        with torch.no_grad():
            out = network.decode(embedding, click, torch.ones(1, 1, dtype=torch.long))
    finally:
        if hook is not None:
            hook.remove()
    return out["attribute_logits"]


def predicted_classes(logits: dict) -> np.ndarray:
    return np.array([int(v.argmax(1)) for v in logits.values()])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_fold_arguments(p)
    args = p.parse_args()

    torch.set_num_threads(1)
    images, masks, clicks, names, _, val = load_fold(args.raw, args.preprocessed, args.fold)
    trained = load_trained_model(args.model, folds=(args.fold,))
    network = trained.network
    if network.lesion_pooling is None:
        raise SystemExit(f"{args.model}: this model has no lesion pooling, so it reads no mask for its attributes")
    schema = trained.schema
    table = json.loads((args.raw / ATTRIBUTES_FILENAME).read_text())
    own, true_mask, truth = [], [], []
    for i in val:
        low_res = F.adaptive_avg_pool3d(masks[i:i + 1].float(), network.low_res_size)
        true_low_res = (low_res - 0.5) * 16  # +-8 logits, the partial voxels of the boundary in between
        with torch.no_grad():
            embedding = network.encode_image(images[i:i + 1])  # once per case, decoded twice
        own.append(predicted_classes(attribute_logits(network, embedding, clicks[i:i + 1, :1])))
        true_mask.append(predicted_classes(attribute_logits(network, embedding, clicks[i:i + 1, :1], true_low_res)))
        truth.append(encode_case(table[names[i]], schema))
    own, true_mask, truth = np.array(own), np.array(true_mask), np.array(truth)
    print(f"{len(val)} validation cases of fold {args.fold}, attributes after the first click")
    print(f"{'attribute':<14} {'own mask':>9} {'true mask':>9}")
    for k, name in enumerate(schema):
        print(f"{name:<14} {np.mean(own[:, k] == truth[:, k]):>9.3f} {np.mean(true_mask[:, k] == truth[:, k]):>9.3f}")
    print(f"{'mean':<14} {np.mean(own == truth):>9.3f} {np.mean(true_mask == truth):>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
