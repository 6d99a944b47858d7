"""DICOM input that would be read wrongly is refused, and the exports pass dciodvfy."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunet_isrg.attributes import DEFAULT_SCHEMA
from nnunet_isrg.report.dicom_export import (MAX_STUDY_ID_LENGTH, DicomExportError, export_dicom, read_dicom_series,
                                             write_ct_series_from_image)
from nnunet_isrg.report.structured import build_lesion_report


def _ct(shape=(10, 24, 20), spacing=(0.8, 0.7, 2.5)):
    rng = np.random.default_rng(1)
    zz, yy, xx = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    mask = (zz / 3) ** 2 + (yy / 6) ** 2 + (xx / 5) ** 2 <= 1
    image = sitk.GetImageFromArray(np.where(mask, 40.0, rng.uniform(-80, 20, shape)).astype(np.float32))
    image.SetSpacing(spacing)
    return image, mask


@pytest.fixture()
def series(tmp_path) -> Path:
    image, _ = _ct()
    write_ct_series_from_image(image, tmp_path / "ct")
    return tmp_path / "ct"


def test_a_complete_series_is_read_with_its_spacing(series):
    image, datasets = read_dicom_series(series)
    assert image.GetSize()[2] == len(datasets) == 10
    assert image.GetSpacing()[2] == pytest.approx(2.5, abs=1e-3)


def test_a_missing_slice_is_refused_naming_the_gap(series):
    files = sorted(series.glob("*.dcm"))
    files[4].unlink()  # positions ... 7.5, [10.0 missing], 12.5 ...
    with pytest.raises(DicomExportError, match=r"5\.000 mm between positions .* against 2\.500 mm elsewhere"):
        read_dicom_series(series)


def test_uneven_slice_spacing_is_refused(series):
    f = sorted(series.glob("*.dcm"))[7]
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + 0.6]
    ds.save_as(f)
    with pytest.raises(DicomExportError, match="not evenly spaced"):
        read_dicom_series(series)


def test_files_linked_from_outside_the_folder_are_refused(series, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    for f in series.glob("*.dcm"):
        (linked / f.name).symlink_to(f)
    with pytest.raises(DicomExportError, match="resolve outside the folder"):
        read_dicom_series(linked)


def _exports(tmp_path: Path, source_datasets=None, image=None, mask=None) -> dict:
    if image is None:
        image, mask = _ct()
    probs = {n: {c: 1 / len(v) for c in v} for n, v in DEFAULT_SCHEMA.items()}
    report = build_lesion_report(image, mask, probs, [], "lesion_1", label=1, evidence={})
    return export_dicom(image, mask.astype(np.uint8), [report], tmp_path / "dicom", source_datasets=source_datasets)


def test_a_study_id_longer_than_the_vr_allows_is_cut(series, tmp_path):
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.StudyID = "IBSI_1_STS_002_CT"  # 17 characters, as in the shared real series
        ds.save_as(f)
    image, datasets = read_dicom_series(series)
    mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, bool)
    mask[3:6, 8:14, 8:12] = True
    paths = _exports(tmp_path, datasets, image, mask)
    for key in ("seg", "sr"):
        study_id = pydicom.dcmread(paths[key]).StudyID
        assert study_id == "IBSI_1_STS_002_CT"[:MAX_STUDY_ID_LENGTH]


def test_the_sr_references_segments_by_number_without_frames(tmp_path):
    paths = _exports(tmp_path)
    sr = pydicom.dcmread(paths["sr"])
    refs = [item for item in _walk(sr) if "ReferencedSegmentNumber" in item]
    assert refs and all("ReferencedFrameNumber" not in item for item in refs)
    ct = pydicom.dcmread(sorted(Path(paths["ct_dir"]).glob("*.dcm"))[0])
    assert "Laterality" in ct


def _walk(ds):
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield item
                yield from _walk(item)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian's dicom3tools) not installed")
def test_exports_pass_dciodvfy_without_errors(tmp_path, series):
    nifti = _exports(tmp_path / "nifti")
    image, datasets = read_dicom_series(series)
    mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, bool)
    mask[3:6, 8:14, 8:12] = True
    dicom = _exports(tmp_path / "dicom", datasets, image, mask)
    files = [nifti["sr"], nifti["seg"], sorted(Path(nifti["ct_dir"]).glob("*.dcm"))[0], dicom["sr"], dicom["seg"]]
    for f in files:
        out = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{f}: {errors}"
