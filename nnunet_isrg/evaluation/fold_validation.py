"""Validation of one fold under the deterministic click protocol, as nnU-Net validates a fold.

:func:`validate_fold` runs a network on the preprocessed validation cases of a fold and writes
nnU-Net's usual ``validation/`` folder: the final masks in the original geometry (exported by
nnU-Net, so ``nnUNetv2_find_best_configuration`` and ``nnUNetv2_evaluate_folder`` keep working),
``summary.json`` from nnU-Net's own evaluation, plus ``interactive_summary.json``, one report JSON
per case in ``reports/`` and a Dice-against-clicks plot. The ISRG trainer calls it at the end of
training (and for ``--val``); it needs no trainer.

Clicks and per-click metrics are computed on the preprocessed volume (nnU-Net's target spacing),
where the model works; the exported masks are resampled by nnU-Net to the original geometry.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from os.path import join
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from ..attributes import Schema, untrained_attributes
from ..files import write_json_atomic
from ..inference.embedding_cache import EmbeddingCache
from ..inference.lesion_predictor import LesionPrediction, LesionPredictor
from ..lesions import largest_lesion_component
from .plots import curve_from_summary, plot_metric_vs_clicks
from .protocol import CaseResult, run_interactive_protocol, summarise_cases

#: merges the case results of all processes of a distributed validation; ``None`` on the processes
#: that leave the summary to another (the trainer passes one for DDP)
Gather = Callable[[dict[str, CaseResult]], "dict[str, CaseResult] | None"]
REPORTS_FOLDER = "reports"
INTERACTIVE_SUMMARY = "interactive_summary.json"
#: the CVPR 2025 challenge's protocol (the lesion's box, then clicks) beside the click protocol
CVPR25_REPORTS_FOLDER = "reports_cvpr25"
CVPR25_SUMMARY = "interactive_summary_cvpr25.json"
DICE_PLOT = "dice_per_click.png"


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


def protocol_with_network(network: torch.nn.Module, schema: Schema, volume: torch.Tensor, gt: np.ndarray,
                          spacing_zyx: Sequence[float], n_clicks: int, attribute_truth: Mapping[str, str] | None = None,
                          case_id: str | None = None, lesion_type: str | None = None,
                          device: torch.device | str = "cpu", keep_final_mask: bool = True,
                          untrained_attributes: Sequence[str] = (),
                          on_prediction: Callable[[LesionPrediction], None] | None = None,
                          first_prompt: str = "click", cache: EmbeddingCache | None = None,
                          attribute_class_counts: Mapping[str, Mapping[str, int]] | None = None
                          ) -> tuple[CaseResult, int]:
    """The click protocol on one lesion with an ISRG network through :class:`LesionPredictor`, the
    predictor of the interactive session (zooming out for a lesion larger than the crop).

    ``volume``: (C, z, y, x) preprocessed image; ``gt``: bool mask of the target lesion on that grid;
    ``untrained_attributes``: attributes the network never had a label for, neither predicted nor
    scored; ``on_prediction``: called with every prediction (its zoom, field of view, truncation);
    ``first_prompt``: "box" runs the CVPR 2025 protocol (the lesion's box, then clicks); ``cache``:
    embeddings of this volume's views from an earlier protocol run on it (default: a new cache);
    ``attribute_class_counts``: the network's training classes, to balance its attribute
    probabilities (:class:`LesionPredictor`). Returns the case result and the number of image
    encodings the predictor needed.
    """
    predictor = LesionPredictor(network, schema, volume, device=device, untrained_attributes=untrained_attributes,
                                cache=cache, attribute_class_counts=attribute_class_counts)
    encodes_before = predictor.encode_calls
    attribute_truth = {a: v for a, v in (attribute_truth or {}).items() if a not in set(untrained_attributes)}

    def predict_fn(clicks, box=None):
        p = predictor.predict(clicks, box=box)  # continues from the previous interaction's mask prompts
        if on_prediction is not None:
            on_prediction(p)
        return p.mask, p.attribute_probs

    with torch.no_grad():
        result = run_interactive_protocol(predict_fn, gt, spacing_zyx, n_clicks=n_clicks,
                                          attribute_truth=attribute_truth or None, case_id=case_id,
                                          lesion_type=lesion_type, keep_final_mask=keep_final_mask,
                                          first_prompt=first_prompt)
    return result, predictor.encode_calls - encodes_before


def _extent(prediction: LesionPrediction) -> dict:
    """How far the last prediction had to look: its zoom, and whether the lesion goes on beyond it
    (faces in the preprocessed volume's axes), so a cut lesion is never scored silently."""
    return {"zoom": prediction.zoom, "truncated": prediction.truncated,
            "truncated_faces": list(prediction.truncated_faces)}


def validate_cases(network: torch.nn.Module, dataset, output_folder: str, plans_manager: PlansManager,
                   configuration_manager: ConfigurationManager, dataset_json: Mapping, schema: Schema,
                   lesion_labels: Sequence[int], n_clicks: int,
                   attribute_table: Mapping[str, Mapping[str, str]] | None = None,
                   device: torch.device | str = "cpu", log: Callable[[str], None] = print,
                   save_probabilities: bool = False,
                   attribute_support: Mapping[str, int] | None = None, cvpr25: bool = True,
                   attribute_class_counts: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, CaseResult]:
    """The click protocol on every case of ``dataset``; writes each case's mask and report.

    Args:
        network: the bare ISRG model (``encode_image``/``decode``), put in eval mode here.
        dataset: an nnU-Net dataset of preprocessed cases (``identifiers`` and ``load_case``).
        output_folder: gets ``CASE<file ending>`` (nnU-Net's export of the final mask) and
            ``reports/CASE.json`` per case.
        plans_manager, configuration_manager, dataset_json: the model's plans, configuration and
            dataset.json, for the export.
        schema: attribute schema; lesion_labels: label values that are lesions (the target is the
            largest lesion component of each case).
        n_clicks: clicks per case.
        attribute_table: case id -> attribute classes (and ``lesion_type``); missing = unknown.
        device: where the network runs; log: receives one line per case.
        save_probabilities: also export nnU-Net's probability files.
        attribute_support: attribute -> labelled training cases of the network; attributes with
            none are neither predicted nor scored (None: every attribute counts as trained).
        cvpr25: also run the CVPR 2025 protocol (the lesion's box, then ``n_clicks`` clicks) on each
            case, its results in ``reports_cvpr25/CASE.json`` (no mask exported).
        attribute_class_counts: attribute -> class -> training cases of the network, to balance
            its attribute probabilities (None: the softmax as it is).

    Returns case id -> result of the click protocol for the cases with a lesion (a case without one
    is exported empty).
    """
    os.makedirs(join(output_folder, REPORTS_FOLDER), exist_ok=True)
    if cvpr25:
        os.makedirs(join(output_folder, CVPR25_REPORTS_FOLDER), exist_ok=True)
    spacing = [float(s) for s in configuration_manager.spacing]
    num_heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network.eval()
    untrained = untrained_attributes(attribute_support)
    results = {}
    for k in dataset.identifiers:
        data, seg, _, properties = dataset.load_case(k)
        gt, label_value = largest_lesion_component(np.asarray(seg[0]), lesion_labels)
        entry = (attribute_table or {}).get(k, {})
        if label_value == 0:
            log(f"{k}: no lesion in the ground truth, skipped by the click protocol")
            final, label_value = np.zeros(gt.shape, dtype=bool), lesion_labels[0]
        else:
            volume = torch.from_numpy(np.asarray(data[:], dtype=np.float32))
            extent: dict = {}  # of the last prediction only: its logits may be large
            cache = EmbeddingCache(network.encode_image)   # the views' embeddings serve both protocols
            result, encode_calls = protocol_with_network(
                network, schema, volume, gt, spacing, n_clicks, {a: v for a, v in entry.items() if a in schema},
                case_id=k, lesion_type=entry.get("lesion_type"), device=device, untrained_attributes=untrained,
                on_prediction=lambda p: extent.update(_extent(p)), cache=cache,
                attribute_class_counts=attribute_class_counts)
            results[k], final = result, result.final_mask
            write_json_atomic(join(output_folder, REPORTS_FOLDER, f"{k}.json"),
                              {**result.to_dict(), "encode_calls": encode_calls, "attributes_not_assessed": untrained,
                               **extent})
            log(f"{k}: Dice per click {[round(d, 3) for d in result.dice]}")
            if cvpr25:
                boxed, _ = protocol_with_network(network, schema, volume, gt, spacing, n_clicks, case_id=k,
                                                 device=device, untrained_attributes=untrained, keep_final_mask=False,
                                                 first_prompt="box", cache=cache,
                                                 attribute_class_counts=attribute_class_counts)
                write_json_atomic(join(output_folder, CVPR25_REPORTS_FOLDER, f"{k}.json"), boxed.to_dict())
                log(f"{k}: CVPR 2025 protocol, Dice after the box and each click {[round(d, 3) for d in boxed.dice]}")
        export_prediction_from_logits(mask_to_logits(final, label_value, num_heads), properties, configuration_manager,
                                      plans_manager, dataset_json, join(output_folder, k), save_probabilities)
    return results


def summarise_fold(results: Mapping[str, CaseResult], output_folder: str, plans_manager: PlansManager,
                   configuration_manager: ConfigurationManager, dataset_json: Mapping, schema: Schema,
                   gt_segmentations_folder: str, run_info: Mapping | None = None,
                   plot_title: str = "", attribute_support: Mapping[str, int] | None = None) -> tuple[dict, dict]:
    """``interactive_summary.json`` and the Dice plot of the case results, and ``summary.json`` from
    nnU-Net's evaluation of the exported masks against ``gt_segmentations_folder`` (nnU-Net's
    ``gt_segmentations`` of the preprocessed dataset). ``run_info`` (e.g. trainer and fold) heads the
    interactive summary; attributes without training labels (``attribute_support``) are left out of
    the accuracies and listed as ``attributes_not_assessed``. Returns (interactive summary, nnU-Net's
    metrics)."""
    untrained = untrained_attributes(attribute_support)
    assessed = OrderedDict((a, c) for a, c in schema.items() if a not in untrained)
    summary = summarise_cases(list(results.values()), assessed if assessed else None)
    summary.update({**(run_info or {}), "n_cases": len(results), "attributes_not_assessed": untrained,
                    "attribute_support": dict(attribute_support) if attribute_support is not None else None,
                    "spacing_zyx_mm": [float(s) for s in configuration_manager.spacing], "cases": sorted(results)})
    cvpr25 = _cvpr25_results(output_folder, results)
    if cvpr25:
        boxed = summarise_cases(cvpr25, None)
        boxed.update({**(run_info or {}), "protocol": "cvpr25", "n_cases": len(cvpr25), "cases": sorted(results)})
        write_json_atomic(join(output_folder, CVPR25_SUMMARY), boxed)
        summary["cvpr25"] = {"dice_per_interaction": boxed["mean_per_click"]["dice"],
                             "nsd_per_interaction": boxed["mean_per_click"]["nsd"],
                             "auc_dice": boxed["auc"]["dice"]["mean"], "final_dice": boxed["mean_per_click"]["dice"][-1]}
    write_json_atomic(join(output_folder, INTERACTIVE_SUMMARY), summary)
    plot_metric_vs_clicks({plot_title: {"mean Dice": curve_from_summary(summary, "dice")}},
                          join(output_folder, DICE_PLOT), "dice")
    label_manager = plans_manager.get_label_manager(dataset_json)
    metrics = compute_metrics_on_folder(
        gt_segmentations_folder, output_folder, join(output_folder, "summary.json"),
        plans_manager.image_reader_writer_class(), dataset_json["file_ending"],
        label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels,
        label_manager.ignore_label, chill=True, num_processes=1)
    return summary, metrics


def _cvpr25_results(output_folder: str, results: Mapping[str, CaseResult]) -> list[CaseResult]:
    """The CVPR 2025 protocol's results of the cases of ``results`` (every process of a distributed
    validation wrote its own cases' files), or [] when they were not run for all of them."""
    folder = Path(output_folder) / CVPR25_REPORTS_FOLDER
    files = [folder / f"{k}.json" for k in sorted(results)]
    if not files or not all(f.is_file() for f in files):
        return []
    return [CaseResult.from_json(f) for f in files]


@dataclass
class FoldValidation:
    """What :func:`validate_fold` produced: the interactive summary, nnU-Net's metrics, the case results."""

    summary: dict
    metrics: dict
    results: dict[str, CaseResult] = field(repr=False)


def validate_fold(network: torch.nn.Module, dataset, output_folder: str, plans_manager: PlansManager,
                  configuration_manager: ConfigurationManager, dataset_json: Mapping, schema: Schema,
                  lesion_labels: Sequence[int], n_clicks: int, gt_segmentations_folder: str,
                  attribute_table: Mapping[str, Mapping[str, str]] | None = None,
                  device: torch.device | str = "cpu", log: Callable[[str], None] = print,
                  save_probabilities: bool = False, gather: Gather | None = None, run_info: Mapping | None = None,
                  plot_title: str = "", attribute_support: Mapping[str, int] | None = None, cvpr25: bool = True,
                  attribute_class_counts: Mapping[str, Mapping[str, int]] | None = None) -> FoldValidation | None:
    """A fold's validation folder: :func:`validate_cases` on ``dataset``, then :func:`summarise_fold`.

    The arguments are those of the two functions (``cvpr25``: False for a model trained without boxes,
    whose box protocol would only measure an untrained prompt). ``gather`` merges the case results of the
    processes of a distributed validation (each process passes its share of the cases as
    ``dataset``); where it returns ``None`` nothing more is written and ``None`` is returned.
    """
    results = validate_cases(network, dataset, output_folder, plans_manager, configuration_manager, dataset_json,
                             schema, lesion_labels, n_clicks, attribute_table, device, log, save_probabilities,
                             attribute_support, cvpr25, attribute_class_counts)
    if gather is not None:
        results = gather(results)
        if results is None:
            return None
    summary, metrics = summarise_fold(results, output_folder, plans_manager, configuration_manager, dataset_json,
                                      schema, gt_segmentations_folder, run_info, plot_title, attribute_support)
    return FoldValidation(summary, metrics, results)


__all__ = ["validate_fold", "validate_cases", "summarise_fold", "protocol_with_network", "mask_to_logits",
           "FoldValidation", "INTERACTIVE_SUMMARY", "REPORTS_FOLDER", "DICE_PLOT", "CVPR25_REPORTS_FOLDER",
           "CVPR25_SUMMARY"]
