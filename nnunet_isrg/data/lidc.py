"""The LIDC-IDRI lung nodules as an ISRG dataset: the radiologists' ratings as a report schema.

``nodules.csv`` (one row per nodule; ``case`` = the nodule's folder name ``LIDC-IDRI-PPPP_R_N``)
holds each characteristic's rating merged by majority vote over up to four radiologists
(``<Name>_value`` columns, LIDC scales). Each rating is binned into report classes the way the
published LIDC malignancy work does: a five-point rating is split into its low end (1-2) and its
high end (4-5), and the middle rating (3) is *indeterminate*, hence unknown: masked out of the
attribute loss and out of the accuracy, never guessed. That is the rule of Shen et al., "Multi-scale
convolutional neural networks for lung nodule classification" (IPMI 2015) and of Hussein et al.,
"Risk stratification of lung nodules using 3D CNN-based multi-task learning" (IPMI 2017) for
malignancy, applied here to every five-point characteristic. Two scales have no indeterminate
middle: calcification (1-5 a calcification pattern, 6 absent) becomes present / absent, and texture
keeps its three radiological classes (1-2 non-solid / ground glass, 3 part solid, 4-5 solid).
Internal structure is left out: 798 of the 799 nodules are rated "soft tissue".

Nodules of one patient share a scan, so the cross-validation splits group by patient
(``LIDC-IDRI-PPPP``): no patient has nodules in two folds.
"""
from __future__ import annotations

import csv
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from nnunet_isrg.attributes import AttributeLabelError

#: attribute -> CSV column with the merged rating
RATING_COLUMNS: "OrderedDict[str, str]" = OrderedDict(
    sphericity="Sphericity_value", margin="Margin_value", lobulation="Lobulation_value",
    spiculation="Spiculation_value", texture="Texture_value", calcification="Calcification_value",
    subtlety="Subtlety_value", malignancy="Malignancy_value")

#: attribute -> {rating: class}; a rating missing from the map (the middle, 3) is unknown
RATING_BINS: "OrderedDict[str, dict[int, str]]" = OrderedDict(
    sphericity={1: "Linear or ovoid", 2: "Linear or ovoid", 4: "Round", 5: "Round"},
    margin={1: "Poorly defined margin", 2: "Poorly defined margin", 4: "Sharp margin", 5: "Sharp margin"},
    lobulation={1: "No lobulation", 2: "No lobulation", 4: "Lobulated", 5: "Lobulated"},
    spiculation={1: "No spiculation", 2: "No spiculation", 4: "Spiculated", 5: "Spiculated"},
    texture={1: "Non-solid", 2: "Non-solid", 3: "Part solid", 4: "Solid", 5: "Solid"},
    calcification={1: "Calcified", 2: "Calcified", 3: "Calcified", 4: "Calcified", 5: "Calcified",
                   6: "No calcification"},
    subtlety={1: "Subtle", 2: "Subtle", 4: "Obvious", 5: "Obvious"},
    malignancy={1: "Benign", 2: "Benign", 4: "Malignant", 5: "Malignant"},
)

#: the report schema of a nodule model: each attribute's classes in a fixed order
LIDC_SCHEMA: "OrderedDict[str, list[str]]" = OrderedDict(
    (name, list(OrderedDict.fromkeys(bins.values()))) for name, bins in RATING_BINS.items())

_PATIENT = re.compile(r"^(LIDC-IDRI-\d{4})")


def patient_of(case: str) -> str:
    """``LIDC-IDRI-0003_R_2`` -> ``LIDC-IDRI-0003``; other names are refused with the name."""
    match = _PATIENT.match(case)
    if not match:
        raise ValueError(f"case '{case}' does not start with an LIDC patient id LIDC-IDRI-PPPP")
    return match.group(1)


def bin_rating(attribute: str, rating: str | float | int | None) -> str | None:
    """The report class of one merged rating, or None when it is indeterminate or missing."""
    if attribute not in RATING_BINS:
        raise KeyError(f"unknown LIDC attribute '{attribute}'; known: {list(RATING_BINS)}")
    if rating is None or str(rating).strip() == "":
        return None
    value = float(rating)
    if not value.is_integer():
        raise ValueError(f"{attribute}: rating {rating!r} is not a whole number of the LIDC scale")
    return RATING_BINS[attribute].get(int(value))


def read_nodule_ratings(csv_path: str | os.PathLike,
                        cases: Iterable[str] | None = None) -> "OrderedDict[str, dict[str, str]]":
    """``{case: {attribute: class}}`` from ``nodules.csv``; indeterminate ratings are left out.

    ``cases`` restricts the table to these nodules (every one of them must have a row).
    """
    path = Path(csv_path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing_columns = [c for c in ("case", *RATING_COLUMNS.values()) if rows and c not in rows[0]]
    if not rows or missing_columns:
        raise AttributeLabelError(f"{path}: expected the LIDC columns {missing_columns or ['case']} "
                                  f"(one row per nodule)")
    wanted = None if cases is None else set(cases)
    table: "OrderedDict[str, dict[str, str]]" = OrderedDict()
    for line, row in enumerate(rows, start=2):
        case = row["case"].strip()
        if wanted is not None and case not in wanted:
            continue
        entry = {}
        for attribute, column in RATING_COLUMNS.items():
            try:
                label = bin_rating(attribute, row[column])
            except ValueError as e:
                raise AttributeLabelError(f"{path}, line {line} (case {case}): {e}") from None
            if label is not None:
                entry[attribute] = label
        table[case] = entry
    if wanted is not None and wanted - set(table):
        raise AttributeLabelError(f"{path}: no rating row for case(s) {sorted(wanted - set(table))[:5]}")
    return table


def patient_grouped_splits(cases: Sequence[str], n_folds: int = 5) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` content: ``n_folds`` folds whose validation sets never share
    a patient with their training sets (scikit-learn's GroupKFold, so folds are balanced in size)."""
    from sklearn.model_selection import GroupKFold

    cases = sorted(cases)
    groups = [patient_of(c) for c in cases]
    if len(set(groups)) < n_folds:
        raise ValueError(f"{len(set(groups))} patient(s) cannot fill {n_folds} patient-grouped folds")
    splits = []
    for train, val in GroupKFold(n_splits=n_folds).split(np.zeros(len(cases)), groups=groups):
        splits.append({"train": [cases[i] for i in train], "val": [cases[i] for i in val]})
    return splits


def lidc_import_options(source_dir: str | os.PathLike,
                        cases: Sequence[str] | None = None) -> dict[str, object]:
    """Keyword arguments for :func:`nnunet_isrg.data.import_dataset.import_image_mask_pairs` that
    import the nodules under ``source_dir`` (``<case>/image.nii.gz`` + ``mask.nii.gz`` and
    ``nodules.csv``) with the LIDC schema, binned ratings and patient-grouped splits."""
    source_dir = Path(source_dir)
    csv_path = source_dir / "nodules.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: the LIDC ratings table is missing (one row per nodule)")
    names = sorted(p.parent.name for p in source_dir.glob("*/image.nii.gz"))
    if cases is not None:
        names = [n for n in names if n in set(cases)]
    return {"image_glob": "*/image.nii.gz", "mask_name": "mask.nii.gz", "schema": LIDC_SCHEMA,
            "attribute_table": read_nodule_ratings(csv_path, names), "splits": patient_grouped_splits(names),
            "label_name": "nodule", "cases": cases}


def rating_counts(table: Mapping[str, Mapping[str, str]]) -> "OrderedDict[str, dict[str, int]]":
    """Per attribute, how many nodules fall into each class and how many are unknown."""
    out: "OrderedDict[str, dict[str, int]]" = OrderedDict()
    for attribute, classes in LIDC_SCHEMA.items():
        counts = {c: 0 for c in classes}
        counts["unknown"] = 0
        for entry in table.values():
            counts[entry.get(attribute, "unknown")] += 1
        out[attribute] = counts
    return out
