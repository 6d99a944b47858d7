"""Reproduces the README's phantom results section from nothing: ``python scripts/benchmark_phantom.py``.

1. ``isrg phantom``: 60 cases, 64^3 voxels at 1.5 mm, seed 0, lesion types gallstone and liver_cyst
   held out into imagesTs/labelsTs (the paper's zero-shot split). The same dataset as the demo
   (Dataset500_ISRGPhantom), so a model the demo trained is reused.
2. ``nnUNetv2_plan_and_preprocess -d 500 -c 3d_fullres``.
3. ``nnUNetv2_train 500 3d_fullres FOLD -tr T -device cpu`` for the four tiny ISRG variants
   (ISRGTrainer_Tiny_Vanilla, _Tiny_PointRefinement, _Tiny_FeatureSynergy, ISRGTrainer_Tiny: 36 epochs x
   50 iterations each) and the CPU-budget UNet (nnUNetTrainer_CPUBudget: 40 x 10 iterations, half
   width), fold 0 by default (``--folds``).
4. ``isrg compare`` with the attribute baseline and the zero-shot block; tables, CSV and plots.

Writes ``results/benchmark_phantom.json`` and ``.md`` (budgets, measured training times, run time,
tables); ``--update-readme`` also copies the plots to ``docs/figures/benchmark_phantom/`` and
replaces the README section ``phantom-results``. Every step is skipped when its output exists
(``--fresh`` starts over). ``--quick``: a smoke run with the debug trainers on a 24-case 48^3
phantom (a few minutes; numbers meaningless). ``--gpu``: the base preset and nnU-Net's full
schedules on CUDA (ISRGTrainer_Vanilla/_PointRefinement/_FeatureSynergy/ISRGTrainer and
nnUNetTrainer, 100 cases of 128^3).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # the package, and script_support beside this file

from nnunet_isrg.files import write_json_atomic  # noqa: E402
from script_support import nnunet_env, run_command as run  # noqa: E402

HOLDOUT = ["gallstone", "liver_cyst"]
MODES = {
    "cpu": dict(dataset_id=500, name="ISRGPhantom", cases=60, size=64, device="cpu", clicks=[1, 3, 5],
                trainers=["ISRGTrainer_Tiny_Vanilla", "ISRGTrainer_Tiny_PointRefinement",
                          "ISRGTrainer_Tiny_FeatureSynergy", "ISRGTrainer_Tiny"],
                baseline="nnUNetTrainer_CPUBudget"),
    "quick": dict(dataset_id=511, name="ISRGBenchQuick", cases=24, size=48, device="cpu", clicks=[1, 2, 3],
                  trainers=["ISRGTrainer_Debug_Vanilla", "ISRGTrainer_Debug"], baseline="nnUNetTrainer_ISRGDebug"),
    "gpu": dict(dataset_id=512, name="ISRGBenchBase", cases=100, size=128, device="cuda", clicks=[1, 3, 5],
                trainers=["ISRGTrainer_Vanilla", "ISRGTrainer_PointRefinement", "ISRGTrainer_FeatureSynergy",
                          "ISRGTrainer"], baseline="nnUNetTrainer"),
}
README_SECTION = "phantom-results"
FIGURES_DIR = REPO / "docs" / "figures" / "benchmark_phantom"


def setup_env(work: Path) -> dict:
    return nnunet_env(work)


def trainer_budget(name: str) -> dict:
    """The schedule a trainer class runs (from its class attributes), for the report."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    epochs = getattr(cls, "epochs", None) or 1000
    its = getattr(cls, "iterations_per_epoch", None) or 250
    out = {"trainer": name, "epochs": int(epochs), "iterations_per_epoch": int(its), "iterations": int(epochs * its)}
    if hasattr(cls, "model_preset"):
        out.update(model="ISRG", preset=cls.model_preset, crop_size=list(cls.crop_size) if cls.crop_size else None,
                   point_refinement=bool(cls.point_refinement), feature_synergy=bool(cls.feature_synergy),
                   max_correction_rounds=int(cls.max_correction_rounds))
    else:
        out.update(model="nnU-Net UNet", width_factor=float(getattr(cls, "feature_scale", 1.0)))
    return out


def training_seconds(fold_dir: Path) -> float | None:
    """Sum of nnU-Net's logged epoch times (training + per-epoch validation, no final validation)."""
    total, found = 0.0, False
    for log in sorted(fold_dir.glob("training_log_*.txt")):
        for m in re.finditer(r"Epoch time: ([0-9.]+) s", log.read_text()):
            total += float(m.group(1))
            found = True
    return round(total, 1) if found else None


def check_existing_phantom(raw: Path, cases: int, size: int) -> None:
    meta = json.loads((raw / "dataset.json").read_text()).get("isrg", {})
    phantom = meta.get("phantom", {})
    want = {"seed": 0, "size_xyz": [size] * 3, "zero_shot_types": sorted(HOLDOUT)}
    have = {"seed": phantom.get("seed"), "size_xyz": phantom.get("size_xyz"),
            "zero_shot_types": sorted(meta.get("zero_shot_types") or [])}
    n = len(list((raw / "labelsTr").glob("*.nii.gz"))) + len(list((raw / "labelsTs").glob("*.nii.gz")))
    if have != want or n != cases:
        raise SystemExit(f"{raw} exists but was generated differently ({have}, {n} cases; this benchmark needs "
                         f"{want}, {cases} cases): pass --fresh or another --dataset-id")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke run with the debug trainers (minutes)")
    mode.add_argument("--gpu", action="store_true", help="base preset, nnU-Net's full schedules, CUDA")
    p.add_argument("--dataset-id", type=int, default=None)
    p.add_argument("--cases", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--folds", nargs="+", type=int, default=[0])
    p.add_argument("--work", default=str(REPO / "work"), help="nnU-Net folders when nnUNet_* are not set")
    p.add_argument("--out", default=None, help="JSON output (default results/benchmark_phantom[_quick|_gpu].json)")
    p.add_argument("--fresh", action="store_true", help="delete this benchmark's dataset and results first")
    p.add_argument("--jobs", type=int, default=1,
                   help="trainings run side by side (2 on a 2-core CPU finishes sooner; each training's own "
                        "measured time then grows, and the report says so)")
    p.add_argument("--update-readme", action="store_true",
                   help=f"copy the plots to {FIGURES_DIR.relative_to(REPO)} and replace README section "
                        f"'{README_SECTION}'")
    args = p.parse_args(argv)
    mode_name = "quick" if args.quick else "gpu" if args.gpu else "cpu"
    cfg = dict(MODES[mode_name])
    for k in ("dataset_id", "cases", "size"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    suffix = "" if mode_name == "cpu" else f"_{mode_name}"
    out_json = Path(args.out) if args.out else REPO / "results" / f"benchmark_phantom{suffix}.json"
    if args.update_readme and mode_name == "quick":
        raise SystemExit("--update-readme with --quick would publish smoke-test numbers; run without --quick")

    t0 = time.time()
    env = setup_env(Path(args.work))
    import torch

    if mode_name != "quick":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    bindir = Path(sys.executable).parent
    name = f"Dataset{cfg['dataset_id']:03d}_{cfg['name']}"
    raw, pre, res = (Path(env[v]) / name for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
    if args.fresh:
        for folder in (raw, pre, res):
            shutil.rmtree(folder, ignore_errors=True)
    timings: dict[str, float] = {}

    if (raw / "dataset.json").exists():
        check_existing_phantom(raw, cfg["cases"], cfg["size"])
    else:
        timings["phantom_s"] = run([str(bindir / "isrg"), "phantom", "--out", env["nnUNet_raw"], "--dataset-id",
                                    str(cfg["dataset_id"]), "--name", cfg["name"], "--n-cases", str(cfg["cases"]),
                                    "--size", str(cfg["size"]), "--spacing", "1.5", "--seed", "0",
                                    "--holdout-types", *HOLDOUT, "-j", "2"], env)
    if not (pre / "nnUNetPlans.json").exists():
        timings["plan_preprocess_s"] = run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(cfg["dataset_id"]),
                                            "-c", "3d_fullres", "-npfp", "2", "-np", "2",
                                            "--verify_dataset_integrity"], env)

    def train(tr: str, f: int) -> float | None:
        fold_dir = res / f"{tr}__nnUNetPlans__3d_fullres" / f"fold_{f}"
        if (fold_dir / "checkpoint_final.pth").exists() and (fold_dir / "validation" / "summary.json").exists():
            return None
        cmd = [str(bindir / "nnUNetv2_train"), str(cfg["dataset_id"]), "3d_fullres", str(f), "-tr", tr,
               "-device", cfg["device"]]
        if (fold_dir / "checkpoint_latest.pth").exists():
            cmd.append("--c")
        # side by side, each training gets its share of the cores (an oversubscribed OpenMP pool is
        # many times slower); the ISRG trainers limit themselves, nnU-Net's UNet takes torch's default
        share = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))} if args.jobs > 1 else {}
        return round(run(cmd, {**env, **share}), 1)

    from concurrent.futures import ThreadPoolExecutor

    runs = [(tr, f) for tr in [cfg["baseline"]] + cfg["trainers"] for f in args.folds]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each job is an nnUNetv2_train subprocess
        walls = dict(zip(runs, pool.map(lambda r: train(*r), runs)))
    budgets = []
    for tr in [cfg["baseline"]] + cfg["trainers"]:
        b = trainer_budget(tr)
        b["folds"] = {}
        for f in args.folds:
            train_s = training_seconds(res / f"{tr}__nnUNetPlans__3d_fullres" / f"fold_{f}")
            b["folds"][str(f)] = {"command_wall_s": walls[(tr, f)], "training_s": train_s,
                                  "s_per_iteration": round(train_s / b["iterations"], 3) if train_s else None}
        budgets.append(b)

    from nnunet_isrg.evaluation.compare import ComparisonRequest, comparison_markdown, run_comparison

    t = time.time()
    out_dir = out_json.with_suffix("")
    doc = run_comparison(ComparisonRequest(dataset=cfg["dataset_id"], trainers=cfg["trainers"],
                                           baselines=[cfg["baseline"]], folds=list(args.folds), clicks=cfg["clicks"],
                                           attribute_baseline=True, zero_shot=True, out_dir=out_dir,
                                           device=cfg["device"]))
    timings["compare_s"] = time.time() - t
    timings = {k: round(v, 1) for k, v in timings.items()}
    total = round(time.time() - t0, 1)

    result = {
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python scripts/benchmark_phantom.py" + {"cpu": "", "quick": " --quick", "gpu": " --gpu"}[mode_name]
                   + ("" if args.folds == [0] else " --folds " + " ".join(map(str, args.folds)))
                   + ("" if args.jobs == 1 else f" --jobs {args.jobs}"),
        "parallel_trainings": args.jobs,
        "mode": mode_name,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": cfg["device"]},
        "phantom": {"dataset": name, "cases": cfg["cases"], "size_voxels": cfg["size"], "spacing_mm": 1.5, "seed": 0,
                    "held_out_types": HOLDOUT},
        "folds": list(args.folds),
        "budgets": budgets,
        "timings_s": timings,
        "run_time_s": total,
        "run_time_note": "this invocation only; steps whose outputs existed were skipped (see budgets[].folds[]"
                         ".training_s for each model's measured training time)",
        "comparison": doc,
    }
    write_json_atomic(out_json, result)
    md_figs = {k: Path(v).name for k, v in (("Dice against clicks", doc["files"]["dice_plot"]),
                                            ("Attribute accuracy", doc["files"].get("attribute_plot"))) if v}
    md = report_markdown(result, comparison_markdown(doc, {k: f"{out_dir.name}/{v}" for k, v in md_figs.items()}))
    out_md = out_json.with_suffix(".md")
    tmp = out_md.with_name(f".{out_md.name}.tmp")
    tmp.write_text(md)
    os.replace(tmp, out_md)
    print(f"\nwrote {out_json} and {out_md} (run time {total / 60:.1f} min)")

    if args.update_readme:
        from script_support import replace_readme_section

        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        for src in md_figs.values():
            shutil.copy(out_dir / src, FIGURES_DIR / src)
        rel = FIGURES_DIR.relative_to(REPO)
        readme_md = report_markdown(result, comparison_markdown(doc, {k: f"{rel}/{v}" for k, v in md_figs.items()}))
        if not replace_readme_section(README_SECTION, readme_md):
            return 1
    return 0


def report_markdown(result: dict, tables: str) -> str:
    lines = [f"Produced by `{result['command']}` on {result['generated'][:10]} "
             f"({result['machine']['cpus']} CPU cores, {result['machine']['device']}, torch "
             f"{result['machine']['torch']}). Phantom: {result['phantom']['cases']} cases of "
             f"{result['phantom']['size_voxels']}^3 voxels at 1.5 mm (seed 0), lesion types "
             f"{' and '.join(result['phantom']['held_out_types'])} held out for the zero-shot block; "
             f"fold(s) {', '.join(map(str, result['folds']))}."
             + (f" {result['parallel_trainings']} trainings ran side by side, so each measured training time "
                f"is longer than that model alone would take." if result.get("parallel_trainings", 1) > 1 else ""),
             "", "| Trainer | Model | Schedule | Measured training time | s / iteration |", "|---|---|---|---|---|"]
    for b in result["budgets"]:
        if b["model"] == "ISRG":
            model = f"ISRG `{b['preset']}` preset, crop {'x'.join(map(str, b['crop_size'])) if b['crop_size'] else 'preset'}"
        else:
            model = f"UNet, width x {b['width_factor']:g}"
        secs = [v["training_s"] for v in b["folds"].values() if v["training_s"]]
        spi = [v["s_per_iteration"] for v in b["folds"].values() if v["s_per_iteration"]]
        measured = f"{sum(secs) / len(secs) / 60:.1f} min per fold" if secs else "n/a"
        per_it = f"{sum(spi) / len(spi):.2f}" if spi else "n/a"
        lines.append(f"| `{b['trainer']}` | {model} | {b['epochs']} x {b['iterations_per_epoch']} = "
                     f"{b['iterations']} iterations | {measured} | {per_it} |")
    lines += ["", tables]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
