"""The LIDC-IDRI nodules as a dataset: binned ratings, unknown middle ratings, patient-grouped folds."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from nnunet_isrg.attributes import ATTRIBUTES_FILENAME, AttributeLabelError, schema_from_dataset_json
from nnunet_isrg.cli import main as isrg_main
from nnunet_isrg.data.lidc import (LIDC_SCHEMA, bin_rating, patient_grouped_splits, patient_of, rating_counts,
                                   read_nodule_ratings)
from nnunet_isrg.data.verify import verify_raw_dataset

REALDATA = Path(os.environ.get("ISRG_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
LIDC = REALDATA / "lidc-nodules"
needs_lidc = pytest.mark.skipif(not (LIDC / "nodules.csv").is_file(), reason=f"LIDC nodules not found at {LIDC}")

# nine nodules of six patients (0003, 0005 and 0008 have several)
CASES = ["LIDC-IDRI-0001_R_1", "LIDC-IDRI-0003_R_2", "LIDC-IDRI-0003_R_3", "LIDC-IDRI-0005_R_1",
         "LIDC-IDRI-0005_R_2", "LIDC-IDRI-0007_R_1", "LIDC-IDRI-0008_R_1", "LIDC-IDRI-0008_R_2", "LIDC-IDRI-0010_R_3"]


@pytest.mark.parametrize("attribute,rating,expected", [
    ("malignancy", "1", "Benign"), ("malignancy", "2", "Benign"), ("malignancy", "3", None),
    ("malignancy", "4", "Malignant"), ("malignancy", "5.0", "Malignant"),
    ("calcification", "6", "No calcification"), ("calcification", "3", "Calcified"),
    ("texture", "1", "Non-solid"), ("texture", "3", "Part solid"), ("texture", "5", "Solid"),
    ("sphericity", "3", None), ("sphericity", "5", "Round"), ("margin", "2", "Poorly defined margin"),
    ("spiculation", "", None)])
def test_ratings_are_binned_with_the_middle_unknown(attribute, rating, expected):
    assert bin_rating(attribute, rating) == expected


def test_bad_ratings_and_names_are_refused():
    with pytest.raises(ValueError, match="not a whole number"):
        bin_rating("margin", "3.5")
    with pytest.raises(KeyError, match="unknown LIDC attribute 'size'"):
        bin_rating("size", "3")
    with pytest.raises(ValueError, match="STS_001"):
        patient_of("STS_001")


def test_the_schema_holds_the_eight_characteristics_with_malignancy():
    assert list(LIDC_SCHEMA) == ["sphericity", "margin", "lobulation", "spiculation", "texture", "calcification",
                                 "subtlety", "malignancy"]
    assert LIDC_SCHEMA["malignancy"] == ["Benign", "Malignant"]
    assert LIDC_SCHEMA["texture"] == ["Non-solid", "Part solid", "Solid"]


@needs_lidc
def test_hand_binned_rows_of_nodules_csv():
    table = read_nodule_ratings(LIDC / "nodules.csv", CASES[:2])
    # row LIDC-IDRI-0001_R_1: malignancy 5, calcification 6, lobulation 3, margin 4, sphericity 3,
    # spiculation 5, subtlety 5, texture 5
    assert table["LIDC-IDRI-0001_R_1"] == {
        "margin": "Sharp margin", "spiculation": "Spiculated", "texture": "Solid",
        "calcification": "No calcification", "subtlety": "Obvious", "malignancy": "Malignant"}
    # row LIDC-IDRI-0003_R_2: malignancy 5, calcification 6, lobulation 2, margin 3, sphericity 4,
    # spiculation 2, subtlety 5, texture 4
    assert table["LIDC-IDRI-0003_R_2"] == {
        "sphericity": "Round", "lobulation": "No lobulation", "spiculation": "No spiculation", "texture": "Solid",
        "calcification": "No calcification", "subtlety": "Obvious", "malignancy": "Malignant"}


@needs_lidc
def test_malignancy_counts_match_the_csv_ratings():
    table = read_nodule_ratings(LIDC / "nodules.csv")
    with open(LIDC / "nodules.csv", newline="") as f:
        ratings = [int(r["Malignancy_value"]) for r in csv.DictReader(f)]
    counts = rating_counts(table)["malignancy"]
    assert counts == {"Benign": sum(r <= 2 for r in ratings), "Malignant": sum(r >= 4 for r in ratings),
                      "unknown": sum(r == 3 for r in ratings)}
    assert sum(counts.values()) == len(ratings) == 799


def test_a_rating_table_without_the_lidc_columns_is_refused(tmp_path):
    (tmp_path / "nodules.csv").write_text("case,size\nLIDC-IDRI-0001_R_1,3\n")
    with pytest.raises(AttributeLabelError, match="Sphericity_value"):
        read_nodule_ratings(tmp_path / "nodules.csv")


def test_splits_never_put_one_patient_in_two_folds():
    cases = [f"LIDC-IDRI-{p:04d}_R_{n}" for p in range(1, 13) for n in range(1, 1 + p % 3 + 1)]
    splits = patient_grouped_splits(cases, n_folds=5)
    assert len(splits) == 5
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(cases) and sum(len(v) for v in vals) == len(cases)
    for s in splits:
        assert {patient_of(c) for c in s["train"]}.isdisjoint({patient_of(c) for c in s["val"]})
    with pytest.raises(ValueError, match="2 patient"):
        patient_grouped_splits(cases[:5], n_folds=5)


@needs_lidc
def test_isrg_import_lidc_writes_schema_ratings_and_grouped_splits(tmp_path, capsys):
    assert isrg_main(["import", str(LIDC), "-d", "612", "-n", "Nodules", "--lidc", "-o", str(tmp_path),
                      "--cases", *CASES]) == 0
    dataset = tmp_path / "Dataset612_Nodules"
    dataset_json = json.loads((dataset / "dataset.json").read_text())
    assert schema_from_dataset_json(dataset_json) == LIDC_SCHEMA
    table = json.loads((dataset / ATTRIBUTES_FILENAME).read_text())
    assert sorted(table) == CASES
    assert "sphericity" not in table["LIDC-IDRI-0001_R_1"]  # rating 3: unknown, not a guess
    assert table["LIDC-IDRI-0001_R_1"]["malignancy"] == "Malignant"
    splits = json.loads((dataset / "splits_final.json").read_text())
    assert len(splits) == 5
    for fold in splits:
        assert {patient_of(c) for c in fold["train"]}.isdisjoint({patient_of(c) for c in fold["val"]})
    assert sorted(c for fold in splits for c in fold["val"]) == CASES
    report = verify_raw_dataset(dataset, check_pixels=True)
    assert report.n_cases == len(CASES) and report.n_labelled == len(CASES)
    for attribute, counts in rating_counts(table).items():
        assert dict(report.class_counts[attribute]) == counts
