"""Validation at the end of training: the deterministic click protocol on the fold's validation cases.

Writes nnU-Net's usual ``validation/`` folder (final masks in the original geometry, ``summary.json``
from nnU-Net's own evaluation, so ``nnUNetv2_find_best_configuration`` and
``nnUNetv2_evaluate_folder`` keep working) plus ``interactive_summary.json``, one report JSON per
case in ``validation/reports/`` and a Dice-against-clicks plot.

Clicks and per-click metrics are computed on the preprocessed volume (nnU-Net's target spacing),
where the model works; the exported masks are resampled by nnU-Net to the original geometry.
"""
from __future__ import annotations

from os.path import join
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import distributed as dist

from nnunet_isrg.files import write_json_atomic
from nnunet_isrg.lesions import largest_lesion_component

if TYPE_CHECKING:
    from nnunet_isrg.training.isrg_trainer import ISRGTrainer


def mask_to_logits(mask: np.ndarray, label_value: int, num_heads: int) -> torch.Tensor:
    """Hard logits (num_heads, z, y, x) whose argmax is ``label_value`` inside the mask, background outside.

    nnU-Net's exporter resamples logits to the original geometry and takes the argmax, so the
    interactive mask goes through exactly the export path of an nnU-Net prediction.
    """
    logits = torch.zeros((num_heads, *mask.shape), dtype=torch.float16)
    m = torch.from_numpy(mask)
    logits[0] = (~m).half()
    logits[label_value] = m.half()
    return logits


def plot_dice_curve(summary: dict, out_png: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_click = summary["per_click"]["dice"]
    x = np.arange(1, len(per_click) + 1)
    mean, std = np.array([c["mean"] for c in per_click]), np.array([c["std"] for c in per_click])
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(x, mean, "o-", label="mean Dice")
    ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("clicks")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_png + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    import os

    os.replace(tmp, out_png)


def run_interactive_validation(trainer: "ISRGTrainer", save_probabilities: bool = False) -> dict | None:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p

    from nnunet_isrg.evaluation.protocol import run_interactive_protocol, summarise_cases
    from nnunet_isrg.inference.crop_predictor import CropPredictor

    out_dir = join(trainer.output_folder, "validation")
    report_dir = join(out_dir, "reports")
    maybe_mkdir_p(report_dir)
    _, val_keys = trainer.do_split()
    if trainer.is_ddp:
        val_keys = val_keys[trainer.local_rank::dist.get_world_size()]
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys)
    spacing = tuple(float(s) for s in trainer.configuration_manager.spacing)
    num_heads = trainer.label_manager.num_segmentation_heads
    model = trainer.model
    model.eval()

    results = {}
    for k in dataset.identifiers:
        data, seg, _, properties = dataset.load_case(k)
        volume = torch.from_numpy(np.asarray(data[:], dtype=np.float32))
        gt, label_value = largest_lesion_component(np.asarray(seg[0]), trainer.lesion_labels)
        entry = trainer.attribute_table.get(k, {})
        truth = {a: v for a, v in entry.items() if a in trainer.schema}
        if label_value == 0:
            trainer.print_to_log_file(f"{k}: no lesion in the ground truth, skipped by the click protocol")
            final = np.zeros(gt.shape, dtype=bool)
            label_value = trainer.lesion_labels[0]
        else:
            predictor = CropPredictor(model, trainer.schema, volume, device=trainer.device)

            def predict_fn(clicks):
                p = predictor.predict(clicks)
                return p.mask, p.attribute_probs

            with torch.no_grad():
                result = run_interactive_protocol(predict_fn, gt, spacing, n_clicks=trainer.validation_clicks,
                                                  attribute_truth=truth or None, case_id=k,
                                                  lesion_type=entry.get("lesion_type"))
            results[k] = result
            final = result.final_mask
            report = result.to_dict()
            report["encode_calls"] = predictor.encode_calls
            write_json_atomic(join(report_dir, f"{k}.json"), report)
            trainer.print_to_log_file(f"{k}: Dice per click {[round(d, 3) for d in result.dice]}")
        export_prediction_from_logits(mask_to_logits(final, label_value, num_heads), properties,
                                      trainer.configuration_manager, trainer.plans_manager, trainer.dataset_json,
                                      join(out_dir, k), save_probabilities)

    if trainer.is_ddp:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results)
        results = {k: v for part in gathered for k, v in part.items()}
        dist.barrier()
    if trainer.local_rank != 0:
        return None

    summary = summarise_cases(list(results.values()), trainer.schema)
    summary.update({"trainer": trainer.__class__.__name__, "fold": trainer.fold, "n_cases": len(results),
                    "spacing_zyx_mm": list(spacing), "cases": sorted(results)})
    write_json_atomic(join(out_dir, "interactive_summary.json"), summary)
    plot_dice_curve(summary, join(out_dir, "dice_per_click.png"),
                    f"{trainer.__class__.__name__} fold {trainer.fold}")

    metrics = compute_metrics_on_folder(
        join(trainer.preprocessed_dataset_folder_base, "gt_segmentations"), out_dir, join(out_dir, "summary.json"),
        trainer.plans_manager.image_reader_writer_class(), trainer.dataset_json["file_ending"],
        trainer.label_manager.foreground_regions if trainer.label_manager.has_regions
        else trainer.label_manager.foreground_labels,
        trainer.label_manager.ignore_label, chill=True, num_processes=1)
    trainer.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
    dice = summary["mean_per_click"]["dice"]
    attributes = summary.get("attributes", {})
    trainer.print_to_log_file(f"Interactive validation ({len(results)} cases): mean Dice per click "
                              f"{[round(d, 4) for d in dice]}; mean attribute accuracy "
                              f"{attributes.get('mean_accuracy')}", also_print_to_console=True)
    trainer.print_to_log_file("Mean Validation Dice (final masks, nnU-Net evaluation): ",
                              metrics["foreground_mean"]["Dice"], also_print_to_console=True)
    return summary
