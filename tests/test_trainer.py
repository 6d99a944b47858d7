"""ISRGTrainer through nnU-Net's real commands: train, continue, validate, and nnU-Net's tools on the results."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PHANTOM_ID, nnunet_cmd, run_cmd

from nnunet_isrg.attributes import DEFAULT_SCHEMA, IGNORE_INDEX
from nnunet_isrg.training.data_loader import AttributeLabels
from nnunet_isrg.training.losses import ISRGLoss, UncertaintyWeighting, attribute_cross_entropy, soft_dice_loss


def test_debug_training_writes_nnunet_and_interactive_outputs(debug_model):
    fold = debug_model / "fold_0"
    for name in ("checkpoint_final.pth", "progress.png", "validation/summary.json",
                 "validation/interactive_summary.json", "validation/dice_per_click.png"):
        assert (fold / name).is_file(), name
    assert (debug_model / "plans.json").is_file() and (debug_model / "dataset.json").is_file()
    plans = json.loads((debug_model / "plans.json").read_text())
    block = plans["configurations"]["3d_fullres"]["isrg"]
    assert block["crop_size"] == [32, 32, 32] and block["point_refinement"] and block["feature_synergy"]

    summary = json.loads((fold / "validation" / "interactive_summary.json").read_text())
    # the CVPR 2025 protocol beside the clicks: the box, then the clicks, per validation case
    boxed = json.loads((fold / "validation" / "interactive_summary_cvpr25.json").read_text())
    assert boxed["first_prompt"] == "box" and len(boxed["mean_per_click"]["dice"]) == 3 + 1
    assert summary["cvpr25"]["final_dice"] == boxed["mean_per_click"]["dice"][-1]
    assert sorted(p.stem for p in (fold / "validation" / "reports_cvpr25").glob("*.json")) == summary["cases"]
    splits = json.loads((debug_model.parents[1].parent / "nnUNet_preprocessed" / debug_model.parent.name /
                         "splits_final.json").read_text())
    val_cases = sorted(splits[0]["val"])
    assert summary["cases"] == val_cases
    assert summary["n_clicks"] == 3 and len(summary["mean_per_click"]["dice"]) == 3
    for m in ("dice", "nsd"):
        assert all(0.0 <= v <= 1.0 for v in summary["mean_per_click"][m])
    assert set(summary["attributes"]["per_attribute"]) == set(DEFAULT_SCHEMA)
    # one report per validation case, one exported mask per case in the original geometry
    reports = sorted(p.stem for p in (fold / "validation" / "reports").glob("*.json"))
    assert reports == val_cases
    import SimpleITK as sitk
    raw = debug_model.parents[1].parent / "nnUNet_raw" / debug_model.parent.name
    for case in val_cases:
        pred = sitk.ReadImage(str(fold / "validation" / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz"))
        assert pred.GetSize() == ref.GetSize()
        np.testing.assert_allclose(pred.GetSpacing(), ref.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(pred.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    nnunet_summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(nnunet_summary["metric_per_case"]) == len(val_cases)
    # the per-click Dice of the last click equals nnU-Net's evaluation of the exported masks up to resampling
    assert abs(nnunet_summary["foreground_mean"]["Dice"] - summary["mean_per_click"]["dice"][-1]) < 0.05
    log = (debug_model / "train_stdout.txt").read_text()
    assert "seg loss" in log and "attribute loss" in log
    # trained with the prompt mix, stated, drawn, and recorded in the checkpoint
    assert "Prompt mix: first prompt a box (ground truth, CVPR 2025 jitter) in 50% of iterations" in log
    import re
    lines = re.findall(r"prompts this epoch: (\d+) clicks, (\d+) boxes, (\d+) scribbles, (\d+) lassos", log)
    assert len(lines) == 2                                     # one per epoch
    for counts in lines:                                       # a first prompt per iteration, and corrections
        assert sum(map(int, counts)) >= 2
    from nnunet_isrg.inference.model_loading import load_trained_model

    assert load_trained_model(debug_model, folds=(0,)).prompt_kinds == ("clicks", "boxes", "scribbles", "lassos")
    # a small CPU augments in the training process and gives torch every core
    import re
    threads, workers, cores = map(int, re.search(r"CPU training: (\d+) torch thread\(s\) beside (\d+) "
                                                 r"augmentation worker\(s\) on (\d+) cores", log).groups())
    assert (workers == 0) == (cores <= 4) and threads == max(1, cores - workers)


def test_continue_training_and_val_only(debug_model, nnunet_dirs):
    fold = debug_model / "fold_0"
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    assert "loss_weighting.log_variance" in final["network_weights"]
    assert len(final["logging"]["train_seg_loss"]) == 2
    # --c with a finished run loads checkpoint_final, trains nothing more and validates again
    summary_file = fold / "validation" / "interactive_summary.json"
    before = json.loads(summary_file.read_text())
    os.remove(summary_file)
    run_cmd([nnunet_cmd("nnUNetv2_train"), str(PHANTOM_ID), "3d_fullres", "0", "-tr", "ISRGTrainer_Debug",
             "-device", "cpu", "--val"])
    after = json.loads(summary_file.read_text())
    # the protocol is deterministic: the same checkpoint gives the same per-click figures
    np.testing.assert_allclose(after["mean_per_click"]["dice"], before["mean_per_click"]["dice"], atol=1e-6)


def test_checkpoint_holds_the_weight_average_and_loading_restores_both(debug_model, nnunet_dirs):
    """network_weights are the averaged weights (what inference reads); the raw ones come back for --c."""
    from nnunet_isrg.training.isrg_trainer import TRAINING_WEIGHTS_KEY

    ckpt_file = debug_model / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    averaged, raw = ckpt["network_weights"], ckpt[TRAINING_WEIGHTS_KEY]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)
    code = ("import sys, torch\n"
            "from nnunetv2.run.run_training import get_trainer_from_args\n"
            f"t = get_trainer_from_args('{PHANTOM_ID}', '3d_fullres', 0, 'ISRGTrainer_Debug', device=torch.device('cpu'))\n"
            f"t.load_checkpoint({str(ckpt_file)!r})\n"
            "c = torch.load(sys.argv[1], map_location='cpu', weights_only=False)\n"
            f"same = lambda a, b: all(torch.equal(a[k], b[k]) for k in b)\n"
            f"assert same(t.model.state_dict(), c[{TRAINING_WEIGHTS_KEY!r}]), 'training weights not restored'\n"
            "assert same(t.weight_average.state_dict(), c['network_weights']), 'average not restored'\n"
            "with t._averaged_weights():\n"
            "    assert same(t.model.state_dict(), c['network_weights'])\n"
            "print('restored')\n")
    proc = run_cmd([nnunet_cmd("python"), "-c", code, str(ckpt_file)])
    assert "restored" in proc.stdout


def test_continue_from_latest_checkpoint(phantom_preprocessed, nnunet_dirs):
    """Train one epoch of a 2-epoch run, then --c resumes at epoch 1 from checkpoint_latest.pth."""
    out = nnunet_dirs["nnUNet_results"] / phantom_preprocessed.name / "ISRGTrainer_Debug_Vanilla__nnUNetPlans__3d_fullres"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    code = ("import sys; from nnunet_isrg.training.variants import ISRGTrainer_Debug_Vanilla as T\n"
            "orig = T.on_epoch_end\n"
            "def stop_after_first(self):\n"
            "    orig(self)\n"
            "    if self.current_epoch == 1:  # epoch 0 done; nnU-Net saved checkpoint_latest (save_every=1)\n"
            "        sys.exit(0)\n"
            "T.on_epoch_end = stop_after_first\n"
            "from nnunetv2.run.run_training import run_training_entry\n"
            f"sys.argv = ['nnUNetv2_train', '{PHANTOM_ID}', '3d_fullres', '0', '-tr', 'ISRGTrainer_Debug_Vanilla',"
            " '-device', 'cpu']\n"
            "run_training_entry()\n")
    subprocess.run([nnunet_cmd("python"), "-c", code], check=True, env=env, capture_output=True, timeout=600)
    latest = torch.load(out / "fold_0" / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 1
    assert not (out / "fold_0" / "checkpoint_final.pth").exists()
    proc = run_cmd([nnunet_cmd("nnUNetv2_train"), str(PHANTOM_ID), "3d_fullres", "0", "-tr",
                    "ISRGTrainer_Debug_Vanilla", "-device", "cpu", "--c"])
    assert "Epoch 1" in proc.stdout and "Epoch 0\n" not in proc.stdout
    final = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    assert len(final["logging"]["train_losses"]) == 2
    # the Vanilla ablation has neither point refinement nor synergy in its checkpoint
    assert not any("synergy" in k for k in final["network_weights"])


def test_nnunet_predict_refuses_with_pointer_to_isrg_predict(debug_model, phantom_raw, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    first = sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz"))[0]
    shutil.copy(first, inp / first.name)
    out = tmp_path / "out"
    proc = subprocess.run([nnunet_cmd("nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", str(PHANTOM_ID),
                           "-c", "3d_fullres", "-tr", "ISRGTrainer_Debug", "-f", "0", "-device", "cpu",
                           "-npp", "1", "-nps", "1"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode != 0
    assert "isrg predict" in proc.stdout + proc.stderr
    assert not list(out.glob("*.nii.gz")), "no mask may be written"


def test_nnunet_evaluate_folder_and_find_best_configuration(debug_model, phantom_preprocessed, tmp_path):
    fold = debug_model / "fold_0" / "validation"
    out = tmp_path / "summary.json"
    run_cmd([nnunet_cmd("nnUNetv2_evaluate_folder"), str(phantom_preprocessed / "gt_segmentations"), str(fold),
             "-djfile", str(debug_model / "dataset.json"), "-pfile", str(debug_model / "plans.json"),
             "-o", str(out), "--chill"])  # --chill: only the validation cases are in the folder
    assert "foreground_mean" in json.loads(out.read_text())
    proc = run_cmd([nnunet_cmd("nnUNetv2_find_best_configuration"), str(PHANTOM_ID), "-c", "3d_fullres",
                    "-tr", "ISRGTrainer_Debug", "-f", "0", "--disable_ensembling", "-np", "1"])
    assert "3d_fullres" in proc.stdout


# ---------------------------------------------------------------------------------------- unit level

def test_attribute_labels_follow_batch_keys_and_mask_unknowns():
    table = {"a": {"shape": "Irregular", "density": "Hyperdense"}, "b": {"surface": "Ill-defined margin"}}
    labels = AttributeLabels(table, DEFAULT_SCHEMA)
    out = labels.for_keys(["b", "zzz", "a"]).numpy()
    names = list(DEFAULT_SCHEMA)
    assert out.shape == (3, len(names))
    assert out[0, names.index("surface")] == 1 and (np.delete(out[0], names.index("surface")) == IGNORE_INDEX).all()
    assert (out[1] == IGNORE_INDEX).all()  # a case without labels: everything unknown, nothing guessed
    assert out[2, names.index("shape")] == 1 and out[2, names.index("density")] == 2


def test_attribute_loss_is_masked_for_unknown_labels_but_keeps_every_head_in_the_graph():
    logits = {n: torch.randn(2, len(c), requires_grad=True) for n, c in DEFAULT_SCHEMA.items()}
    unknown = torch.full((2, len(DEFAULT_SCHEMA)), IGNORE_INDEX)
    loss = attribute_cross_entropy(logits, unknown)
    assert loss.item() == 0.0
    loss.backward()
    assert all(l.grad is not None and torch.all(l.grad == 0) for l in logits.values())
    # one known label: equals that attribute's cross-entropy on that sample alone
    labels = unknown.clone()
    labels[1, 2] = 0
    expected = torch.nn.functional.cross_entropy(logits["density"][1:2], torch.tensor([0]))
    assert torch.allclose(attribute_cross_entropy(logits, labels), expected)


def test_soft_dice_and_uncertainty_weighting():
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2] = 1
    perfect = (target * 2 - 1) * 50
    assert soft_dice_loss(perfect, target).item() < 1e-4
    assert soft_dice_loss(-perfect, target).item() > 0.99
    w = UncertaintyWeighting(initial_lambda=0.5)
    assert abs(w.lam - 0.5) < 1e-6
    total = w(torch.tensor(1.0), torch.tensor(2.0))
    assert torch.isclose(total, torch.tensor(1.0 + 0.5 * 2.0 + float(-np.log(0.5))))
    fixed = UncertaintyWeighting(initial_lambda=0.5, learn=False)
    assert not list(fixed.parameters())
    assert torch.isclose(fixed(torch.tensor(1.0), torch.tensor(2.0)), torch.tensor(2.0))
    out = {"mask_logits": perfect, "iou_pred": torch.ones(1, 1),
           "attribute_logits": {n: torch.zeros(1, len(c)) for n, c in DEFAULT_SCHEMA.items()}}
    total, parts = ISRGLoss()(out, target, torch.full((1, 5), IGNORE_INDEX), fixed)
    assert parts["attr"] == 0.0 and parts["iou"] < 1e-6 and parts["seg"] < 1e-3
