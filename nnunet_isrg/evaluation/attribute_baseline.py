"""Non-deep attribute baseline: evidence features inside the ground-truth mask + one classifier per attribute.

Features are the measurements of :func:`nnunet_isrg.report.evidence.lesion_evidence` (HU contrast
with a surrounding shell, internal spread, boundary gradient / edge width, sphericity and other
shape descriptors, contact with other tissue). Each attribute gets its own scikit-learn pipeline
(median imputation + random forest); :func:`cross_validated_accuracy` scores it with stratified
k-fold cross-validation next to the majority-class rate, which is what a classifier that ignores
the image would reach. This is the phantom's honesty check and the reference the deep model is
compared with on held-out cases (:func:`fit_attribute_baseline` / :func:`predict`).
"""
from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from tqdm import tqdm

from ..attributes import ATTRIBUTES_FILENAME, balanced_probabilities, read_attribute_table, schema_from_dataset_json
from ..report.evidence import lesion_evidence


def _case_files(dataset_dir: Path, split: str, file_ending: str) -> dict[str, tuple[Path, Path]]:
    images, labels = dataset_dir / f"images{split}", dataset_dir / f"labels{split}"
    if not labels.is_dir():
        raise FileNotFoundError(f"{labels}: no label folder (split '{split}')")
    out = {}
    for lab in sorted(labels.glob(f"*{file_ending}")):
        case = lab.name[: -len(file_ending)]
        img = images / f"{case}_0000{file_ending}"
        if not img.exists():
            raise FileNotFoundError(f"{img}: image of case '{case}' is missing")
        out[case] = (img, lab)
    return out


def case_features(image_path: str | os.PathLike, label_path: str | os.PathLike,
                  lesion_labels: Sequence[int] = (1,)) -> dict[str, float]:
    """Evidence of the lesion (union of ``lesion_labels``) of one case, read from NIfTI files."""
    img = sitk.ReadImage(str(image_path))
    lab = sitk.ReadImage(str(label_path))
    if img.GetSize() != lab.GetSize() or not np.allclose(img.GetSpacing(), lab.GetSpacing(), atol=1e-4):
        raise ValueError(f"{label_path}: geometry differs from {image_path} "
                         f"(size {lab.GetSize()} vs {img.GetSize()}, spacing {lab.GetSpacing()} vs {img.GetSpacing()})")
    mask = np.isin(sitk.GetArrayFromImage(lab), list(lesion_labels))
    if not mask.any():
        raise ValueError(f"{label_path}: no lesion voxels (labels {list(lesion_labels)})")
    return lesion_evidence(sitk.GetArrayFromImage(img).astype(np.float32), mask, img.GetSpacing()[::-1])


def extract_features(dataset_dir: str | os.PathLike, split: str = "Tr", num_workers: int = 1,
                     progress: bool = True) -> tuple[list[str], np.ndarray, list[str], dict[str, list]]:
    """Features of every case of a raw dataset split ("Tr" or "Ts").

    Returns ``(case_ids, X, feature_names, labels)`` where ``X`` is (n_cases, n_features) float
    and ``labels[attribute]`` lists each case's class string (``None`` when unknown), taken from
    ``attributesTr.json`` (split "Tr") or ``attributesTs.json`` (split "Ts").
    """
    dataset_dir = Path(dataset_dir)
    with open(dataset_dir / "dataset.json") as f:
        dataset_json = json.load(f)
    schema = schema_from_dataset_json(dataset_json)
    lesion_labels = (dataset_json.get("isrg") or {}).get("lesion_labels", [1])
    files = _case_files(dataset_dir, split, dataset_json.get("file_ending", ".nii.gz"))
    table_path = dataset_dir / (ATTRIBUTES_FILENAME if split == "Tr" else f"attributes{split}.json")
    table = read_attribute_table(table_path, schema, files) if table_path.exists() else {}
    case_ids = list(files)
    jobs = [(str(files[c][0]), str(files[c][1]), tuple(lesion_labels)) for c in case_ids]
    bar = dict(total=len(jobs), desc=f"evidence {split}", unit="case", disable=not progress)
    if num_workers > 1:
        with get_context("spawn").Pool(num_workers) as pool:
            rows = list(tqdm(pool.imap(_features_job, jobs), **bar))
    else:
        rows = [_features_job(j) for j in tqdm(jobs, **bar)]
    feature_names = sorted(set().union(*(r.keys() for r in rows))) if rows else []
    X = np.array([[r.get(k, np.nan) for k in feature_names] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    labels = {a: [table.get(c, {}).get(a) for c in case_ids] for a in schema}
    labels["lesion_type"] = [table.get(c, {}).get("lesion_type") for c in case_ids]
    return case_ids, X, feature_names, labels


def _features_job(job) -> dict[str, float]:
    return case_features(*job)


def make_classifier(random_state: int = 0, n_estimators: int = 300):
    """Median imputation + random forest (robust with ~100 cases, no scaling needed)."""
    return make_pipeline(SimpleImputer(strategy="median"),
                         RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=1, random_state=random_state,
                                                n_jobs=1))


def _known(y: Sequence) -> np.ndarray:
    return np.array([v is not None for v in y], bool)


def cross_validated_accuracy(X: np.ndarray, labels: Mapping[str, Sequence], attributes: Sequence[str] | None = None,
                             n_splits: int = 5, random_state: int = 0, n_estimators: int = 300) -> dict[str, dict]:
    """Stratified k-fold accuracy per attribute, with the majority-class rate of the same cases.

    Cases whose label is unknown are left out of that attribute. Classes with fewer members than
    folds are kept (scikit-learn then warns and spreads them as it can); ``n_splits`` is lowered to
    the largest class count when needed. Returns ``{attribute: {accuracy, majority_rate,
    majority_class, n, n_splits, class_counts, balanced_accuracy}}``.
    """
    attributes = [a for a in (attributes or labels) if a != "lesion_type"]
    out: dict[str, dict] = {}
    for attr in attributes:
        y_all = labels[attr]
        keep = _known(y_all)
        y = np.array([v for v in y_all if v is not None], dtype=object)
        counts = Counter(y.tolist())
        if len(counts) < 2:
            out[attr] = {"accuracy": float("nan"), "majority_rate": 1.0 if y.size else float("nan"),
                         "majority_class": next(iter(counts), None), "n": int(y.size), "n_splits": 0,
                         "class_counts": dict(counts), "balanced_accuracy": float("nan")}
            continue
        k = int(min(n_splits, max(counts.values()), y.size))
        cv = StratifiedKFold(n_splits=max(k, 2), shuffle=True, random_state=random_state)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            pred = cross_val_predict(make_classifier(random_state, n_estimators), X[keep], y.astype(str), cv=cv)
        majority_class, majority_n = counts.most_common(1)[0]
        out[attr] = {
            "accuracy": float(np.mean(pred == y.astype(str))),
            "balanced_accuracy": float(balanced_accuracy_score(y.astype(str), pred)),
            "majority_rate": majority_n / y.size,
            "majority_class": majority_class,
            "n": int(y.size),
            "n_splits": int(max(k, 2)),
            "class_counts": dict(sorted(counts.items())),
        }
    return out


@dataclass
class AttributeBaseline:
    """Fitted per-attribute pipelines and the feature order they expect."""
    feature_names: list[str]
    models: dict[str, object] = field(default_factory=dict)
    constant: dict[str, str] = field(default_factory=dict)  # attributes seen with a single class
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # training cases per class


def fit_attribute_baseline(X: np.ndarray, labels: Mapping[str, Sequence], feature_names: Sequence[str],
                           random_state: int = 0, n_estimators: int = 300) -> AttributeBaseline:
    """Fits one classifier per attribute on all cases with a known label."""
    model = AttributeBaseline(list(feature_names))
    for attr, y_all in labels.items():
        if attr == "lesion_type":
            continue
        keep = _known(y_all)
        y = np.array([v for v in y_all if v is not None], dtype=str)
        if y.size == 0:
            continue
        if len(set(y.tolist())) == 1:
            model.constant[attr] = str(y[0])
            continue
        model.models[attr] = make_classifier(random_state, n_estimators).fit(X[keep], y)
        model.class_counts[attr] = {str(c): int(n) for c, n in zip(*np.unique(y, return_counts=True))}
    return model


def _balanced_class(proba: np.ndarray, classes: Sequence, counts: Mapping[str, int] | None) -> str:
    probs = balanced_probabilities({str(c): float(p) for c, p in zip(classes, proba)}, counts)
    return max(probs, key=probs.get)


def predict(model: AttributeBaseline, X: np.ndarray, feature_names: Sequence[str] | None = None,
            balanced: bool = False) -> dict[str, list[str]]:
    """Predicted class strings per attribute; ``X`` columns are reordered by ``feature_names`` if given.
    ``balanced``: the class of the highest :func:`~nnunet_isrg.attributes.balanced_probabilities` of
    the forest's probabilities (the decision rule of the ISRG model's report), else the forest's own."""
    if feature_names is not None and list(feature_names) != model.feature_names:
        col = {n: i for i, n in enumerate(feature_names)}
        missing = [n for n in model.feature_names if n not in col]
        if missing:
            raise ValueError(f"features missing for the attribute baseline: {missing}")
        X = X[:, [col[n] for n in model.feature_names]]
    out = {attr: ([_balanced_class(p, m.classes_, model.class_counts.get(attr)) for p in m.predict_proba(X)]
                  if balanced else [str(v) for v in m.predict(X)]) for attr, m in model.models.items()}
    out.update({attr: [v] * len(X) for attr, v in model.constant.items()})
    return out
