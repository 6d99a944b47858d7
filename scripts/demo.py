"""The main job on the embedded default data (``make demo``).

Phantom -> nnU-Net planning and preprocessing -> ``nnUNetv2_train ... -tr ISRGTrainer_Tiny`` on
fold 0 (CPU) -> interactive validation -> Dice after 1, 3 and 5 clicks, the CVPR 2025 protocol (a box
first, then clicks), attribute accuracies and one case's report, also written to
``results/demo_summary.json``.

Every step is the real command a user would type; each is skipped when its output already
exists (``--fresh`` starts over).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # the package, and script_support beside this file

from nnunet_isrg.files import write_json_atomic  # noqa: E402
from script_support import nnunet_env, run_command as run  # noqa: E402


def demo_markdown(out: dict) -> str:
    dice = out["dice_per_click"]
    lines = [f"`make demo` on this 2-core CPU: {out['trainer']}, fold {out['fold']} of the {out['dataset']} "
             f"phantom ({out['n_cases']} validation cases), deterministic click protocol. Written by "
             f"`python scripts/demo.py --update-readme` from `results/demo_summary.json`; total run time "
             f"{out['timings_s']['total_s'] / 60:.1f} min (training and validation "
             f"{out['timings_s']['train_and_validate_s'] / 60:.1f} min; phantom generation and nnU-Net planning/preprocessing "
             f"add about 1.5 min when they are not already done).", "",
             "| clicks | " + " | ".join(str(i + 1) for i in range(len(dice))) + " |",
             "|---|" + "---|" * len(dice),
             "| mean Dice | " + " | ".join(f"{d:.3f}" for d in dice) + " |", ""]
    boxed = out.get("cvpr25")
    if boxed:
        n = len(boxed["dice_per_interaction"])
        lines += ["CVPR 2025 interactive protocol on the same cases: the lesion's tight 3D box first, then clicks at "
                  "the centre of the largest error component:", "",
                  "| interaction | box | " + " | ".join(f"box + {k}" for k in range(1, n)) + " | AUC |",
                  "|---|" + "---|" * (n + 1),
                  "| mean Dice | " + " | ".join(f"{d:.3f}" for d in boxed["dice_per_interaction"])
                  + f" | {boxed['auc_dice']:.3f} |", "",
                  f"A box as the first prompt against one click: {boxed['dice_per_interaction'][0]:.3f} vs {dice[0]:.3f} "
                  f"({boxed['dice_per_interaction'][0] - dice[0]:+.3f}); final Dice of the box protocol "
                  f"{boxed['final_dice']:.3f} vs {dice[-1]:.3f} after {len(dice)} clicks.", ""]
    lines += ["| attribute | accuracy | majority-class rate |", "|---|---|---|"]
    for name, acc in out["attribute_accuracy"].items():
        if acc is not None:
            lines.append(f"| {name} | {acc:.3f} | {out['attribute_majority_rate'][name]:.3f} |")
    lines.append(f"| **mean** | **{out['attribute_accuracy_mean']:.3f}** | |")
    confusion = out.get("attribute_confusion") or {}
    if confusion:
        lines += ["", "Confusion per attribute at the last click (rows: truth, columns: prediction; cases):"]
    for name, entry in confusion.items():
        classes = entry["classes"]
        lines += ["", f"| {name} | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        lines += [f"| {truth} | " + " | ".join(str(n) for n in row) + " |"
                  for truth, row in zip(classes, entry["matrix"])]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-id", type=int, default=500)
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--trainer", default="ISRGTrainer_Tiny")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--fresh", action="store_true", help="delete the demo's dataset and results first")
    parser.add_argument("--out", default=str(REPO / "results" / "demo_summary.json"))
    parser.add_argument("--update-readme", action="store_true", help="write the figures into README.md")
    args = parser.parse_args()

    env = nnunet_env()
    bindir = Path(sys.executable).parent
    name = f"Dataset{args.dataset_id:03d}_ISRGPhantom"
    raw = Path(env["nnUNet_raw"]) / name
    pre = Path(env["nnUNet_preprocessed"]) / name
    res = Path(env["nnUNet_results"]) / name
    if args.fresh:
        for p in (raw, pre, res):
            shutil.rmtree(p, ignore_errors=True)
    t0 = time.time()
    timings = {}

    if not (raw / "dataset.json").exists():
        run([str(bindir / "isrg"), "phantom", "--out", env["nnUNet_raw"], "--dataset-id", str(args.dataset_id),
             "--name", "ISRGPhantom", "--n-cases", str(args.cases), "--paper-holdout"], env)
    timings["phantom_s"] = time.time() - t0

    t = time.time()
    if not (pre / "nnUNetPlans.json").exists():
        run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(args.dataset_id), "-c", "3d_fullres",
             "-npfp", "2", "-np", "2", "--verify_dataset_integrity"], env)
    timings["plan_preprocess_s"] = time.time() - t

    t = time.time()
    fold_dir = res / f"{args.trainer}__nnUNetPlans__3d_fullres" / f"fold_{args.fold}"
    summary_file = fold_dir / "validation" / "interactive_summary.json"
    trained_now = not summary_file.exists()
    if trained_now:
        run([str(bindir / "nnUNetv2_train"), str(args.dataset_id), "3d_fullres", args.fold, "-tr", args.trainer,
             "-device", "cpu"], env)
    timings["train_and_validate_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    previous = Path(args.out)
    if not trained_now and previous.exists():
        # nothing was trained this time: report the timings of the run that trained this model
        timings = json.loads(previous.read_text()).get("timings_s", timings)

    summary = json.loads(summary_file.read_text())
    dice = summary["mean_per_click"]["dice"]
    attributes = summary["attributes"]["per_attribute"]
    print("\n==== Interactive validation, fold", args.fold, f"({summary['n_cases']} cases) ====")
    for k in (1, 3, 5):
        if k <= len(dice):
            print(f"Dice after {k} click{'s' if k > 1 else ''}: {dice[k - 1]:.3f}")
    print("Attribute accuracy (majority-class rate):")
    for name_, entry in attributes.items():
        if entry["accuracy"] is not None:
            print(f"  {name_:14s} {entry['accuracy']:.3f} ({entry['majority_rate']:.3f})")
    print(f"  {'mean':14s} {summary['attributes']['mean_accuracy']:.3f}")

    case = summary["cases"][0]
    report = json.loads((fold_dir / "validation" / "reports" / f"{case}.json").read_text())
    print(f"\nReport of {case} ({report.get('lesion_type')}), after {report['n_clicks_used']} clicks:")
    for attr, cls in (report.get("attributes_pred") or {}).items():
        prob = report["attributes_prob"][attr][cls]
        truth = (report.get("attribute_truth") or {}).get(attr)
        print(f"  {attr:14s} {cls} (p={prob:.2f}; truth: {truth})")

    out = {"dataset": name, "trainer": args.trainer, "fold": args.fold, "n_cases": summary["n_cases"],
           "dice_per_click": dice, "attribute_accuracy": {k: v["accuracy"] for k, v in attributes.items()},
           "attribute_majority_rate": {k: v["majority_rate"] for k, v in attributes.items()},
           "attribute_accuracy_mean": summary["attributes"]["mean_accuracy"],
           "attribute_confusion": {k: {"classes": v["classes"], "matrix": v["confusion_matrix"]}
                                   for k, v in attributes.items() if v.get("confusion_matrix") is not None},
           "noc": summary["noc"], "cvpr25": summary.get("cvpr25"), "timings_s": timings, "example_report": report,
           "validation_folder": str(fold_dir / "validation")}
    write_json_atomic(args.out, out)
    print(f"\nwrote {args.out}  (total {timings['total_s'] / 60:.1f} min)")
    if args.update_readme:
        from script_support import replace_readme_section

        replace_readme_section("demo-results", demo_markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
