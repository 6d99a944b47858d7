"""The deterministic interactive evaluation protocol (DESIGN.md section 7), independent of any model.

A model enters only through ``predict_fn(clicks) -> (pred_mask, attribute_probs)``, called after
each click with *all* clicks so far (``[((z, y, x), is_positive), ...]``, voxel indices of the
array given as ``gt``); the caller keeps its own state (embedding cache, previous logits).

Per case: click 1 at the interior point of the lesion farthest from its boundary; click k+1 at the
point farthest from the boundary of the largest error component of prediction k (positive if
missed, negative if over-segmented); up to ``n_clicks``. After each click: Dice, NSD at
``nsd_tolerance_mm`` and HD95 (mm). If a prediction equals the ground truth there is no error left
to click: the protocol stops asking the model and carries that prediction's values forward, so
every case has a curve of ``n_clicks`` values (``n_clicks_used`` says how many were real).

``first_prompt="box"`` is the CVPR 2025 interactive challenge's protocol: interaction 1 is the
lesion's tight 3D bounding box (``predict_fn(clicks, box=(lower corner, higher corner))``, both
corner voxels inside, clicks still empty), then up to ``n_clicks`` clicks, each at the centre of the
largest error component as above, every call with the box and all clicks so far. The curves then
have ``n_clicks + 1`` values (the box first); ``auc`` is the area under the Dice curve over all
interactions and the last value is the final Dice.

:func:`summarise_cases` aggregates cases: mean/std per click, AUC over clicks, NoC@85/90 with
failure counts, attribute accuracy and confusion matrices, optionally per lesion type. Output is
JSON-serialisable (NaN written as null).
"""
from __future__ import annotations

import json
import os
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from ..attributes import Schema, normalise_class
from ..clicks import first_click_deterministic, next_click_deterministic
from ..files import json_safe, write_json_atomic
from ..prompts import bounding_box
from .metrics import auc_over_clicks, noc_at, segmentation_metrics, summarise_values

Click = tuple[tuple[int, int, int], bool]
AttributeProbs = Mapping[str, Any]  # name -> {class: prob} (or name -> class string)
PredictFn = Callable[..., tuple[np.ndarray, AttributeProbs | None]]   # (clicks[, box=...]) -> mask, probs

METRICS = ("dice", "nsd", "hd95")
#: the protocols: clicks only (DESIGN.md section 7), or the CVPR 2025 challenge's box then clicks
FIRST_PROMPTS = ("click", "box")
NOC_THRESHOLDS = (0.85, 0.90)


def _noc_key(threshold: float) -> str:
    return f"{round(threshold * 100):d}"


def _predicted_classes(probs: AttributeProbs | None) -> dict[str, str] | None:
    """Arg-max class per attribute; a plain class string is taken as is."""
    if probs is None:
        return None
    out = {}
    for name, p in probs.items():
        if isinstance(p, str):
            out[name] = p
        elif isinstance(p, Mapping) and p:
            out[name] = max(p.items(), key=lambda kv: float(kv[1]))[0]
        else:
            raise ValueError(f"attribute '{name}': expected {{class: probability}} or a class string, got {p!r}")
    return out


@dataclass
class CaseResult:
    """One case under the interactive protocol. Lists have one entry per interaction: per click
    (1..n_clicks), or with ``first_prompt == "box"`` the box and then each click."""

    case_id: str | None
    spacing_zyx: list[float]
    n_clicks: int
    n_clicks_used: int
    clicks: list[dict]  # {"point": [z, y, x], "positive": bool}, the clicks actually given
    dice: list[float]
    nsd: list[float]
    hd95: list[float]  # mm; nan where exactly one of prediction / ground truth is empty
    pred_empty: list[bool]
    auc: dict[str, float]  # metric -> normalised area under its click curve
    noc: dict[str, dict]  # "85"/"90" -> {"clicks": int, "failed": bool}
    nsd_tolerance_mm: float = 2.0
    attributes_pred: dict[str, str] | None = None  # at the last click
    attributes_prob: dict[str, dict] | None = None  # at the last click
    attributes_pred_per_click: list[dict | None] = field(default_factory=list)
    attribute_truth: dict[str, str] | None = None
    lesion_type: str | None = None
    first_prompt: str = "click"
    box: list | None = None  # [[z, y, x] lower, [z, y, x] higher corner] with first_prompt "box"
    final_mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (the final mask is left out; NaN becomes null)."""
        d = asdict(self)
        d.pop("final_mask")
        return json_safe(d)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The case as a JSON string; also written atomically to ``path`` when given."""
        d = self.to_dict()
        if path is not None:
            write_json_atomic(path, d)
        return json.dumps(d, indent=2)

    @classmethod
    def from_dict(cls, d: Mapping) -> "CaseResult":
        d = dict(d)
        nan = float("nan")
        for key in METRICS:
            d[key] = [nan if v is None else float(v) for v in d[key]]
        d["auc"] = {k: nan if v is None else float(v) for k, v in d["auc"].items()}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "final_mask"})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "CaseResult":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def run_interactive_protocol(predict_fn: PredictFn, gt: np.ndarray, spacing_zyx: Sequence[float], n_clicks: int = 5,
                             attribute_truth: Mapping[str, str] | None = None, case_id: str | None = None,
                             nsd_tolerance_mm: float = 2.0, lesion_type: str | None = None,
                             keep_final_mask: bool = True, first_prompt: str = "click") -> CaseResult:
    """Runs the deterministic click protocol on one lesion.

    ``gt``: 3D bool z,y,x mask of the lesion to segment (one connected lesion; with several
    components the first click goes to the thickest and later clicks chase the others);
    ``spacing_zyx`` in mm (z,y,x order).
    ``attribute_truth``: the case's attribute classes (missing = unknown); a ``lesion_type`` entry in
    it is used as the case's lesion type unless ``lesion_type`` is given. ``first_prompt``: "click",
    or "box" for the CVPR 2025 protocol (see the module docstring).
    """
    gt = np.asarray(gt).astype(bool, copy=False)
    if not 1 <= int(n_clicks):
        raise ValueError(f"n_clicks must be >= 1, got {n_clicks}")
    if first_prompt not in FIRST_PROMPTS:
        raise ValueError(f"first_prompt must be one of {FIRST_PROMPTS}, got {first_prompt!r}")
    name = case_id or "case"
    if not gt.any():
        raise ValueError(f"{name}: the ground-truth mask is empty; the interactive protocol needs a lesion")
    box = None
    if first_prompt == "box":
        tight = bounding_box(gt)
        box = (tuple(int(v) for v in tight.lo), tuple(int(v) for v in tight.hi))
    call = (lambda c: predict_fn(c)) if box is None else (lambda c: predict_fn(c, box=box))
    clicks: list[Click] = []
    per_click: dict[str, list] = {m: [] for m in METRICS}
    pred_empty: list[bool] = []
    attrs_per_click: list[dict | None] = []
    last_probs = None
    pred = None
    next_click = (first_click_deterministic(gt, spacing_zyx), True)
    for k in range(int(n_clicks) + (box is not None)):
        if next_click is None:  # perfect: no error left to click, carry the last values forward
            for m in METRICS:
                per_click[m].append(per_click[m][-1])
            pred_empty.append(pred_empty[-1])
            attrs_per_click.append(attrs_per_click[-1])
            continue
        if box is None or k > 0:   # with a box, the first interaction is the box alone
            clicks.append(next_click)
        out = call(list(clicks))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(f"{name}: predict_fn must return (pred_mask, attribute_probs or None), got {type(out).__name__}")
        pred, last_probs = np.asarray(out[0]), out[1]
        if pred.shape != gt.shape:
            raise ValueError(f"{name}: predict_fn returned a mask of shape {pred.shape}, the ground truth is {gt.shape}")
        pred = pred.astype(bool, copy=False)
        m = segmentation_metrics(pred, gt, spacing_zyx, nsd_tolerance_mm)
        for metric in METRICS:
            per_click[metric].append(float(m[metric]))
        pred_empty.append(bool(m["pred_empty"]))
        attrs_per_click.append(_predicted_classes(last_probs))
        next_click = next_click_deterministic(pred, gt, spacing_zyx)

    truth = dict(attribute_truth) if attribute_truth else None
    if lesion_type is None and truth:
        lesion_type = truth.get("lesion_type")
    nocs = {}
    for t in NOC_THRESHOLDS:
        r = noc_at(per_click["dice"], t, len(per_click["dice"]))
        nocs[_noc_key(t)] = {"clicks": r.clicks, "failed": r.failed}
    probs = None
    if last_probs is not None:
        probs = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in last_probs.items()}
    return CaseResult(
        case_id=case_id, spacing_zyx=[float(s) for s in spacing_zyx], n_clicks=int(n_clicks),
        n_clicks_used=len(clicks),
        clicks=[{"point": [int(c) for c in p], "positive": bool(pos)} for p, pos in clicks],
        dice=per_click["dice"], nsd=per_click["nsd"], hd95=per_click["hd95"], pred_empty=pred_empty,
        auc={k: auc_over_clicks(v) for k, v in per_click.items()}, noc=nocs, nsd_tolerance_mm=float(nsd_tolerance_mm),
        attributes_pred=attrs_per_click[-1], attributes_prob=probs, attributes_pred_per_click=attrs_per_click,
        attribute_truth=truth, lesion_type=lesion_type, first_prompt=first_prompt,
        box=None if box is None else [list(box[0]), list(box[1])], final_mask=pred if keep_final_mask else None,
    )


def score_attribute_pairs(pairs: Mapping[str, Sequence[tuple[str, str]]], schema: Schema) -> dict:
    """Accuracy, balanced accuracy, majority-class rate and confusion matrix per attribute of the schema.

    ``pairs[attribute]``: the scored cases' ``(truth, prediction)`` classes, both in the schema's
    spelling (:func:`~nnunet_isrg.attributes.normalise_class`); an attribute without pairs gets
    ``n`` 0 and ``None`` scores. Balanced accuracy is scikit-learn's ``balanced_accuracy_score``:
    the mean recall over the true classes present, so always answering the majority class scores
    1 / (number of true classes present), its ``majority_balanced_accuracy``. The mean accuracy
    (and mean balanced accuracy) averages the attributes that have pairs.
    Returns ``{"per_attribute": {attribute: {classes, n, accuracy, balanced_accuracy, majority_rate,
    majority_balanced_accuracy, confusion_matrix}}, "mean_accuracy", "mean_balanced_accuracy"}``,
    the matrix with truth rows and prediction columns in schema class order.
    """
    per_attribute: "OrderedDict[str, dict]" = OrderedDict()
    for name, classes in schema.items():
        truths = [t for t, _ in pairs.get(name, ())]
        preds = [p for _, p in pairs.get(name, ())]
        entry = {"classes": list(classes), "n": len(truths), "accuracy": None, "balanced_accuracy": None,
                 "majority_rate": None, "majority_balanced_accuracy": None,
                 "confusion_matrix": np.zeros((len(classes), len(classes)), dtype=int).tolist()}
        if truths:
            entry["accuracy"] = float(np.mean([t == p for t, p in zip(truths, preds)]))
            with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected, not an error
                warnings.simplefilter("ignore", UserWarning)
                entry["balanced_accuracy"] = float(balanced_accuracy_score(truths, preds))
            entry["majority_rate"] = max(truths.count(c) for c in classes) / len(truths)
            entry["majority_balanced_accuracy"] = 1.0 / len(set(truths))
            entry["confusion_matrix"] = confusion_matrix(truths, preds, labels=list(classes)).tolist()
        per_attribute[name] = entry
    accs = [e["accuracy"] for e in per_attribute.values() if e["accuracy"] is not None]
    balanced = [e["balanced_accuracy"] for e in per_attribute.values() if e["balanced_accuracy"] is not None]
    return {"per_attribute": per_attribute, "mean_accuracy": float(np.mean(accs)) if accs else None,
            "mean_balanced_accuracy": float(np.mean(balanced)) if balanced else None}


def _attribute_summary(results: Sequence[CaseResult], schema: Schema) -> dict:
    n_clicks = max((len(r.attributes_pred_per_click) for r in results), default=0)
    pairs: dict[str, list[tuple[str, str]]] = {}
    extra: dict[str, dict] = {}
    for name in schema:
        pairs[name], n_no_pred = [], 0
        per_click_hits = [[] for _ in range(n_clicks)]
        for r in results:
            truth = (r.attribute_truth or {}).get(name)
            if truth is None:  # unknown truth: not scored
                continue
            truth = normalise_class(schema, name, truth, r.case_id or "?", "attribute truth")
            pred = (r.attributes_pred or {}).get(name)
            if pred is None:
                n_no_pred += 1
                continue
            pairs[name].append((truth, normalise_class(schema, name, pred, r.case_id or "?", "predicted attributes")))
            for k, pk in enumerate(r.attributes_pred_per_click):
                if pk and pk.get(name) is not None:
                    per_click_hits[k].append(normalise_class(schema, name, pk[name], r.case_id or "?",
                                                             "predicted attributes") == truth)
        extra[name] = {"n_without_prediction": n_no_pred, "accuracy_per_click":
                       [float(np.mean(h)) if h else None for h in per_click_hits] if pairs[name] else None}
    scores = score_attribute_pairs(pairs, schema)
    for name, entry in scores["per_attribute"].items():
        entry.update(extra[name])
    return {**scores, "confusion_matrix_axes": "rows: truth, columns: prediction, in schema class order"}


def _summarise(results: Sequence[CaseResult], schema: Schema | None) -> dict:
    n_clicks = max(r.n_clicks for r in results)
    n = max(len(r.dice) for r in results)   # interactions: the clicks, and the box before them (CVPR 2025)
    per_click = {}
    for m in METRICS:
        per_click[m] = [summarise_values([getattr(r, m)[k] for r in results if k < len(getattr(r, m))])
                        for k in range(n)]
    out = {
        "n_cases": len(results),
        "n_clicks": n_clicks,
        "first_prompt": results[0].first_prompt,
        "per_click": per_click,
        "mean_per_click": {m: [s["mean"] for s in per_click[m]] for m in METRICS},
        "auc": {m: summarise_values([r.auc[m] for r in results]) for m in METRICS},
        "noc": {},
        "n_pred_empty_per_click": [sum(1 for r in results if k < len(r.pred_empty) and r.pred_empty[k])
                                   for k in range(n)],
    }
    for t in NOC_THRESHOLDS:
        key = _noc_key(t)
        vals = [r.noc[key]["clicks"] for r in results]
        out["noc"][key] = {"threshold": t, "mean": float(np.mean(vals)), "std": float(np.std(vals)),
                           "n_failed": int(sum(r.noc[key]["failed"] for r in results)), "n": len(vals)}
    if schema is not None:
        out["attributes"] = _attribute_summary(results, schema)
    return out


def summarise_cases(results: Sequence[CaseResult], schema: Schema | None = None,
                    lesion_types: Mapping[str, str] | None = None) -> dict:
    """Aggregates :class:`CaseResult` s into a JSON-serialisable summary.

    Metrics: mean/std (ddof=0) per click over the cases with a finite value (``n_nan`` counts the
    others, e.g. HD95 with an empty prediction), mean AUC per metric, NoC@85/90 (mean with failures
    counted as ``n_clicks``, and ``n_failed``). Attributes (when ``schema`` is given), at the last
    click: accuracy, majority-class rate, per-click accuracy and the confusion matrix (rows truth,
    columns prediction, schema class order) per attribute, cases with unknown truth skipped; the
    mean accuracy averages the attributes that have scored cases. ``lesion_types`` (case id ->
    type; default each case's own ``lesion_type``) adds a ``by_lesion_type`` block.
    """
    results = list(results)
    if not results:
        raise ValueError("summarise_cases: no case results to summarise")
    out = _summarise(results, schema)
    types = []
    for r in results:
        t = (lesion_types or {}).get(r.case_id) if r.case_id is not None else None
        types.append(t if t is not None else r.lesion_type)
    if any(t is not None for t in types):
        groups: dict[str, list[CaseResult]] = OrderedDict()
        for t, r in zip(types, results):
            groups.setdefault(t if t is not None else "unknown", []).append(r)
        out["by_lesion_type"] = {t: _summarise(rs, schema) for t, rs in sorted(groups.items())}
    return json_safe(out)


def write_case_results(results: Sequence[CaseResult], folder: str | os.PathLike) -> list[Path]:
    """Writes one ``<case_id>.json`` per case into ``folder`` (atomically); returns the paths."""
    folder = Path(folder)
    paths = []
    for i, r in enumerate(results):
        path = folder / f"{r.case_id or f'case_{i:04d}'}.json"
        r.to_json(path)
        paths.append(path)
    return paths


__all__ = ["CaseResult", "run_interactive_protocol", "summarise_cases", "score_attribute_pairs", "write_case_results",
           "METRICS", "NOC_THRESHOLDS"]
