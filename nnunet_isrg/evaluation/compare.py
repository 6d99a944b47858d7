"""Baselines versus ISRG in the paper's layout (``isrg compare``): Tables 2 and 3, the click figure, zero-shot.

Rows are methods (nnU-Net trainers), scored on the same validation cases of the same folds:

- Table 2 (segmentation): DSC, HD95 (mm) and NSD @ 2 mm at the requested clicks (default 1, 3, 5),
  mean +- std (ddof=0) over all validation cases of the folds (pooled). A no-click baseline
  (``nnUNetTrainer`` or a variant) has the same value at every click.
  With ``classical_baseline``, the classical interactive baseline of
  :mod:`nnunet_isrg.evaluation.classical_baseline` (region growing / threshold + connected
  component from the clicks) is a row too: the same click protocol on the same validation cases of
  each fold, on the same nnU-Net-preprocessed volumes (plans' spacing, channel 0) and target (the
  largest lesion component) as the trainers' interactive validation, its setting chosen per fold
  on that fold's training cases (:func:`~nnunet_isrg.evaluation.classical_baseline.run_classical_folds`;
  the JSON says which setting won in each fold).
- Table 3 (attributes): accuracy per attribute at the last click and their average, for the
  interactive trainers and, with ``attribute_baseline``, the non-deep baseline of
  :mod:`nnunet_isrg.evaluation.attribute_baseline` (evidence measured inside the ground-truth mask
  + scikit-learn classifier per attribute, fitted on each fold's training cases and evaluated on
  its validation cases). The majority-class rate of the same cases is given as a reference row,
  and a second table gives the balanced accuracy (mean recall over the true classes; always
  answering the majority class scores 1 / classes present). Trainers without any scored attribute
  (a dataset without attribute labels) have no row.
- Zero-shot (``zero_shot``): the same tables on the held-out lesion types of the raw dataset's
  ``imagesTs``/``labelsTs``/``attributesTs.json``: each fold's model is run on every held-out case
  (interactive trainers through the click protocol with :class:`LesionPredictor`, UNets through
  ``nnUNetPredictor`` on the same nnU-Net-preprocessed volume) and the results are pooled over
  folds and cases.

Everything a table needs is checked first; anything missing (trainer, fold, validation, clicks,
checkpoints, held-out cases) stops the comparison with one message listing all of it, and nothing
is written. Outputs (``out_dir``): ``comparison.md``, ``comparison.json``,
``comparison_segmentation.csv``, ``comparison_attributes.csv``, ``dice_vs_clicks.png``,
``attribute_accuracy.png``. The classical baseline joins the zero-shot block too (each fold's
chosen setting on every held-out case).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.paths import nnUNet_raw
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ..attributes import (lesion_labels_from_dataset_json, normalise_class, read_attribute_table,
                          schema_from_dataset_json)
from ..files import write_json_atomic, write_text_atomic
from ..inference.model_loading import load_trained_model
from ..lesions import largest_lesion_component
from .aggregate import (KIND_BASELINE, KIND_INTERACTIVE, MissingResultsError, TrainerEvaluation, csv_text,
                        dataset_name, evaluate_trainer, find_missing, is_interactive, load_splits,
                        load_interactive_fold, preprocessed_root, results_root, score_no_click_prediction,
                        trainer_folder)
from .attribute_baseline import case_features, extract_features, fit_attribute_baseline, predict
from .classical_baseline import (DEFAULT_SETTINGS, MAX_TRAINING_CASES, ClassicalCase, ClassicalFold,
                                 run_classical_baseline, run_classical_folds)
from .fold_validation import CVPR25_REPORTS_FOLDER, protocol_with_network
from .plots import curve_from_summary, plot_attribute_accuracy, plot_metric_vs_clicks
from .protocol import METRICS, CaseResult, score_attribute_pairs, summarise_cases

ATTRIBUTE_BASELINE = "attribute-baseline"
CLASSICAL_BASELINE = "classical-baseline"
KIND_CLASSICAL = "classical (clicks)"
NOT_A_TRAINER = (ATTRIBUTE_BASELINE, CLASSICAL_BASELINE)  # rows without an nnU-Net trainer
METRIC_HEADINGS = {"dice": "DSC", "hd95": "HD95", "nsd": "NSD"}
TABLE_METRICS = ("dice", "hd95", "nsd")  # the paper's Table 2 order, NSD added


def method_label(trainer: str) -> str:
    """Paper-style row name of a trainer (its class name stays in the table too)."""
    if trainer == ATTRIBUTE_BASELINE:
        return "Image measurements + random forest (non-deep)"
    if trainer == CLASSICAL_BASELINE:
        return "Region growing / threshold (classical, clicks)"
    if not trainer.startswith("ISRGTrainer"):
        return "nnU-Net UNet (no clicks)"
    for key, label in (("_Vanilla", "ISRG Vanilla"), ("_PointRefinement", "ISRG + Point Refinement"),
                       ("_FeatureSynergy", "ISRG + Feature Synergy")):
        if key in trainer:
            return label
    return "ISRG (Full)"


# ------------------------------------------------------------------------------------------ zero-shot data
@dataclass
class HeldOutCase:
    case_id: str
    image_files: list[str]
    label_file: str
    truth: dict = field(default_factory=dict)


def held_out_cases(dataset: str | int, folder: str | Path | None = None,
                   dataset_json: Mapping | None = None) -> tuple[list[HeldOutCase], dict]:
    """Held-out cases: ``imagesTs``/``labelsTs`` (+ ``attributesTs.json``) of ``folder``.

    ``folder`` defaults to the raw dataset (``nnUNet_raw/DatasetX``); ``dataset_json`` (file ending,
    channels, schema) defaults to that folder's ``dataset.json``, else the raw dataset's.
    """
    raw = Path(nnUNet_raw.get()) / dataset_name(dataset) if nnUNet_raw.is_set() else None
    folder = Path(folder) if folder else raw
    if folder is None:
        raise MissingResultsError(["nnUNet_raw is not set: the zero-shot block reads imagesTs/labelsTs from it"])
    if dataset_json is None:
        for candidate in (folder / "dataset.json", raw / "dataset.json" if raw else None):
            if candidate is not None and candidate.is_file():
                dataset_json = json.loads(candidate.read_text())
                break
        else:
            raise MissingResultsError([f"{folder}: no dataset.json to read the file ending and channels from"])
    ending = dataset_json["file_ending"]
    labels = sorted((folder / "labelsTs").glob(f"*{ending}")) if (folder / "labelsTs").is_dir() else []
    if not labels:
        raise MissingResultsError([f"{folder / 'labelsTs'}: no held-out (zero-shot) cases; generate the dataset with "
                                   f"held-out lesion types (isrg phantom --holdout-types ...)"])
    schema = schema_from_dataset_json(dataset_json)
    table_path = folder / "attributesTs.json"
    table = read_attribute_table(table_path, schema) if table_path.is_file() else {}
    n_channels = len(dataset_json["channel_names"])
    cases, missing = [], []
    for lab in labels:
        cid = lab.name[: -len(ending)]
        imgs = [folder / "imagesTs" / f"{cid}_{c:04d}{ending}" for c in range(n_channels)]
        absent = [str(p) for p in imgs if not p.is_file()]
        if absent:
            missing.append(f"held-out case {cid}: image(s) missing: {absent}")
        cases.append(HeldOutCase(cid, [str(p) for p in imgs], str(lab), table.get(cid, {})))
    if missing:
        raise MissingResultsError(missing)
    types = sorted({c.truth.get("lesion_type") for c in cases if c.truth.get("lesion_type")})
    return cases, {"types": types or ["unknown"], "n_cases": len(cases), "folder": str(folder)}


def preprocess_held_out(cases: Sequence[HeldOutCase], folder: Path, configuration: str) -> dict[str, tuple]:
    """nnU-Net's DefaultPreprocessor on each held-out case (image and label), with this trainer's plans."""
    pm = PlansManager(str(folder / "plans.json"))
    cm = pm.get_configuration(configuration)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    pre = DefaultPreprocessor(verbose=False)
    return {c.case_id: pre.run_case(c.image_files, c.label_file, pm, cm, dataset_json) for c in cases}


def zero_shot_trainer(ev: TrainerEvaluation, cases: Sequence[HeldOutCase], configuration: str,
                      n_clicks: int, device: str = "cpu") -> dict[int, list[CaseResult]]:
    """Each fold's model on every held-out case; interactive through the click protocol, UNet without clicks."""
    folder = ev.folder
    dataset_json = json.loads((folder / "dataset.json").read_text())
    schema = schema_from_dataset_json(dataset_json)
    lesion_labels = lesion_labels_from_dataset_json(dataset_json)
    spacing = [float(s) for s in PlansManager(str(folder / "plans.json")).get_configuration(configuration).spacing]
    pre = preprocess_held_out(cases, folder, configuration)
    out: dict[int, list[CaseResult]] = {}
    for f in ev.folds:
        results = []
        if ev.kind == KIND_INTERACTIVE:
            loaded = load_trained_model(folder, folds=(f,), device=device)
            model = loaded.network
            for c in cases:
                data, seg, _ = pre[c.case_id]
                gt, label_value = largest_lesion_component(np.asarray(seg[0]), lesion_labels)
                if label_value == 0:
                    continue
                r, _ = protocol_with_network(model, schema, torch.from_numpy(np.asarray(data, dtype=np.float32)), gt,
                                             spacing, n_clicks, {a: v for a, v in c.truth.items() if a in schema},
                                             case_id=c.case_id, lesion_type=c.truth.get("lesion_type"),
                                             device=device, keep_final_mask=False,
                                             untrained_attributes=loaded.untrained_attributes,
                                             attribute_class_counts=loaded.attribute_class_counts)
                results.append(r)
        else:
            predictor = nnUNetPredictor(device=torch.device(device), verbose=False, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(folder), use_folds=(f,),
                                                           checkpoint_name="checkpoint_final.pth")
            for c in cases:
                data, seg, _ = pre[c.case_id]
                logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(np.asarray(data)))
                pred = np.asarray(predictor.label_manager.convert_logits_to_segmentation(logits))
                r = score_no_click_prediction(pred, np.asarray(seg[0]), lesion_labels, spacing, n_clicks, c.case_id,
                                              {a: v for a, v in c.truth.items() if a in schema} or None,
                                              c.truth.get("lesion_type"))
                if r is not None:
                    results.append(r)
        out[f] = results
    return out


# ------------------------------------------------------------------------------------------ attribute baseline
def _attribute_scores(truth: Mapping[str, list], pred: Mapping[str, list], schema) -> dict:
    """Attribute scores (:func:`score_attribute_pairs`) of the cases where truth and prediction are known."""
    pairs = {name: [(normalise_class(schema, name, t), normalise_class(schema, name, p))
                    for t, p in zip(truth.get(name, []), pred.get(name, [])) if t is not None and p is not None]
             for name in schema}
    return score_attribute_pairs(pairs, schema)


def attribute_baseline_scores(dataset: str | int, folds: Sequence[int], val_cases: Mapping[int, Sequence[str]],
                              held_out: Sequence[HeldOutCase] | None = None) -> dict:
    """The non-deep attribute baseline per fold: fit on the fold's training cases, predict its validation
    cases (and, when given, the held-out cases); scores pooled over folds."""
    raw = Path(nnUNet_raw.get()) / dataset_name(dataset)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    schema = schema_from_dataset_json(dataset_json)
    lesion_labels = lesion_labels_from_dataset_json(dataset_json)
    ids, X, names, labels = extract_features(raw, "Tr", progress=False)
    index = {c: i for i, c in enumerate(ids)}
    splits = load_splits(dataset)
    if held_out:
        rows = [case_features(c.image_files[0], c.label_file, lesion_labels) for c in held_out]
        names_ts = sorted(set().union(*(r.keys() for r in rows)))
        X_ts = np.array([[r.get(k, np.nan) for k in names_ts] for r in rows], dtype=np.float64)
    truth, pred = {a: [] for a in schema}, {a: [] for a in schema}
    truth_ts, pred_ts = {a: [] for a in schema}, {a: [] for a in schema}
    for f in folds:
        train = [index[c] for c in splits[f]["train"] if c in index]
        val = [index[c] for c in val_cases[f]]
        model = fit_attribute_baseline(X[train], {a: [labels[a][i] for i in train] for a in schema}, names)
        p = predict(model, X[val], names, balanced=True)   # the decision rule of the model's report
        for a in schema:
            truth[a] += [labels[a][i] for i in val]
            pred[a] += p.get(a, [None] * len(val))
        if held_out:
            pt = predict(model, X_ts, names_ts, balanced=True)
            for a in schema:
                truth_ts[a] += [c.truth.get(a) for c in held_out]
                pred_ts[a] += pt.get(a, [None] * len(held_out))
    out = {"validation": _attribute_scores(truth, pred, schema),
           "features": list(names), "fitted_on": "each fold's training cases (splits_final.json)",
           "mask": "ground-truth lesion mask",
           "decision": "balanced (the class of the highest prior-corrected probability)"}
    if held_out:
        out["zero_shot"] = _attribute_scores(truth_ts, pred_ts, schema)
    return out


# ------------------------------------------------------------------------------------------ classical baseline
def preprocessed_lesion_loader(folder: Path, configuration: str) -> Callable[[str], ClassicalCase | None]:
    """``load(case_id)``: a case of the preprocessed dataset that the trainer in ``folder`` was trained
    on, as the trainers' interactive validation sees it: channel 0 of the preprocessed volume (plans'
    spacing, nnU-Net's normalisation) and the largest lesion component of its label map as the
    target; None for a case without a lesion."""
    pm = PlansManager(str(folder / "plans.json"))
    cm = pm.get_configuration(configuration)
    lesion_labels = lesion_labels_from_dataset_json(json.loads((folder / "dataset.json").read_text()))
    pre = preprocessed_root() / pm.dataset_name / cm.data_identifier
    ds = infer_dataset_class(str(pre))(str(pre))
    spacing = [float(s) for s in cm.spacing]

    def load(case_id: str) -> ClassicalCase | None:
        data, seg, _, _ = ds.load_case(case_id)
        gt, label_value = largest_lesion_component(np.asarray(seg[0]), lesion_labels)
        if label_value == 0:
            return None
        return ClassicalCase(case_id, np.asarray(data[0], dtype=np.float32), gt, spacing)

    return load


def classical_baseline_folds(dataset: str | int, folder: Path, configuration: str, folds: Sequence[int],
                             val_cases: Mapping[int, Sequence[str]], n_clicks: int,
                             max_training_cases: int | None = MAX_TRAINING_CASES,
                             progress: Callable[[str], None] | None = None) -> dict[int, ClassicalFold]:
    """The classical baseline on each fold (setting chosen on the fold's training cases of
    ``splits_final.json``), scored on ``val_cases[fold]`` of the preprocessed data of ``folder``'s plans."""
    return run_classical_folds(preprocessed_lesion_loader(folder, configuration), load_splits(dataset), folds,
                               val_cases, n_clicks, DEFAULT_SETTINGS, max_training_cases, progress)


def classical_zero_shot(per_fold: Mapping[int, ClassicalFold], cases: Sequence[HeldOutCase], folder: Path,
                        configuration: str, n_clicks: int) -> list[CaseResult]:
    """Each fold's chosen setting on every held-out case, preprocessed with ``folder``'s plans as the
    models' zero-shot block does."""
    pm = PlansManager(str(folder / "plans.json"))
    spacing = [float(s) for s in pm.get_configuration(configuration).spacing]
    lesion_labels = lesion_labels_from_dataset_json(json.loads((folder / "dataset.json").read_text()))
    pre = preprocess_held_out(cases, folder, configuration)
    targets, types = [], {}
    for c in cases:
        data, seg, _ = pre[c.case_id]
        gt, label_value = largest_lesion_component(np.asarray(seg[0]), lesion_labels)
        if label_value:
            targets.append(ClassicalCase(c.case_id, np.asarray(data[0], dtype=np.float32), gt, spacing))
            types[c.case_id] = c.truth.get("lesion_type")
    out = []
    for f in sorted(per_fold):
        for r in run_classical_baseline(targets, per_fold[f].setting, n_clicks):
            r.lesion_type = types.get(r.case_id)
            out.append(r)
    return out


def _classical_row(per_fold: Mapping[int, ClassicalFold], val_cases: Mapping[int, Sequence[str]]) -> dict:
    problems = [f"fold {f}: the classical baseline scored {sorted(r.case_id for r in cf.results)}, the models "
                f"{sorted(val_cases[f])}" for f, cf in per_fold.items()
                if sorted(r.case_id for r in cf.results) != sorted(val_cases[f])]
    if problems:
        raise MissingResultsError(problems, "comparison (classical baseline on other cases)")
    return {"label": method_label(CLASSICAL_BASELINE), "trainer": CLASSICAL_BASELINE, "kind": KIND_CLASSICAL,
            "summary": summarise_cases([r for f in sorted(per_fold) for r in per_fold[f].results])}


# ------------------------------------------------------------------------------------------ the comparison
@dataclass
class ComparisonRequest:
    dataset: str | int
    trainers: list[str]
    baselines: list[str] = field(default_factory=lambda: ["nnUNetTrainer"])
    plans: str = "nnUNetPlans"
    configuration: str = "3d_fullres"
    folds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    clicks: list[int] = field(default_factory=lambda: [1, 3, 5])
    attribute_baseline: bool = False
    classical_baseline: bool = False
    classical_max_training_cases: int | None = MAX_TRAINING_CASES  # per fold, to choose the setting; None: all
    zero_shot: bool = False
    zero_shot_dir: str | Path | None = None  # default: the raw dataset's imagesTs/labelsTs
    out_dir: str | Path | None = None
    device: str = "cpu"
    cvpr25: bool = False  # also the CVPR 2025 protocol's table (the box, then clicks) of the ISRG trainers


def _check(req: ComparisonRequest) -> tuple[str, list[str]]:
    name = dataset_name(req.dataset)
    methods = list(dict.fromkeys(list(req.baselines) + list(req.trainers)))
    missing = find_missing(name, methods, req.plans, req.configuration, req.folds)
    if not req.clicks or any(int(k) < 1 for k in req.clicks):
        missing.append(f"clicks must be >= 1, got {req.clicks}")
    for tr in req.trainers:
        folder = trainer_folder(name, tr, req.plans, req.configuration)
        if (folder / "plans.json").is_file() and not is_interactive(folder, req.configuration):
            missing.append(f"{tr} is listed with --trainers but is not an interactive (ISRG) trainer; "
                           f"pass it with --baseline")
        for f in req.folds:
            summary = folder / f"fold_{f}" / "validation" / "interactive_summary.json"
            if summary.is_file():
                n = json.loads(summary.read_text()).get("n_clicks")
                if n is not None and max(req.clicks) > int(n):
                    missing.append(f"{tr} fold {f}: validated with {n} clicks, the table asks for click "
                                   f"{max(req.clicks)} (use --clicks up to {n}, or validate with more clicks)")
    if req.zero_shot:
        try:
            held_out_cases(name, req.zero_shot_dir)
        except MissingResultsError as e:
            missing += e.missing
        for tr in methods:
            folder = trainer_folder(name, tr, req.plans, req.configuration)
            for f in req.folds:
                ckpt = folder / f"fold_{f}" / "checkpoint_final.pth"
                if folder.is_dir() and (folder / f"fold_{f}").is_dir() and not ckpt.is_file():
                    missing.append(f"{tr} fold {f}: {ckpt} missing (the zero-shot block runs the trained model)")
    if req.attribute_baseline:
        if not nnUNet_raw.is_set() or not (Path(nnUNet_raw.get()) / name / "imagesTr").is_dir():
            missing.append(f"the attribute baseline needs the raw dataset (nnUNet_raw/{name}/imagesTr, labelsTr)")
    if req.classical_baseline:
        plans_file = preprocessed_root() / name / f"{req.plans}.json"
        data = None
        if plans_file.is_file():
            cm = PlansManager(str(plans_file)).get_configuration(req.configuration)
            data = preprocessed_root() / name / cm.data_identifier
        if data is None or not data.is_dir():
            missing.append(f"the classical baseline runs on the preprocessed cases: {data or plans_file} missing "
                           f"(plan and preprocess the dataset with plans {req.plans})")
    return name, missing


def _segmentation_rows(label: str, trainer: str, kind: str, summary: dict, clicks: Sequence[int], split: str):
    for m in TABLE_METRICS:
        for k in clicks:
            c = summary["per_click"][m][k - 1]
            yield [split, label, trainer, kind, m, k, c["mean"], c["std"], c["n"], c["n_nan"]]


def _fmt(mean, std, metric: str) -> str:
    if mean is None:
        return "n/a"
    digits = 2 if metric == "hd95" else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown_segmentation(block: Mapping[str, dict], clicks: Sequence[int]) -> str:
    head = ["Method", "Trainer"] + [f"{METRIC_HEADINGS[m]}@{k}" for m in TABLE_METRICS for k in clicks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for trainer, r in block.items():
        cells = [r["label"], "—" if trainer in NOT_A_TRAINER else f"`{trainer}`"]
        cells += [_fmt(r[m][str(k)]["mean"], r[m][str(k)]["std"], m) for m in TABLE_METRICS for k in clicks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown_attributes(block: Mapping[str, dict], schema, score: str = "accuracy") -> str:
    """Table 3: one row per method, one column per attribute; ``score`` "accuracy" or "balanced_accuracy",
    with the majority class's score as the reference row."""
    reference = {"accuracy": ("majority_rate", "Majority-class rate (reference)"),
                 "balanced_accuracy": ("majority_balanced_accuracy", "Majority class (reference)")}[score]
    head = ["Method", "Trainer"] + list(schema) + ["Average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for trainer, r in block.items():
        per = r["per_attribute"]
        values = [per[a].get(score) for a in schema]
        known = [v for v in values if v is not None]
        cells = [r["label"], "—" if trainer in NOT_A_TRAINER else f"`{trainer}`"]
        cells += ["n/a" if v is None else f"{v:.3f}" for v in values]
        cells.append(f"**{np.mean(known):.3f}**" if known else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    if block:  # every method is scored on the same cases, so one majority-class reference per attribute
        per = next(iter(block.values()))["per_attribute"]
        rates = [per[a].get(reference[0]) for a in schema]
        known = [v for v in rates if v is not None]
        cells = [reference[1], "—"] + ["n/a" if v is None else f"{v:.3f}" for v in rates]
        cells.append(f"{np.mean(known):.3f}" if known else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _has_balanced(block: Mapping[str, dict]) -> bool:
    return any(e.get("balanced_accuracy") is not None for r in block.values() for e in r["per_attribute"].values())


def _check_same_cases(evals: Sequence[TrainerEvaluation]) -> None:
    ref = evals[0]
    problems = []
    for ev in evals[1:]:
        for f in ref.folds:
            a = sorted(r.case_id for r in ref.cases[f])
            b = sorted(r.case_id for r in ev.cases[f])
            if a != b:
                problems.append(f"fold {f}: {ev.trainer} was validated on {len(b)} cases, {ref.trainer} on {len(a)} "
                                f"(differing: {sorted(set(a) ^ set(b))[:6]}); the methods must share splits_final.json")
    if problems:
        raise MissingResultsError(problems, "comparison (methods scored on different cases)")


def _seg_row(ev: TrainerEvaluation) -> dict:
    return {"label": method_label(ev.trainer), "trainer": ev.trainer, "kind": ev.kind, "summary": ev.summary["pooled"]}


def _attr_row(trainer: str, attributes: Mapping | None) -> dict | None:
    """A Table 3 row, or None when no attribute was scored (a dataset without attribute labels)."""
    if not attributes or attributes.get("mean_accuracy") is None:
        return None
    return {"label": method_label(trainer), "trainer": trainer, "attributes": attributes}


def _zero_shot_rows(req: ComparisonRequest, all_evals, held, folds, n_clicks, schema, classical, attr_base, say):
    """The zero-shot block's Table 2 and Table 3 rows (baselines, classical, ISRG trainers; attribute baseline)."""
    seg_rows, attr_rows = [], []
    for ev in all_evals:
        say(f"zero-shot: {ev.trainer} on {len(held)} held-out cases x {len(folds)} fold(s)")
        per_fold = zero_shot_trainer(ev, held, req.configuration, ev.n_clicks if ev.kind == KIND_INTERACTIVE
                                     else n_clicks, req.device)
        pooled_cases = [r for f in folds for r in per_fold[f]]
        if not pooled_cases:
            raise MissingResultsError([f"zero-shot: no held-out case with a lesion for {ev.trainer}"])
        s = summarise_cases(pooled_cases, schema if ev.kind == KIND_INTERACTIVE else None)
        seg_rows.append({"label": method_label(ev.trainer), "trainer": ev.trainer, "kind": ev.kind, "summary": s})
        row = _attr_row(ev.trainer, s.get("attributes")) if ev.kind == KIND_INTERACTIVE else None
        if row:
            attr_rows.append(row)
    if classical is not None:
        say(f"zero-shot: the classical baseline on {len(held)} held-out cases x {len(folds)} fold(s)")
        results = classical_zero_shot(classical, held, all_evals[0].folder, req.configuration, n_clicks)
        n_base = sum(ev.kind == KIND_BASELINE for ev in all_evals)
        seg_rows.insert(n_base, {"label": method_label(CLASSICAL_BASELINE), "trainer": CLASSICAL_BASELINE,
                                 "kind": KIND_CLASSICAL, "summary": summarise_cases(results)})
    if attr_base is not None and _attr_row(ATTRIBUTE_BASELINE, attr_base["zero_shot"]):
        attr_rows.append(_attr_row(ATTRIBUTE_BASELINE, attr_base["zero_shot"]))
    return seg_rows, attr_rows


def run_comparison(req: ComparisonRequest, progress: bool = True) -> dict:
    """Builds the comparison tables, CSV, JSON and plots; returns the JSON document (see module docstring)."""
    t0 = time.time()
    name, missing = _check(req)
    if missing:
        raise MissingResultsError(missing, "comparison")
    say = print if progress else (lambda *a, **k: None)
    folds = [int(f) for f in req.folds]
    clicks = sorted({int(k) for k in req.clicks})
    evals: list[TrainerEvaluation] = []
    for tr in req.trainers:
        say(f"evaluating {tr} (folds {folds})")
        evals.append(evaluate_trainer(name, tr, req.plans, req.configuration, folds))
    n_clicks = max([e.n_clicks for e in evals] + [max(clicks)])
    base_evals = []
    for tr in req.baselines:
        say(f"scoring the no-click baseline {tr} on the same validation cases")
        base_evals.append(evaluate_trainer(name, tr, req.plans, req.configuration, folds, n_clicks=n_clicks))
    all_evals = base_evals + evals
    _check_same_cases(all_evals)
    schema = schema_from_dataset_json(json.loads((all_evals[0].folder / "dataset.json").read_text()))
    val_cases = {f: [r.case_id for r in all_evals[0].cases[f]] for f in folds}
    out_dir = Path(req.out_dir) if req.out_dir else \
        results_root() / name / f"isrg_comparison__{req.plans}__{req.configuration}"

    # ---- validation tables: no-click baselines, the classical baseline, the ISRG trainers
    classical = None
    seg_rows = [_seg_row(ev) for ev in base_evals]
    if req.classical_baseline:
        say(f"the classical baseline: setting chosen per fold on the training cases, {n_clicks} clicks")
        classical = classical_baseline_folds(name, all_evals[0].folder, req.configuration, folds, val_cases, n_clicks,
                                             req.classical_max_training_cases, say if progress else None)
        seg_rows.append(_classical_row(classical, val_cases))
    seg_rows += [_seg_row(ev) for ev in evals]
    attr_rows = [row for ev in evals if (row := _attr_row(ev.trainer, ev.summary["pooled"].get("attributes")))]
    held, held_info = (None, None)
    if req.zero_shot:
        held, held_info = held_out_cases(name, req.zero_shot_dir)
    attr_base = None
    if req.attribute_baseline:
        say("fitting the non-deep attribute baseline per fold")
        attr_base = attribute_baseline_scores(name, folds, val_cases, held)
        if _attr_row(ATTRIBUTE_BASELINE, attr_base["validation"]):
            attr_rows.append(_attr_row(ATTRIBUTE_BASELINE, attr_base["validation"]))
    zs_seg_rows, zs_attr_rows = ([], []) if not req.zero_shot else \
        _zero_shot_rows(req, all_evals, held, folds, n_clicks, schema, classical, attr_base, say)

    # ---- files
    doc = _document(req, name, folds, clicks, val_cases, seg_rows, attr_rows, zs_seg_rows, zs_attr_rows, held_info,
                    attr_base, schema, classical, n_clicks)
    if req.cvpr25:
        say("the CVPR 2025 protocol (box, then clicks) from the validation's reports_cvpr25/")
        doc["cvpr25"] = [_cvpr25_row(ev, val_cases) for ev in evals]
    files = _write_outputs(out_dir, doc, seg_rows, attr_rows, zs_seg_rows, zs_attr_rows, clicks, schema)
    doc["files"] = {k: str(v) for k, v in files.items()}
    doc["run_time_s"] = round(time.time() - t0, 1)
    write_json_atomic(out_dir / "comparison.json", doc)
    say(f"wrote {out_dir / 'comparison.md'}")
    return doc


def _cvpr25_row(ev: TrainerEvaluation, val_cases: Mapping[int, Sequence[str]]) -> dict:
    """One ISRG trainer under the CVPR 2025 protocol, its folds' cases pooled, beside its click protocol."""
    cases = [r for f in ev.folds for r in load_interactive_fold(ev.folder, f, val_cases[f], CVPR25_REPORTS_FOLDER)]
    s = summarise_cases(cases)
    clicks = ev.summary["pooled"]["mean_per_click"]["dice"]
    return {"label": method_label(ev.trainer), "trainer": ev.trainer, "n_cases": len(cases),
            "dice": s["mean_per_click"]["dice"], "nsd": s["mean_per_click"]["nsd"], "auc_dice": s["auc"]["dice"]["mean"],
            "final_dice": s["mean_per_click"]["dice"][-1], "click_protocol_dice": clicks,
            "box_minus_first_click": s["mean_per_click"]["dice"][0] - clicks[0]}


def _markdown_cvpr25(rows: Sequence[Mapping]) -> str:
    n = len(rows[0]["dice"])
    head = ["method", "box", *[f"box + {k} click{'s' if k > 1 else ''}" for k in range(1, n)], "AUC", "final Dice",
            "clicks only: 1 click", f"clicks only: {n - 1} clicks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{d:.3f} / {s:.3f}" for d, s in zip(r["dice"], r["nsd"])]
        clicks = r["click_protocol_dice"]
        lines.append("| " + " | ".join([r["label"], *cells, f"{r['auc_dice']:.3f}", f"{r['final_dice']:.3f}",
                                        f"{clicks[0]:.3f}", f"{clicks[min(n - 1, len(clicks)) - 1]:.3f}"]) + " |")
    return "\n".join(lines)


def _plot_names(rows: list[dict]) -> list[str]:
    """Row labels for legends; the trainer name is added where two rows share a label."""
    labels = [r["label"] for r in rows]
    return [l if labels.count(l) == 1 else f"{l} [{r['trainer']}]" for l, r in zip(labels, rows)]


def _curves(rows: list[dict], max_click: int) -> dict:
    return {name: curve_from_summary(r["summary"], "dice", max_click, no_clicks=r["kind"] == KIND_BASELINE)
            for name, r in zip(_plot_names(rows), rows)}


def _document(req, name, folds, clicks, val_cases, seg_rows, attr_rows, zs_seg_rows, zs_attr_rows, held_info,
              attr_base, schema, classical=None, n_clicks=None) -> dict:
    def seg_block(rows):
        return {r["trainer"]: {"label": r["label"], "kind": r["kind"], "n_cases": r["summary"]["n_cases"],
                               **{m: {str(k): {key: r["summary"]["per_click"][m][k - 1][key]
                                               for key in ("mean", "std", "n", "n_nan")} for k in clicks}
                                  for m in METRICS},
                               "mean_per_click": r["summary"]["mean_per_click"],
                               "auc": r["summary"]["auc"], "noc": r["summary"]["noc"],
                               "by_lesion_type": {t: s["mean_per_click"] for t, s in
                                                  r["summary"].get("by_lesion_type", {}).items()}}
                for r in rows}

    def attr_block(rows):
        keys = ("accuracy", "balanced_accuracy", "majority_rate", "majority_balanced_accuracy", "n", "confusion_matrix")
        return {r["trainer"]: {"label": r["label"], "mean_accuracy": r["attributes"]["mean_accuracy"],
                               "mean_balanced_accuracy": r["attributes"].get("mean_balanced_accuracy"),
                               "per_attribute": {a: {k: e.get(k) for k in keys}
                                                 for a, e in r["attributes"]["per_attribute"].items()}}
                for r in rows}

    doc = {"dataset": name, "plans": req.plans, "configuration": req.configuration, "folds": folds,
           "clicks": clicks, "n_validation_cases": sum(len(v) for v in val_cases.values()),
           "validation_cases": {str(f): v for f, v in val_cases.items()},
           "protocol": "DESIGN.md section 7: first click at the interior point farthest from the boundary, then the "
                       "centre of the largest error component; metrics on the preprocessed volume (plans' target "
                       "spacing) against the largest lesion component; NSD at 2 mm; mean ± std (ddof=0) pooled "
                       "over all validation cases of the folds",
           "methods": [{"trainer": r["trainer"], "label": r["label"], "kind": r["kind"]} for r in seg_rows],
           "validation": {"segmentation": seg_block(seg_rows), "attributes": attr_block(attr_rows)},
           "schema": {k: list(v) for k, v in schema.items()}}
    if attr_base is not None:
        doc["attribute_baseline"] = {k: attr_base[k] for k in ("features", "fitted_on", "mask", "decision")}
    if classical is not None:
        limit = req.classical_max_training_cases
        doc["classical_baseline"] = {
            "methods": "seeded region growing (SimpleITK ConfidenceConnected) or threshold + connected component "
                       "(ConnectedThreshold) from the positive clicks, negative clicks trim the region",
            "image": "channel 0 of the nnU-Net-preprocessed volume (plans' spacing and normalisation), the target "
                     "the largest lesion component, as in the trainers' interactive validation",
            "settings_tried": [st.name for st in DEFAULT_SETTINGS],
            "chosen_by": f"best mean Dice after click {n_clicks} on the fold's training cases (splits_final.json"
                         + (f"; at most {limit}, evenly spread over the sorted case ids)" if limit else ")"),
            "per_fold": {str(f): cf.to_dict() for f, cf in sorted(classical.items())}}
    if zs_seg_rows:
        doc["zero_shot"] = {"types": held_info["types"], "n_cases": held_info["n_cases"],
                            "pooled_over": "every fold's model x every held-out case",
                            "segmentation": seg_block(zs_seg_rows), "attributes": attr_block(zs_attr_rows)}
    return doc


def comparison_markdown(doc: Mapping, figures: Mapping[str, str] | None = None) -> str:
    """The Markdown tables of a comparison document (``comparison.json``); ``figures``: caption -> path."""
    schema, clicks = doc["schema"], doc["clicks"]
    folds = ", ".join(map(str, doc["folds"]))
    val = doc["validation"]
    parts = [f"**{doc['dataset']}**, plans `{doc['plans']}`, configuration `{doc['configuration']}`, "
             f"fold(s) {folds}: {doc['n_validation_cases']} validation cases (pooled), mean ± std. "
             f"DSC and NSD (2 mm tolerance) in [0, 1], HD95 in mm; the UNet takes no clicks (same value at every "
             f"click).",
             "", "**Interactive segmentation (validation)**", "", _markdown_segmentation(val["segmentation"], clicks)]
    if val["attributes"]:
        parts += ["", "**Attribute accuracy (validation, at the last click)**", "",
                  _markdown_attributes(val["attributes"], schema)]
        if _has_balanced(val["attributes"]):
            parts += ["", "**Attribute balanced accuracy (validation, at the last click)**: the mean recall over "
                          "the true classes, so always answering the majority class scores 1 / (classes present)",
                      "", _markdown_attributes(val["attributes"], schema, "balanced_accuracy")]
    if "zero_shot" in doc:
        z = doc["zero_shot"]
        parts += ["", f"**Zero-shot: held-out lesion types {', '.join(z['types'])}** ({z['n_cases']} cases, "
                      f"each evaluated with every fold's model)", "", _markdown_segmentation(z["segmentation"], clicks)]
        if z["attributes"]:
            parts += ["", _markdown_attributes(z["attributes"], schema)]
    if "classical_baseline" in doc:
        c = doc["classical_baseline"]
        chosen = "; ".join(f"fold {f}: `{e['setting']}` (training Dice {e['training_mean_dice'][e['setting']]:.3f} "
                           f"on {e['n_training_cases_used']} cases)" for f, e in c["per_fold"].items())
        parts += ["", f"Classical interactive baseline: {c['methods']}, through the same click protocol on the same "
                      f"cases; {len(c['settings_tried'])} settings tried, the one with the {c['chosen_by']} used on "
                      f"its validation cases: {chosen}."]
    if "attribute_baseline" in doc:
        parts += ["", f"Non-deep attribute baseline: {len(doc['attribute_baseline']['features'])} image measurements "
                      f"inside the {doc['attribute_baseline']['mask']}, one random forest per attribute fitted on "
                      f"{doc['attribute_baseline']['fitted_on']}"
                      + ("; both it and ISRG name the class of the highest probability corrected for the training "
                         "cases' class frequencies (balanced decision)." if doc['attribute_baseline'].get("decision")
                         else ".")]
    if doc.get("cvpr25"):
        parts += ["", "**CVPR 2025 interactive protocol (validation)**: the lesion's tight 3D box first, then up to "
                      "5 clicks, each at the centre of the largest error component; mean Dice / NSD after each "
                      "interaction, the area under the Dice curve and the final Dice, beside the click protocol's Dice "
                      "after 1 and 5 clicks.", "", _markdown_cvpr25(doc["cvpr25"])]
    if figures:
        parts += [""] + [f"![{k}]({v})" for k, v in figures.items()]
    return "\n".join(parts) + "\n"


def _write_outputs(out_dir: Path, doc, seg_rows, attr_rows, zs_seg_rows, zs_attr_rows, clicks, schema) -> dict:
    files = {"markdown": out_dir / "comparison.md", "segmentation_csv": out_dir / "comparison_segmentation.csv",
             "attributes_csv": out_dir / "comparison_attributes.csv", "dice_plot": out_dir / "dice_vs_clicks.png",
             "attribute_plot": out_dir / "attribute_accuracy.png", "json": out_dir / "comparison.json"}
    rows = []
    for split, block in (("validation", seg_rows), ("zero-shot", zs_seg_rows)):
        for r in block:
            rows += list(_segmentation_rows(r["label"], r["trainer"], r["kind"], r["summary"], clicks, split))
    write_text_atomic(files["segmentation_csv"], csv_text(
        ["split", "method", "trainer", "kind", "metric", "click", "mean", "std", "n", "n_nan"], rows))
    arows = []
    for split, block in (("validation", attr_rows), ("zero-shot", zs_attr_rows)):
        for r in block:
            for a, e in r["attributes"]["per_attribute"].items():
                arows.append([split, r["label"], r["trainer"], a, e["accuracy"], e["majority_rate"], e["n"],
                              e.get("balanced_accuracy"), e.get("majority_balanced_accuracy")])
            arows.append([split, r["label"], r["trainer"], "average", r["attributes"]["mean_accuracy"], None, None,
                          r["attributes"].get("mean_balanced_accuracy"), None])
    write_text_atomic(files["attributes_csv"], csv_text(
        ["split", "method", "trainer", "attribute", "accuracy", "majority_rate", "n", "balanced_accuracy",
         "majority_balanced_accuracy"], arows))
    max_click = max(max(clicks), max(len(r["summary"]["mean_per_click"]["dice"]) for r in seg_rows))
    panels = {"validation": _curves(seg_rows, max_click)}
    if zs_seg_rows:
        panels["zero-shot (" + ", ".join(doc["zero_shot"]["types"]) + ")"] = _curves(zs_seg_rows, max_click)
    plot_metric_vs_clicks(panels, files["dice_plot"], "dice", f"{doc['dataset']}: Dice against clicks")
    figures = {"Dice against clicks": files["dice_plot"].name}
    if attr_rows:
        acc = {name: {a: e["accuracy"] for a, e in r["attributes"]["per_attribute"].items()}
               for name, r in zip(_plot_names(attr_rows), attr_rows)}
        majority = {a: e["majority_rate"] for a, e in attr_rows[0]["attributes"]["per_attribute"].items()}
        plot_attribute_accuracy(acc, files["attribute_plot"], majority, f"{doc['dataset']}: attribute accuracy "
                                                                        f"(validation)")
        figures["Attribute accuracy"] = files["attribute_plot"].name
    else:
        files.pop("attribute_plot")
    write_text_atomic(files["markdown"], comparison_markdown(doc, figures))
    return files


__all__ = ["ComparisonRequest", "run_comparison", "method_label", "held_out_cases", "zero_shot_trainer",
           "attribute_baseline_scores", "classical_baseline_folds", "classical_zero_shot",
           "preprocessed_lesion_loader", "comparison_markdown", "ATTRIBUTE_BASELINE", "CLASSICAL_BASELINE"]
