"""Cross-fold aggregation of nnU-Net result folders under the interactive protocol (``isrg evaluate``).

Two kinds of trainer folder (``nnUNet_results/DatasetX/TRAINER__PLANS__CONF``) are understood:

- interactive (an ISRG trainer: its ``plans.json`` configuration has an ``isrg`` block): the per-case
  reports ``fold_N/validation/reports/CASE.json`` written by the interactive validation are read
  back as :class:`~nnunet_isrg.evaluation.protocol.CaseResult` s.
- no-click baseline (any other nnU-Net trainer, e.g. ``nnUNetTrainer``): its validation masks
  ``fold_N/validation/CASE.nii.gz`` are scored with this package's metrics, in the same space and on
  the same target as the interactive reports (see :func:`score_no_click_prediction`), and the same value
  is repeated at every click (the UNet takes no clicks).

Cases are the fold's validation cases from ``splits_final.json``. Aggregation: per fold and pooled
over all validation cases of the requested folds, mean and std (ddof=0) per click, per lesion type,
per attribute accuracy and confusion matrix (``summarise_cases``), plus the mean and std over folds
of the per-fold means. Written next to the trainer folder as ``crossval_interactive.json`` and two
CSV files.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from scipy import ndimage

from ..attributes import (ATTRIBUTES_FILENAME, read_attribute_table, lesion_labels_from_dataset_json,
                          schema_from_dataset_json)
from ..files import json_safe, write_json_atomic, write_text_atomic
from ..lesions import largest_lesion_component
from .metrics import auc_over_clicks, noc_at, segmentation_metrics
from .protocol import METRICS, NOC_THRESHOLDS, CaseResult, summarise_cases

KIND_INTERACTIVE = "interactive"
KIND_BASELINE = "no-click baseline"
CROSSVAL_JSON = "crossval_interactive.json"
CROSSVAL_CSV = "crossval_interactive.csv"
CROSSVAL_ATTRIBUTES_CSV = "crossval_attributes.csv"


class MissingResultsError(FileNotFoundError):
    """Results needed for an evaluation are missing; ``missing`` lists each missing item in words."""

    def __init__(self, missing: Sequence[str], what: str = "evaluation"):
        self.missing = list(missing)
        lines = "\n".join(f"  - {m}" for m in self.missing)
        super().__init__(f"cannot run the {what}: {len(self.missing)} missing result(s); nothing was written.\n{lines}")


# ------------------------------------------------------------------------------------------ folders
def dataset_name(dataset: str | int) -> str:
    """``DatasetNNN_Name`` for an id or a name (nnU-Net's own lookup in nnUNet_raw/preprocessed/results)."""
    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise MissingResultsError([f"dataset {dataset}: {e}"]) from None


def results_root() -> Path:
    if not nnUNet_results.is_set():
        raise RuntimeError("nnUNet_results is not set; export it to the folder holding your nnU-Net results")
    return Path(nnUNet_results.get())


def preprocessed_root() -> Path:
    if not nnUNet_preprocessed.is_set():
        raise RuntimeError("nnUNet_preprocessed is not set; export it to the folder holding the preprocessed data")
    return Path(nnUNet_preprocessed.get())


def trainer_folder(dataset: str | int, trainer: str, plans: str = "nnUNetPlans",
                   configuration: str = "3d_fullres") -> Path:
    return results_root() / dataset_name(dataset) / f"{trainer}__{plans}__{configuration}"


def is_interactive(folder: Path, configuration: str) -> bool:
    """True when the trainer folder's plans carry an ISRG block (an interactive model)."""
    plans = json.loads((folder / "plans.json").read_text())
    cfg = plans.get("configurations", {}).get(configuration, {})
    return "isrg" in cfg


def load_splits(dataset: str | int) -> list[dict]:
    path = preprocessed_root() / dataset_name(dataset) / "splits_final.json"
    if not path.is_file():
        raise MissingResultsError([f"{path}: no splits_final.json (nnU-Net writes it when training starts)"])
    return json.loads(path.read_text())


def _train_command(dataset: str, trainer: str, plans: str, configuration: str, fold: int) -> str:
    p = "" if plans == "nnUNetPlans" else f" -p {plans}"
    return f"nnUNetv2_train {dataset.split('_')[0].replace('Dataset', '')} {configuration} {fold} -tr {trainer}{p}"


def find_missing(dataset: str | int, trainers: Iterable[str], plans: str, configuration: str,
                 folds: Iterable[int]) -> list[str]:
    """Every trainer/fold whose results an evaluation needs but which is not there, in words."""
    name = dataset_name(dataset)
    folds = [int(f) for f in folds]
    missing = []
    try:
        splits = load_splits(name)
    except MissingResultsError as e:
        return e.missing
    for f in folds:
        if not 0 <= f < len(splits):
            missing.append(f"fold {f}: splits_final.json of {name} has folds 0..{len(splits) - 1}")
    for tr in trainers:
        folder = trainer_folder(name, tr, plans, configuration)
        if not (folder / "plans.json").is_file():
            missing.append(f"{tr}: no trained model folder {folder} (run "
                           f"{_train_command(name, tr, plans, configuration, folds[0] if folds else 0)})")
            continue
        interactive = is_interactive(folder, configuration)
        for f in folds:
            if not 0 <= f < len(splits):
                continue
            val = folder / f"fold_{f}" / "validation"
            cmd = _train_command(name, tr, plans, configuration, f)
            if not (folder / f"fold_{f}").is_dir():
                missing.append(f"{tr} fold {f}: not trained ({folder / f'fold_{f}'} missing; run {cmd})")
            elif interactive and not (val / "interactive_summary.json").is_file():
                missing.append(f"{tr} fold {f}: no interactive validation ({val / 'interactive_summary.json'} "
                               f"missing; finish training or run {cmd} --val)")
            elif not interactive:
                ending = _file_ending(folder)
                absent = [k for k in splits[f]["val"] if not (val / f"{k}{ending}").is_file()]
                if not (val / "summary.json").is_file() or absent:
                    missing.append(f"{tr} fold {f}: validation incomplete in {val} ("
                                   + (f"no masks for {absent[:5]}{'...' if len(absent) > 5 else ''}; " if absent else "")
                                   + f"finish training or run {cmd} --val)")
    return missing


def _file_ending(folder: Path) -> str:
    return json.loads((folder / "dataset.json").read_text())["file_ending"]


# ------------------------------------------------------------------------------------------ baseline scoring
def seg_to_preprocessed_space(seg_file: str | os.PathLike, properties: Mapping, plans_manager, configuration_manager,
                              target_shape: Sequence[int]) -> np.ndarray:
    """A label map in original geometry brought into nnU-Net's preprocessed space of one case.

    Applies what nnU-Net's ``DefaultPreprocessor`` does to a segmentation: transpose, crop to the
    case's ``bbox_used_for_cropping`` (from the preprocessed case's properties) and resample with
    the configuration's segmentation resampling to ``target_shape`` (the preprocessed case's
    shape). Returns an integer array (z, y, x after nnU-Net's transpose).
    """
    seg, _ = plans_manager.image_reader_writer_class().read_seg(str(seg_file))
    seg = seg.transpose([0, *[i + 1 for i in plans_manager.transpose_forward]])
    expected = tuple(properties["shape_before_cropping"])
    if tuple(seg.shape[1:]) != expected:
        raise ValueError(f"{seg_file}: shape {tuple(seg.shape[1:])} (after nnU-Net's transpose) differs from the "
                         f"case's original shape {expected}; was it predicted for another image?")
    seg = seg[(slice(None), *bounding_box_to_slice(properties["bbox_used_for_cropping"]))]
    spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    seg = configuration_manager.resampling_fn_seg(seg, list(target_shape), spacing, configuration_manager.spacing)
    return np.asarray(seg[0]).astype(np.int16)


def restrict_to_target(pred: np.ndarray, seg: np.ndarray, target: np.ndarray, lesion_labels: Sequence[int],
                       spacing_zyx: Sequence[float]) -> np.ndarray:
    """The part of a lesion prediction that belongs to the ``target`` lesion.

    An automatic segmentation covers every lesion of the case, the click protocol only the target
    (the largest lesion). Each predicted voxel is given to the nearest ground-truth lesion (mm, a
    Voronoi split); only the target's share is scored, so other lesions neither help nor hurt,
    while false positives away from every lesion still count against the target. With one lesion
    per case this is the whole prediction.
    """
    others = np.isin(seg, lesion_labels) & ~target
    if not others.any():
        return pred
    d_target = ndimage.distance_transform_edt(~target, sampling=spacing_zyx)
    d_others = ndimage.distance_transform_edt(~others, sampling=spacing_zyx)
    return pred & (d_target <= d_others)


def constant_case_result(metrics: Mapping, n_clicks: int, case_id: str, spacing_zyx: Sequence[float],
                         attribute_truth: Mapping[str, str] | None = None, lesion_type: str | None = None,
                         nsd_tolerance_mm: float = 2.0) -> CaseResult:
    """A :class:`CaseResult` for a model that takes no clicks: the same metrics at every click."""
    per = {m: [float(metrics[m])] * int(n_clicks) for m in METRICS}
    noc = {}
    for t in NOC_THRESHOLDS:
        r = noc_at(per["dice"], t, int(n_clicks))
        noc[f"{round(t * 100):d}"] = {"clicks": r.clicks, "failed": r.failed}
    return CaseResult(case_id=case_id, spacing_zyx=[float(s) for s in spacing_zyx], n_clicks=int(n_clicks),
                      n_clicks_used=0, clicks=[], dice=per["dice"], nsd=per["nsd"], hd95=per["hd95"],
                      pred_empty=[bool(metrics["pred_empty"])] * int(n_clicks),
                      auc={m: auc_over_clicks(v) for m, v in per.items()}, noc=noc,
                      nsd_tolerance_mm=float(nsd_tolerance_mm), attributes_pred=None, attributes_prob=None,
                      attributes_pred_per_click=[], attribute_truth=dict(attribute_truth) if attribute_truth else None,
                      lesion_type=lesion_type, final_mask=None)


def score_no_click_prediction(pred_seg: np.ndarray, gt_seg: np.ndarray, lesion_labels: Sequence[int],
                              spacing_zyx: Sequence[float], n_clicks: int, case_id: str,
                              attribute_truth: Mapping[str, str] | None = None, lesion_type: str | None = None,
                              nsd_tolerance_mm: float = 2.0) -> CaseResult | None:
    """Scores one automatic (no-click) label map exactly as the interactive reports are scored.

    Both label maps are in nnU-Net's preprocessed space (``spacing_zyx``: the plans' target spacing,
    where the click protocol runs). Same target as the interactive validation (the largest
    connected lesion component of the ground truth, other lesions split off by
    :func:`restrict_to_target`), same metrics. ``None`` when the case has no lesion (the click
    protocol skips such cases too).
    """
    gt_seg = np.asarray(gt_seg)
    if np.asarray(pred_seg).shape != gt_seg.shape:
        raise ValueError(f"{case_id}: prediction shape {np.asarray(pred_seg).shape} differs from the ground truth "
                         f"{gt_seg.shape}")
    target, label_value = largest_lesion_component(gt_seg, lesion_labels)
    if label_value == 0:
        return None
    pred = restrict_to_target(np.isin(pred_seg, lesion_labels), gt_seg, target, lesion_labels, spacing_zyx)
    m = segmentation_metrics(pred, target, spacing_zyx, nsd_tolerance_mm)
    return constant_case_result(m, n_clicks, case_id, spacing_zyx, attribute_truth, lesion_type, nsd_tolerance_mm)


def attribute_table_for(dataset: str | int, schema) -> dict[str, dict[str, str]]:
    """``attributesTr.json`` of a dataset (the preprocessed copy, else the raw one); {} when there is none."""
    name = dataset_name(dataset)
    candidates = [preprocessed_root() / name / ATTRIBUTES_FILENAME]
    if nnUNet_raw.is_set():
        candidates.append(Path(nnUNet_raw.get()) / name / ATTRIBUTES_FILENAME)
    for path in candidates:
        if path.is_file():
            return read_attribute_table(path, schema)
    return {}


def load_baseline_fold(folder: Path, fold: int, val_cases: Sequence[str], configuration: str, n_clicks: int,
                       attribute_table: Mapping[str, Mapping[str, str]]) -> list[CaseResult]:
    plans_manager = PlansManager(str(folder / "plans.json"))
    cm = plans_manager.get_configuration(configuration)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    lesion_labels = lesion_labels_from_dataset_json(dataset_json)
    schema = schema_from_dataset_json(dataset_json)
    pre_folder = preprocessed_root() / plans_manager.dataset_name / cm.data_identifier
    ds = infer_dataset_class(str(pre_folder))(str(pre_folder), list(val_cases))
    out = []
    for k in val_cases:
        _, seg, _, properties = ds.load_case(k)
        entry = attribute_table.get(k, {})
        truth = {a: v for a, v in entry.items() if a in schema}
        gt = np.asarray(seg[0])
        pred = seg_to_preprocessed_space(folder / f"fold_{fold}" / "validation" / f"{k}{dataset_json['file_ending']}",
                                         properties, plans_manager, cm, gt.shape)
        r = score_no_click_prediction(pred, gt, lesion_labels, [float(s) for s in cm.spacing], n_clicks, k,
                                      truth or None, entry.get("lesion_type"))
        if r is not None:
            out.append(r)
    return out


def load_interactive_fold(folder: Path, fold: int, val_cases: Sequence[str], reports_folder: str = "reports"
                          ) -> list[CaseResult]:
    """The per-case reports of one fold's interactive validation, in split order (``reports_folder``
    ``reports_cvpr25``: those of the CVPR 2025 protocol)."""
    reports = folder / f"fold_{fold}" / "validation" / reports_folder
    summary = json.loads((reports.parent / "interactive_summary.json").read_text())
    expected = summary.get("cases", val_cases)  # cases without a lesion have no report
    missing = [k for k in expected if not (reports / f"{k}.json").is_file()]
    if missing:
        again = (f" (validated before the CVPR 2025 protocol existed: nnUNetv2_train DATASET 3d_fullres {fold} -tr "
                 f"{folder.name.split('__')[0]} --val runs it)" if reports_folder != "reports" else "")
        raise MissingResultsError([f"{folder.name} fold {fold}: no report for {missing} in {reports}{again}"])
    return [CaseResult.from_json(reports / f"{k}.json") for k in val_cases if k in set(expected)]


# ------------------------------------------------------------------------------------------ aggregation
@dataclass
class TrainerEvaluation:
    """A trainer's validation cases under the protocol, per fold, and their cross-fold summary."""

    trainer: str
    kind: str
    folds: list[int]
    cases: dict[int, list[CaseResult]] = field(repr=False)
    summary: dict = field(repr=False)
    folder: Path | None = None

    @property
    def n_clicks(self) -> int:
        return int(self.summary["pooled"]["n_clicks"])

    def all_cases(self) -> list[CaseResult]:
        return [r for f in self.folds for r in self.cases[f]]


def _fold_means(per_fold: Mapping[str, dict]) -> dict:
    out = {}
    for m in METRICS:
        curves = [s["mean_per_click"][m] for s in per_fold.values()]
        n = max(len(c) for c in curves)
        out[m] = []
        for k in range(n):
            v = np.array([c[k] for c in curves if k < len(c) and c[k] is not None], dtype=float)
            out[m].append({"mean": float(v.mean()) if v.size else None, "std": float(v.std()) if v.size else None,
                           "n_folds": int(v.size)})
    return out


def summarise_folds(cases: Mapping[int, Sequence[CaseResult]], schema) -> dict:
    """Per-fold and pooled ``summarise_cases`` plus the mean/std over folds of the per-fold means."""
    per_fold = {str(f): summarise_cases(rs, schema) for f, rs in cases.items()}
    pooled = summarise_cases([r for rs in cases.values() for r in rs], schema)
    return json_safe({"per_fold": per_fold, "pooled": pooled, "across_folds": _fold_means(per_fold)})


def evaluate_trainer(dataset: str | int, trainer: str, plans: str = "nnUNetPlans", configuration: str = "3d_fullres",
                     folds: Sequence[int] = (0, 1, 2, 3, 4), n_clicks: int | None = None,
                     write: bool = True) -> TrainerEvaluation:
    """Aggregates one trainer's validation across ``folds`` (see the module docstring).

    ``n_clicks``: clicks to repeat a no-click baseline's values over (default 5); ignored for an
    interactive trainer, whose reports fix it. Raises :class:`MissingResultsError` listing every
    missing fold before reading anything. With ``write``, the JSON/CSV files go into the trainer folder.
    """
    name = dataset_name(dataset)
    folds = [int(f) for f in folds]
    missing = find_missing(name, [trainer], plans, configuration, folds)
    if missing:
        raise MissingResultsError(missing, f"evaluation of {trainer}")
    folder = trainer_folder(name, trainer, plans, configuration)
    splits = load_splits(name)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    schema = schema_from_dataset_json(dataset_json)
    interactive = is_interactive(folder, configuration)
    cases: dict[int, list[CaseResult]] = {}
    table = None if interactive else attribute_table_for(name, schema)
    for f in folds:
        val = sorted(splits[f]["val"])
        if interactive:
            cases[f] = load_interactive_fold(folder, f, val)
        else:
            cases[f] = load_baseline_fold(folder, f, val, configuration, int(n_clicks or 5), table)
        if not cases[f]:
            raise MissingResultsError([f"{trainer} fold {f}: no validation case with a lesion"])
    summary = summarise_folds(cases, schema if interactive else None)
    summary = {"dataset": name, "trainer": trainer, "plans": plans, "configuration": configuration,
               "kind": KIND_INTERACTIVE if interactive else KIND_BASELINE, "folds": folds,
               "metric_space": "preprocessed volume (plans' target spacing), largest lesion component per case",
               "cases": {str(f): [r.case_id for r in cases[f]] for f in folds}, **summary}
    ev = TrainerEvaluation(trainer, summary["kind"], folds, cases, summary, folder)
    if write:
        write_trainer_evaluation(ev, folder)
    return ev


# ------------------------------------------------------------------------------------------ output files
def csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in row])
    return buf.getvalue()


def _curve_rows(trainer: str, scope: str, s: dict) -> Iterable[list]:
    for m in METRICS:
        for k, c in enumerate(s["per_click"][m]):
            yield [trainer, scope, m, k + 1, c["mean"], c["std"], c["n"], c["n_nan"]]


def write_trainer_evaluation(ev: TrainerEvaluation, folder: Path) -> list[Path]:
    """``crossval_interactive.json``, ``crossval_interactive.csv`` (per click) and ``crossval_attributes.csv``."""
    s = ev.summary
    rows = list(_curve_rows(ev.trainer, "pooled", s["pooled"]))
    for f, fs in s["per_fold"].items():
        rows += list(_curve_rows(ev.trainer, f"fold_{f}", fs))
    for t, ts in s["pooled"].get("by_lesion_type", {}).items():
        rows += list(_curve_rows(ev.trainer, f"lesion_type:{t}", ts))
    attr_rows = []
    for scope, block in [("pooled", s["pooled"])] + [(f"fold_{f}", fs) for f, fs in s["per_fold"].items()]:
        for a, e in (block.get("attributes") or {}).get("per_attribute", {}).items():
            attr_rows.append([ev.trainer, scope, a, e["accuracy"], e["majority_rate"], e["n"],
                              json.dumps(e["confusion_matrix"])])
    paths = [folder / CROSSVAL_JSON, folder / CROSSVAL_CSV, folder / CROSSVAL_ATTRIBUTES_CSV]
    write_json_atomic(paths[0], s)
    write_text_atomic(paths[1], csv_text(["trainer", "scope", "metric", "click", "mean", "std", "n", "n_nan"], rows))
    write_text_atomic(paths[2], csv_text(["trainer", "scope", "attribute", "accuracy", "majority_rate", "n",
                                          "confusion_matrix_truth_rows"], attr_rows))
    return paths


__all__ = ["MissingResultsError", "TrainerEvaluation", "evaluate_trainer", "find_missing", "trainer_folder",
           "dataset_name", "load_splits", "is_interactive", "seg_to_preprocessed_space", "restrict_to_target",
           "score_no_click_prediction", "constant_case_result", "summarise_folds", "write_trainer_evaluation",
           "attribute_table_for", "csv_text", "KIND_INTERACTIVE", "KIND_BASELINE"]
