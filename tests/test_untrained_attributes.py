"""A report never presents an untrained attribute head's guess as a finding: debug models trained by
the real ``nnUNetv2_train`` on a dataset without attribute labels, and with labels for two
attributes only."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import nnunet_cmd, run_cmd
from nnunet_isrg.attributes import (ATTRIBUTE_CLASS_COUNTS_FILENAME, ATTRIBUTE_SUPPORT_FILENAME, ATTRIBUTES_FILENAME,
                                    DEFAULT_SCHEMA, LOW_SUPPORT_CASES)
from nnunet_isrg.inference.model_loading import load_trained_model
from nnunet_isrg.inference.session import ISRGSession
from nnunet_isrg.report.dicom_export import export_dicom
from nnunet_isrg.report.render_text import render_markdown, render_text
from nnunet_isrg.report.structured import LesionReport, build_lesion_report
from stand_ins import ClickSpheresStandIn, with_network

LABELLED = ("heterogeneity", "invasion")  # attributes without a measured descriptor


def _train_debug_copy(phantom_raw: Path, nnunet_dirs, dataset_id: int, name: str, keep: tuple[str, ...] | None) -> Path:
    """The test phantom under another id, its attribute table cut to ``keep`` (None: no table),
    planned, preprocessed and trained by nnU-Net's own commands; returns the model folder."""
    dataset = f"Dataset{dataset_id}_{name}"
    raw = nnunet_dirs["nnUNet_raw"] / dataset
    shutil.copytree(phantom_raw, raw, ignore=shutil.ignore_patterns(ATTRIBUTES_FILENAME))
    if keep is not None:
        table = json.loads((phantom_raw / ATTRIBUTES_FILENAME).read_text())
        (raw / ATTRIBUTES_FILENAME).write_text(json.dumps({c: {a: v for a, v in e.items() if a in keep}
                                                           for c, e in table.items()}))
    run_cmd([nnunet_cmd("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres",
             "-npfp", "2", "-np", "2"])
    run_cmd([nnunet_cmd("nnUNetv2_train"), str(dataset_id), "3d_fullres", "0", "-tr", "ISRGTrainer_Debug",
             "-device", "cpu"])
    return nnunet_dirs["nnUNet_results"] / dataset / "ISRGTrainer_Debug__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def unlabelled_model(phantom_raw, nnunet_dirs) -> Path:
    return _train_debug_copy(phantom_raw, nnunet_dirs, 993, "NoAttributes", None)


@pytest.fixture(scope="module")
def two_label_model(phantom_raw, nnunet_dirs) -> Path:
    return _train_debug_copy(phantom_raw, nnunet_dirs, 994, "TwoAttributes", LABELLED)


@pytest.fixture(scope="module")
def lesion_case(phantom_raw) -> tuple[sitk.Image, tuple[int, int, int]]:
    from scipy.ndimage import distance_transform_edt

    for img_path in sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz")):
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_raw / "labelsTr" / (img_path.name[:-len("_0000.nii.gz")] + ".nii.gz"))))
        if (lab > 0).sum() > 50:
            d = distance_transform_edt(lab > 0)
            return sitk.ReadImage(str(img_path)), tuple(int(v) for v in np.unravel_index(np.argmax(d), lab.shape))
    raise AssertionError("no phantom case with a lesion")


def _report_after_one_click(model_folder: Path, lesion_case) -> tuple[LesionReport, ISRGSession]:
    """One click through the session with the model's record and a stand-in network whose masks are
    known to be non-empty (the debug model's own may be empty after a few iterations)."""
    torch.set_num_threads(1)
    loaded = load_trained_model(model_folder, folds=(0,))
    model = dataclasses.replace(with_network(loaded, ClickSpheresStandIn(loaded.crop_size, loaded.schema)),
                                attribute_support=loaded.attribute_support)
    session = ISRGSession(model)
    image, point = lesion_case
    session.set_image(image)
    session.add_click(point)
    return session.report(), session


def test_the_trainer_records_how_many_cases_each_attribute_learnt_from(unlabelled_model, two_label_model):
    loaded = load_trained_model(unlabelled_model, folds=(0,))
    assert loaded.attribute_support == {name: 0 for name in DEFAULT_SCHEMA}
    assert loaded.untrained_attributes == list(DEFAULT_SCHEMA)
    sidecar = json.loads((unlabelled_model / "fold_0" / ATTRIBUTE_SUPPORT_FILENAME).read_text())
    assert sidecar == loaded.attribute_support

    loaded = load_trained_model(two_label_model, folds=(0,))
    splits = json.loads((Path(str(two_label_model).replace("nnUNet_results", "nnUNet_preprocessed")).parent
                         / "splits_final.json").read_text())
    table = json.loads((two_label_model.parents[1].parent / "nnUNet_raw" / two_label_model.parent.name
                        / ATTRIBUTES_FILENAME).read_text())
    for name in DEFAULT_SCHEMA:
        expected = sum(1 for c in splits[0]["train"] if name in table.get(c, {})) if name in LABELLED else 0
        assert loaded.attribute_support[name] == expected
        # and per class: the prevalence the report's balanced probabilities divide out
        counts = {cls: sum(1 for c in splits[0]["train"] if table.get(c, {}).get(name) == cls)
                  if name in LABELLED else 0 for cls in DEFAULT_SCHEMA[name]}
        assert loaded.attribute_class_counts[name] == counts
    assert all(loaded.attribute_support[name] > 0 for name in LABELLED)
    sidecar = json.loads((two_label_model / "fold_0" / ATTRIBUTE_CLASS_COUNTS_FILENAME).read_text())
    assert sidecar == loaded.attribute_class_counts


def test_a_model_without_attribute_labels_reports_no_attribute_finding(unlabelled_model, lesion_case, tmp_path):
    report, session = _report_after_one_click(unlabelled_model, lesion_case)
    assert list(report.attributes) == list(DEFAULT_SCHEMA)
    for name, finding in report.attributes.items():
        assert finding.source in ("not assessed", "measurement"), name
        assert finding.probability is None and finding.model is None and finding.training_cases == 0
        assert finding.reason.startswith("not assessed by the model")
    for name in ("heterogeneity", "invasion"):  # no measured rule: nothing at all
        assert report.attributes[name].value is None
    assert render_text(report) == ""
    assert report.final_classes() == {}
    assert "not assessed" in render_markdown(report)
    # the JSON validates against the report schema and reads back the same
    assert LesionReport.from_dict(report.to_dict()).to_dict() == report.to_dict()

    paths = export_dicom(session.image, session.label_map(), [report], tmp_path / "dicom")
    sr = hd.sr.srread(paths["sr"])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1 and groups[0].get_qualitative_evaluations() == []


def test_a_model_with_two_labelled_attributes_reports_those_two(two_label_model, lesion_case):
    report, _ = _report_after_one_click(two_label_model, lesion_case)
    loaded = load_trained_model(two_label_model, folds=(0,))
    for name, finding in report.attributes.items():
        if name in LABELLED:
            assert finding.source == "model" and finding.value in DEFAULT_SCHEMA[name]
            assert finding.training_cases == loaded.attribute_support[name]
            assert finding.low_support == (loaded.attribute_support[name] < LOW_SUPPORT_CASES)
        else:
            assert finding.source in ("not assessed", "measurement") and finding.training_cases == 0
    sentence = render_text(report)
    assert sentence and all(report.attributes[n].value in sentence for n in LABELLED)
    assert set(report.final_classes()) == set(LABELLED)


def test_a_reader_may_still_set_an_attribute_the_model_did_not_learn(unlabelled_model, lesion_case):
    _, session = _report_after_one_click(unlabelled_model, lesion_case)
    session.set_attribute(None, "heterogeneity", "Homogeneous")
    finding = session.report().attributes["heterogeneity"]
    assert (finding.source, finding.value, finding.model) == ("reader", "Homogeneous", None)
    assert render_text(session.report()) == "Homogeneous."


def test_older_checkpoints_without_the_record_count_as_trained(lesion_case):
    image, point = lesion_case
    mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=bool)
    mask[tuple(slice(max(p - 3, 0), p + 4) for p in point)] = True
    probs = {name: {c: 1.0 / len(classes) for c in classes} for name, classes in DEFAULT_SCHEMA.items()}
    report = build_lesion_report(image, mask, probs, attribute_support=None, evidence={})
    assert all(f.source == "model" and not f.low_support and f.training_cases is None
               for f in report.attributes.values())
    support = {name: 50 for name in DEFAULT_SCHEMA} | {"surface": 5}
    flagged = build_lesion_report(image, mask, probs, attribute_support=support, evidence={})
    assert [n for n, f in flagged.attributes.items() if f.low_support] == ["surface"]
    assert flagged.to_dict()["attributes"]["surface"]["low_support"] is True
