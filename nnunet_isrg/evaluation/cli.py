"""``isrg evaluate`` and ``isrg compare`` (wired by nnunet_isrg/cli.py; also ``python -m nnunet_isrg.evaluation.cli``).

    isrg evaluate -d 500 -tr ISRGTrainer_Tiny nnUNetTrainer_CPUBudget -f 0 1 2 3 4
    isrg compare -d 500 --baseline nnUNetTrainer_CPUBudget \\
        --trainers ISRGTrainer_Tiny_Vanilla ISRGTrainer_Tiny_PointRefinement ISRGTrainer_Tiny_FeatureSynergy \\
        ISRGTrainer_Tiny -f 0 --attribute-baseline --classical-baseline --zero-shot

A missing trainer, fold or validation prints what is missing (and how to produce it) and exits
with status 2, writing nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .aggregate import CROSSVAL_JSON, MissingResultsError, evaluate_trainer, find_missing


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetNNN_Name)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="folds to aggregate (default 0 1 2 3 4)")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _common(parser)
    parser.add_argument("-tr", "--trainers", nargs="+", required=True,
                        help="trainer class names (ISRG trainers and/or nnU-Net baselines)")
    parser.add_argument("--n-clicks", type=int, default=5,
                        help="clicks to repeat a no-click baseline's values over (default 5)")
    return parser


def run_evaluate_from_args(args: argparse.Namespace) -> int:
    missing = find_missing(args.dataset, args.trainers, args.plans, args.configuration, args.folds)
    if missing:
        print(MissingResultsError(missing, "evaluation"), file=sys.stderr)
        return 2
    for tr in args.trainers:
        ev = evaluate_trainer(args.dataset, tr, args.plans, args.configuration, args.folds, n_clicks=args.n_clicks)
        pooled = ev.summary["pooled"]
        dice = ", ".join(f"{d:.3f}" for d in pooled["mean_per_click"]["dice"])
        line = f"{tr} ({ev.kind}, folds {ev.folds}, {pooled['n_cases']} cases): mean Dice per click [{dice}]"
        attrs = pooled.get("attributes")
        if attrs and attrs.get("mean_accuracy") is not None:
            line += f"; mean attribute accuracy {attrs['mean_accuracy']:.3f}"
        print(line)
        print(f"  wrote {ev.folder / CROSSVAL_JSON} (+ .csv)")
    return 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _common(parser)
    parser.add_argument("--baseline", "--baselines", dest="baselines", nargs="*", default=["nnUNetTrainer"],
                        help="no-click nnU-Net trainer(s) scored on the same cases (default nnUNetTrainer; "
                             "pass none to leave the baseline out)")
    parser.add_argument("--trainers", "-tr", nargs="+", required=True, help="interactive (ISRG) trainers, in row order")
    parser.add_argument("--clicks", nargs="+", type=int, default=[1, 3, 5], help="clicks in the table (default 1 3 5)")
    parser.add_argument("--attribute-baseline", action="store_true",
                        help="add the non-deep attribute baseline (image measurements + scikit-learn) to Table 3")
    parser.add_argument("--classical-baseline", action="store_true",
                        help="add the classical interactive baseline (region growing / threshold + connected component "
                             "from the clicks, setting chosen per fold on its training cases) to Table 2")
    parser.add_argument("--classical-max-training-cases", type=int, default=100,
                        help="training cases per fold (evenly spread) that choose the classical setting "
                             "(default %(default)s; 0: all)")
    parser.add_argument("--zero-shot", action="store_true",
                        help="add the zero-shot block: every fold's model on the raw dataset's imagesTs/labelsTs")
    parser.add_argument("--zero-shot-dir", default=None,
                        help="folder with imagesTs/labelsTs (+ attributesTs.json) of held-out cases "
                             "(default: the raw dataset)")
    parser.add_argument("--protocol", choices=["clicks", "cvpr25"], default="clicks",
                        help="cvpr25: also the CVPR 2025 challenge's protocol (the lesion's 3D box, then up to 5 clicks) "
                             "of the ISRG trainers, from their validation's reports_cvpr25/ (default: clicks only)")
    parser.add_argument("-o", "--out", default=None,
                        help="output folder (default $nnUNet_results/DatasetX/isrg_comparison__PLANS__CONF)")
    parser.add_argument("-device", "--device", default="cpu", help="device for the zero-shot block (cpu or cuda)")
    return parser


def run_compare_from_args(args: argparse.Namespace) -> int:
    # imported here: `isrg` loads this module for every subcommand, and the comparison brings nnU-Net's
    # predictor, the ISRG network and scikit-learn's forests with it
    from .compare import ComparisonRequest, run_comparison

    req = ComparisonRequest(dataset=args.dataset, trainers=list(args.trainers), baselines=list(args.baselines or []),
                            plans=args.plans, configuration=args.configuration, folds=list(args.folds),
                            clicks=list(args.clicks), attribute_baseline=args.attribute_baseline,
                            classical_baseline=args.classical_baseline,
                            classical_max_training_cases=args.classical_max_training_cases or None,
                            zero_shot=args.zero_shot, zero_shot_dir=args.zero_shot_dir, out_dir=args.out, device=args.device,
                            cvpr25=args.protocol == "cvpr25")
    try:
        doc = run_comparison(req)
    except MissingResultsError as e:
        print(e, file=sys.stderr)
        return 2
    print(open(doc["files"]["markdown"]).read())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnunet_isrg.evaluation.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_arguments(sub.add_parser("evaluate", help="aggregate validation across folds"))
    add_compare_arguments(sub.add_parser("compare", help="baselines versus ISRG, paper layout"))
    args = parser.parse_args(argv)
    return run_evaluate_from_args(args) if args.command == "evaluate" else run_compare_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
