#!/usr/bin/env python
"""Is the phantom honest? Recover each attribute from simple measurements inside the true mask.

Generates a phantom dataset (or takes one with --dataset), measures the evidence of every lesion
(:mod:`nnunet_isrg.report.evidence`), and scores one random forest per attribute with stratified
k-fold cross-validation (:mod:`nnunet_isrg.evaluation.attribute_baseline`), next to the
majority-class rate. Writes ``results/phantom_recoverability.json`` and ``.md``; with
``--update-readme`` also the README section "phantom-recoverability".

    python scripts/phantom_recoverability.py                 # 120 cases, 64^3, 1.5 mm, seed 0
    python scripts/phantom_recoverability.py --dataset $nnUNet_raw/Dataset501_ISRGPhantom
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # the package, and script_support beside this file

from nnunet_isrg.files import write_json_atomic  # noqa: E402
from nnunet_isrg.data.phantom import generate_phantom_dataset  # noqa: E402
from nnunet_isrg.evaluation.attribute_baseline import cross_validated_accuracy, extract_features  # noqa: E402
from script_support import replace_readme_section  # noqa: E402

SECTION = "phantom-recoverability"


def markdown_table(result: dict) -> str:
    p = result["phantom"]
    lines = [
        f"Attributes recovered from the phantom image inside the ground-truth mask by measured evidence "
        f"(HU contrast with a 1-4 mm shell, internal spread, edge width and boundary gradient, sphericity "
        f"and other shape descriptors, shell tissue contact) and a random forest per attribute, "
        f"{result['n_splits']}-fold stratified cross-validation, {result['n_cases']} cases "
        f"({'x'.join(map(str, p['size_xyz']))} voxels, {'x'.join(f'{v:g}' for v in p['spacing_xyz'])} mm, "
        f"seed {p['seed']}). Majority rate: accuracy of always answering the most frequent class.",
        "",
        "| attribute | CV accuracy | balanced accuracy | majority-class rate | n |",
        "|---|---|---|---|---|",
    ]
    for attr, r in result["attributes"].items():
        lines.append(f"| {attr} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | {r['majority_rate']:.3f} | {r['n']} |")
    lines += ["", f"Produced by `python scripts/phantom_recoverability.py` ({result['seconds']:.0f} s)."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=None, help="existing phantom dataset folder (else generate)")
    ap.add_argument("-n", "--n-cases", type=int, default=120)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--spacing", type=float, nargs="+", default=[1.5], help="mm, one value or x y z")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("-j", "--num-workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "results", help="results folder (default results/)")
    ap.add_argument("--update-readme", action="store_true", help=f"replace the README section '{SECTION}'")
    args = ap.parse_args(argv)

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="isrg-recoverability-") as tmp:
        dataset = args.dataset
        if dataset is None:
            spacing = args.spacing[0] if len(args.spacing) == 1 else tuple(args.spacing)
            dataset = generate_phantom_dataset(tmp, dataset_id=999, name="Recoverability", n_cases=args.n_cases,
                                               size=args.size, spacing=spacing, seed=args.seed,
                                               num_workers=args.num_workers)
        case_ids, X, feature_names, labels = extract_features(dataset, num_workers=args.num_workers)
        with open(Path(dataset) / "dataset.json") as f:
            phantom = (json.load(f).get("isrg") or {}).get("phantom") or {}
    scores = cross_validated_accuracy(X, labels, n_splits=args.folds, random_state=args.seed)
    result = {
        "n_cases": len(case_ids), "n_splits": args.folds, "classifier": "median imputation + random forest (300 trees)",
        "features": feature_names, "attributes": scores, "seconds": time.time() - t0,
        "dataset": str(args.dataset) if args.dataset else None,
        "phantom": {"size_xyz": phantom.get("size_xyz", [args.size] * 3),
                    "spacing_xyz": phantom.get("spacing_xyz", args.spacing * (3 if len(args.spacing) == 1 else 1)),
                    "seed": phantom.get("seed", args.seed), "version": phantom.get("version")},
        "python": platform.python_version(),
    }
    md = markdown_table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "phantom_recoverability.json", result)
    tmp_md = args.out / ".phantom_recoverability.md.tmp"
    tmp_md.write_text(md + "\n")
    tmp_md.replace(args.out / "phantom_recoverability.md")
    print(md)
    if args.update_readme:
        replace_readme_section(SECTION, md)
    low = [a for a, r in scores.items() if not r["accuracy"] > r["majority_rate"] + 0.1]
    if low:
        print(f"WARNING: attributes barely above the majority rate: {low}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
