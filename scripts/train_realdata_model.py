#!/usr/bin/env python
"""One command for a model of a real dataset, trained on all its cases, ready for ``isrg serve``,
``isrg predict`` and ``ISRGSession``:

    python scripts/train_realdata_model.py sts        # the 24 soft-tissue sarcomas
    python scripts/train_realdata_model.py nodules    # the 799 LIDC-IDRI lung nodules

It runs what a user would type (each command echoed, each skipped when its output exists, so an
interrupted run continues where it stopped):

1. ``isrg import ../shared/realdata/<set> -d ID -n NAME [--lidc]`` (600 IBSISTS, 601 LIDCNodules);
2. ``isrg plan -d ID --preset tiny`` (plans ``nnUNetISRGPlans``: isotropic spacing, 64^3 crop);
3. ``nnUNetv2_train ID 3d_fullres all -tr ISRGTrainer_Tiny_20epochs -p nnUNetISRGPlans`` (1000
   iterations; fold ``all``: every case trains, nnU-Net validates on them too);
4. a check as a user would do it: ``ISRGSession`` on the model, one click at the deepest point of
   the first case's lesion, the Dice of the mask and the first lines of the report.

It ends with the ``isrg serve`` and ``isrg predict`` commands for the model and writes
``results/realdata_model_<set>.json`` (the steps with their wall and CPU time, the check). The
cross-validated figures of the same trainer are ``scripts/benchmark_realdata.py``'s; this model has
seen every case, so its check is no measure of quality.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from nnunet_isrg.files import write_json_atomic  # noqa: E402
from script_support import StepLog  # noqa: E402

TRAINER = "ISRGTrainer_Tiny_20epochs"


def _benchmark_realdata():
    """The real-data pipeline's building blocks (datasets, import and plan steps), shared, not copied."""
    spec = importlib.util.spec_from_file_location("benchmark_realdata", REPO / "scripts" / "benchmark_realdata.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_folder(env: dict, dataset: str, trainer: str = TRAINER) -> Path:
    brd = _benchmark_realdata()
    return Path(env["nnUNet_results"]) / dataset / f"{trainer}__{brd.PLANS}__{brd.CONFIGURATION}"


def check_model(folder: Path, raw: Path) -> dict:
    """``ISRGSession`` as a user opens it: one click on the first case's lesion; its Dice and report."""
    import numpy as np
    import SimpleITK as sitk
    from scipy.ndimage import distance_transform_edt

    from nnunet_isrg.inference.session import ISRGSession
    from nnunet_isrg.lesions import largest_lesion_component
    from nnunet_isrg.report.render_text import render_text

    label_file = sorted((raw / "labelsTr").glob("*.nii.gz"))[0]
    case = label_file.name[: -len(".nii.gz")]
    image_file = raw / "imagesTr" / f"{case}_0000.nii.gz"
    truth, _ = largest_lesion_component(sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))), (1,))
    deepest = np.unravel_index(np.argmax(distance_transform_edt(truth)), truth.shape)
    t0 = time.time()
    session = ISRGSession(folder, folds=("all",))
    session.set_image(str(image_file))
    state = session.add_click(tuple(int(v) for v in deepest))
    seconds = time.time() - t0
    mask = state.mask
    dice = 2 * float((mask & truth).sum()) / max(float(mask.sum() + truth.sum()), 1.0)
    report = state.report if mask.any() else None
    return {"case": case, "click_zyx": [int(v) for v in deepest], "dice": round(dice, 4),
            "seconds_to_first_mask": round(seconds, 2),
            "volume_ml": None if report is None else round(report.measurements["volume_ml"], 1),
            "true_volume_ml": round(float(truth.sum()) * float(np.prod(session.image.GetSpacing())) / 1000, 1),
            "report": render_text(report) if report is not None else "(empty mask: no report)"}


def main(argv: Sequence[str] | None = None) -> int:
    brd = _benchmark_realdata()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(brd.DATASETS), help="sts: the sarcomas; nodules: the LIDC nodules")
    p.add_argument("--device", default="cpu", help="training device (cpu or cuda)")
    p.add_argument("-np", "--n-proc", type=int, default=2, help="processes for nnU-Net planning/preprocessing")
    args = p.parse_args(argv)
    spec = brd.DATASETS[args.dataset]
    env = brd.setup_env()
    out_json = REPO / "results" / f"realdata_model_{args.dataset}.json"
    log = StepLog(env, out_json.with_name(out_json.stem + "_ledger.json"))
    t0 = time.time()
    dataset_id, name, raw = brd.prepare(spec, args, env, log, None)
    folder = model_folder(env, name)
    fold_dir = folder / "fold_all"
    done = (fold_dir / "checkpoint_final.pth").is_file()
    cmd = brd.train_command(dataset_id, TRAINER, "all", args.device, None if done else fold_dir)
    if "--val" in cmd:            # trained and validated is enough here; validating again is not asked for
        done = True
    log.run(f"{name}:train:{TRAINER}:all", cmd, done, dataset=name, step="training on all cases")
    check = log.call(f"{name}:check", f"ISRGSession({folder}, folds=('all',)): one click", lambda: check_model(folder, raw))
    doc = {"dataset": name, "model": str(folder), "trainer": brd.trainer_schedule(TRAINER), "steps": log.steps,
           "total_s": round(log.total_s(), 1), "check": check}
    write_json_atomic(out_json, doc)
    print(f"\n{name}: model in {folder} (all steps {log.total_s() / 60:.0f} min; this run "
          f"{(time.time() - t0) / 60:.0f} min)")
    print(f"check on {check['case']}: one click, Dice {check['dice']:.3f} (a training case: not a measure of "
          f"quality), {check['volume_ml']} mL against {check['true_volume_ml']} mL, first mask in "
          f"{check['seconds_to_first_mask']:.1f} s\n{check['report']}\n")
    print("Use it:")
    print(f"  isrg serve -m {folder} -f all --data {spec.source}")
    print(f"  isrg predict -m {folder} -f all -i IMAGE.nii.gz -c clicks.json -o out/")
    print(f"  ISRGSession('{folder}', folds=('all',))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
