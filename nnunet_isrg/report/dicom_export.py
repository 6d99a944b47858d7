"""DICOM export with highdicom: a SEG (one segment per lesion) and a Comprehensive 3D SR (TID 1500).

- :func:`read_dicom_series`: a CT series folder -> SimpleITK image + its pydicom datasets, in the
  same slice order (ascending position along the slice normal, SimpleITK/GDCM's order).
- :func:`write_ct_series_from_image`: for NIfTI input, writes a minimal valid CT series (one file per
  slice, int16 HU with slope 1 / intercept 0) that a SEG can reference. SimpleITK's geometry is
  already LPS, which is DICOM's patient frame, so origin/direction are copied as they are.
- :func:`write_dicom_seg`: the lesion label map (z,y,x, on the series grid) -> BINARY SEG,
  segment ``k`` = the ``k``-th lesion of ``lesion_names``.
- :func:`write_dicom_sr`: one ``VolumetricROIMeasurementsAndQualitativeEvaluations`` group per
  lesion, referencing its SEG segment, with volume, long/short axis, HU mean/std and the report's
  attributes as qualitative evaluations. Attribute names and values use the local coding scheme
  ``99ISRG`` (there are no standard codes for the PASTA classes), except "Shape" (SCT 300842002).
  The organ of the report, when known, is the group's finding site (local code as well).
  Reader overrides vs model predictions are not distinguishable in TID 1500 qualitative
  evaluations; the JSON report keeps that distinction.
"""
from __future__ import annotations

import datetime
import os
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_isrg.files import atomic_path

CODING_SCHEME = "99ISRG"
MANUFACTURER = "nnunet-isrg"
SOFTWARE_VERSION = "0.1.0"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class DicomExportError(ValueError):
    """DICOM input or export that cannot be done; the message names the folder/file and why."""


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------

def _slice_normal(ds) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


def sort_datasets_by_position(datasets: Sequence) -> list:
    """Datasets in ascending position along the slice normal (SimpleITK/GDCM order)."""
    if not datasets:
        return []
    n = _slice_normal(datasets[0])
    return sorted(datasets, key=lambda d: float(np.dot(n, np.asarray(d.ImagePositionPatient, dtype=float))))


#: slice positions may deviate from the series' median spacing by this fraction before the
#: series counts as having a gap (a missing slice) or non-uniform spacing
SLICE_SPACING_TOLERANCE = 0.05


def check_slice_spacing(datasets: Sequence, folder: str | os.PathLike = "") -> float:
    """The uniform distance (mm) between consecutive slices of ``datasets`` (sorted by position);
    raises :class:`DicomExportError` naming the gap when one is missing or the spacing varies,
    which a volume reader would silently stretch into a uniform grid."""
    if len(datasets) < 2:
        return float("nan")
    n = _slice_normal(datasets[0])
    positions = np.array([float(np.dot(n, np.asarray(d.ImagePositionPatient, dtype=float))) for d in datasets])
    steps = np.diff(positions)
    spacing = float(np.median(steps))
    bad = np.nonzero(np.abs(steps - spacing) > SLICE_SPACING_TOLERANCE * max(spacing, 1e-6))[0]
    if spacing <= 0 or bad.size:
        i = int(bad[0]) if bad.size else 0
        names = [getattr(d, "filename", None) or f"slice {k}" for k, d in ((i, datasets[i]), (i + 1, datasets[i + 1]))]
        raise DicomExportError(
            f"{folder}: the series' slices are not evenly spaced: {steps[i]:.3f} mm between positions "
            f"{positions[i]:.3f} and {positions[i + 1]:.3f} mm ({Path(str(names[0])).name}, {Path(str(names[1])).name}) "
            f"against {spacing:.3f} mm elsewhere (a missing slice?); {bad.size} such gap(s). Complete the series "
            f"or resample it to a uniform grid before opening it")
    return spacing


def _files_inside(folder: Path, files: Sequence[str]) -> None:
    """Refuses files of a series folder that resolve (through links) outside it: a folder the reader
    may open must not lead to files it may not."""
    root = folder.resolve()
    outside = [f for f in files if not Path(f).resolve().is_relative_to(root)]
    if outside:
        raise DicomExportError(f"{folder}: {len(outside)} file(s) of the series resolve outside the folder, e.g. "
                               f"{outside[0]} -> {Path(outside[0]).resolve()}; copy the files instead of linking them")


def read_dicom_series(folder: str | os.PathLike, series_instance_uid: str | None = None):
    """Reads a CT series: ``(sitk.Image in HU, [pydicom.Dataset])``, datasets in the image's z order.

    When the folder holds several series, the CT one with most slices is taken (or
    ``series_instance_uid``). Pixel data is not kept in the datasets (headers only). Refused: a
    series with a missing slice or uneven slice spacing (:func:`check_slice_spacing`), and files
    that resolve outside ``folder``.
    """
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise DicomExportError(f"{folder}: not a folder (expected a DICOM CT series folder)")
    _files_inside(folder, [str(p) for p in folder.iterdir()])  # before GDCM opens any of them
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder)) or ()
    candidates = []
    for uid in series:
        if series_instance_uid is not None and uid != series_instance_uid:
            continue
        files = reader.GetGDCMSeriesFileNames(str(folder), uid)
        if not files:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = pydicom.dcmread(files[0], stop_before_pixels=True)
        if getattr(head, "Modality", None) == "CT":
            candidates.append((len(files), uid, files))
    if not candidates:
        what = f"series {series_instance_uid}" if series_instance_uid else "CT series"
        raise DicomExportError(f"{folder}: no DICOM {what} found (series present: {list(series) or 'none'})")
    _, uid, files = max(candidates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # real data often has over-long SH values etc.
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    # GDCM's file order is its own; make the datasets follow the image's z order explicitly
    datasets = sort_datasets_by_position(datasets)
    check_slice_spacing(datasets, folder)
    reader.SetFileNames(files)
    image = reader.Execute()
    first = np.asarray(datasets[0].ImagePositionPatient, dtype=float)
    if not np.allclose(first, image.GetOrigin(), atol=1e-3):
        datasets = datasets[::-1]
    return image, datasets


# ----------------------------------------------------------------------------------------------
# writing a CT series for NIfTI input
# ----------------------------------------------------------------------------------------------

def _ds_number(v: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    s = f"{v:.10g}"
    if len(s) > 16:
        s = f"{v:.6e}" if abs(v) >= 1e10 or (v != 0 and abs(v) < 1e-4) else f"{v:.8f}"[:16]
    return s


#: the longest Study ID (VR SH) the standard allows
MAX_STUDY_ID_LENGTH = 16


def _atomic_save(ds, path: Path) -> None:
    # highdicom copies the source's Study ID; a source that breaks the VR's length must not make
    # our object invalid, so it is cut to the allowed 16 characters
    if "StudyID" in ds and len(str(ds.StudyID)) > MAX_STUDY_ID_LENGTH:
        ds.StudyID = str(ds.StudyID)[:MAX_STUDY_ID_LENGTH]
    with atomic_path(path, suffix=".tmp") as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)


def write_ct_series_from_image(image: sitk.Image, out_dir: str | os.PathLike, patient_id: str = "ANONYMOUS",
                               patient_name: str = "ANONYMOUS^", study_description: str = "nnunet-isrg",
                               series_description: str = "CT from NIfTI", series_number: int = 1) -> list:
    """Writes ``image`` (HU) as a CT series, one file ``ct_00000.dcm``... per z slice; returns the datasets.

    The direction's third axis must be perpendicular to the slice plane (no shear), else the series
    could not represent the grid and :class:`DicomExportError` is raised.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if image.GetDimension() != 3:
        raise DicomExportError(f"expected a 3D image, got {image.GetDimension()}D")
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    row, col, axis = d[:, 0], d[:, 1], d[:, 2]
    if abs(abs(float(np.dot(np.cross(row, col), axis))) - 1.0) > 1e-4:
        raise DicomExportError("cannot write a CT series: the image's slice axis is not perpendicular to its "
                               f"slice plane (direction {image.GetDirection()})")
    arr = sitk.GetArrayFromImage(image)
    if not np.issubdtype(arr.dtype, np.number):
        raise DicomExportError(f"image pixel type {image.GetPixelIDTypeAsString()} is not a scalar HU image")
    hu = np.clip(np.rint(arr.astype(np.float64)), -32768, 32767).astype(np.int16)
    sx, sy, sz = image.GetSpacing()
    out_dir = Path(out_dir)
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    datasets = []
    for k in range(arr.shape[0]):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = MANUFACTURER
        ds.ReferringPhysicianName = ""
        ds.StudyDescription, ds.SeriesDescription = study_description, series_description
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex = "", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.Laterality = ""  # Type 2C in the General Series module; a NIfTI says nothing about it
        ds.InstanceNumber = k + 1
        ds.PositionReferenceIndicator = ""
        ds.KVP = ""
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [_ds_number(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds_number(sy), _ds_number(sx)]  # row spacing (between rows = y), column spacing (x)
        ds.SliceThickness = _ds_number(sz)
        ds.SliceLocation = _ds_number(float(np.dot(np.cross(row, col), ds.ImagePositionPatient)))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = hu[k].tobytes()
        _atomic_save(ds, out_dir / f"ct_{k:05d}.dcm")
        datasets.append(ds)
    return datasets


# ----------------------------------------------------------------------------------------------
# SEG
# ----------------------------------------------------------------------------------------------

def _lesion_label_names(label_map: np.ndarray, lesion_names) -> list:
    """[(label value, name)] in segment order."""
    if isinstance(lesion_names, Mapping):
        pairs = [(int(k), str(v)) for k, v in lesion_names.items()]
    else:
        pairs = [(i + 1, str(n)) for i, n in enumerate(lesion_names)]
    if not pairs:
        raise DicomExportError("lesion_names is empty: a SEG needs at least one lesion")
    present = set(np.unique(label_map).tolist()) - {0}
    missing = [lab for lab, _ in pairs if lab not in present]
    if missing:
        raise DicomExportError(f"label map has no voxels for lesion label(s) {missing} "
                               f"(labels present: {sorted(present)})")
    extra = sorted(present - {lab for lab, _ in pairs})
    if extra:
        raise DicomExportError(f"label map has label(s) {extra} without a lesion name; names given for "
                               f"{[lab for lab, _ in pairs]}")
    return pairs


def _check_grid(label_map: np.ndarray, datasets: Sequence) -> None:
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if label_map.shape != (len(datasets), rows, cols):
        raise DicomExportError(f"label map shape {label_map.shape} (z,y,x) does not match the source series "
                               f"({len(datasets)} slices of {rows} x {cols})")


def write_dicom_seg(source_datasets: Sequence, label_map, lesion_names, out_path: str | os.PathLike,
                    series_number: int = 300, omit_empty_frames: bool = True, series_description: str = "ISRG lesions"):
    """Writes a BINARY SEG with one segment per lesion; returns the highdicom ``Segmentation``.

    ``label_map``: integer z,y,x array on the series grid, slice ``i`` = ``source_datasets[i]`` (the
    order :func:`read_dicom_series` and :func:`write_ct_series_from_image` return, which is the
    image's z order); ``lesion_names``: list (label ``i + 1`` -> ``lesion_names[i]``) or mapping label ->
    name. Segment numbers are 1..n in that order.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not source_datasets:
        raise DicomExportError("source_datasets is empty: the SEG must reference a CT series")
    datasets = list(source_datasets)
    lm = np.asarray(label_map)
    if lm.ndim != 3 or not np.issubdtype(lm.dtype, np.integer) and lm.dtype != bool:
        raise DicomExportError(f"label_map must be a 3D integer z,y,x array, got {lm.dtype} {lm.shape}")
    _check_grid(lm, datasets)
    pairs = _lesion_label_names(lm, lesion_names)
    seg_map = np.zeros(lm.shape, np.uint8 if len(pairs) < 256 else np.uint16)
    for number, (label, _) in enumerate(pairs, start=1):
        seg_map[lm == label] = number
    algo = hd.AlgorithmIdentificationSequence(name=MANUFACTURER, family=codes.cid7162.ArtificialIntelligence,
                                              version=SOFTWARE_VERSION)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algo, tracking_uid=hd.UID(), tracking_id=name[:64])
        for number, (_, name) in enumerate(pairs, start=1)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=seg_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER, software_versions=SOFTWARE_VERSION, device_serial_number="0",
        omit_empty_frames=omit_empty_frames, series_description=series_description)
    _atomic_save(seg, Path(out_path))
    return seg


# ----------------------------------------------------------------------------------------------
# SR
# ----------------------------------------------------------------------------------------------

def _local_code(text: str) -> str:
    """A stable local code value (<= 16 characters) for a class or attribute name."""
    v = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").upper()
    return v[:16].strip("-") or "UNKNOWN"


def attribute_name_code(name: str):
    import highdicom as hd

    if name == "shape":
        return hd.sr.CodedConcept("300842002", "SCT", "Shape")
    return hd.sr.CodedConcept(_local_code(name), CODING_SCHEME, name.replace("_", " ").capitalize())


def attribute_value_code(name: str, value: str):
    import highdicom as hd

    return hd.sr.CodedConcept(_local_code(f"{name[:3]}-{value}"), CODING_SCHEME, value[:64])


def _measurements_for(report, hd, codes) -> list:
    m = report.measurements
    ml = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
    mm = codes.UCUM.Millimeter
    hu = codes.UCUM.HounsfieldUnit
    out = [hd.sr.Measurement(name=codes.SCT.Volume, value=float(m["volume_ml"]), unit=ml),
           hd.sr.Measurement(name=codes.SCT.LongAxis, value=float(m["recist"]["long_axis_mm"]), unit=mm),
           hd.sr.Measurement(name=codes.SCT.ShortAxis, value=float(m["recist"]["short_axis_mm"]), unit=mm),
           hd.sr.Measurement(name=codes.DCM.AttenuationCoefficient, value=float(m["hu"]["mean"]), unit=hu,
                             derivation=codes.SCT.Mean),
           hd.sr.Measurement(name=codes.DCM.AttenuationCoefficient, value=float(m["hu"]["std"]), unit=hu,
                             derivation=codes.SCT.StandardDeviation)]
    return out


def _referenced_segment(seg, number: int, hd):
    """``ReferencedSegment`` of one SEG segment with its frames and source images.

    Written here rather than ``ReferencedSegment.from_segmentation`` because that one (highdicom
    0.28) fails on a single-segment SEG, whose segment identification lives in the shared
    functional groups instead of the per-frame ones.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared_number = (int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                     if "SegmentIdentificationSequence" in shared else None)
    frames, sources = [], {}
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        n = (int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
             if "SegmentIdentificationSequence" in frame else shared_number)
        if n != number:
            continue
        frames.append(i)
        for der in frame.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                sources[src.ReferencedSOPInstanceUID] = src.ReferencedSOPClassUID
    images = [hd.sr.SourceImageForSegmentation(cls, uid) for uid, cls in sources.items()]
    # the segment is referenced by its number alone: the standard forbids ReferencedSegmentNumber
    # beside ReferencedFrameNumber in the SR's image reference (dciodvfy reports it as an error)
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
        frame_numbers=None, source_images=images or None,
        source_series=None if images else hd.sr.SourceSeriesForSegmentation(
            seg.ReferencedSeriesSequence[0].SeriesInstanceUID))


def write_dicom_sr(source_datasets: Sequence, seg_dataset, reports: Sequence, out_path: str | os.PathLike,
                   series_number: int = 301, segment_numbers: Sequence[int] | None = None):
    """Writes a Comprehensive 3D SR (TID 1500) for ``reports``; returns the highdicom SR.

    ``seg_dataset``: the SEG of :func:`write_dicom_seg` (or read back); report ``i`` references
    segment ``segment_numbers[i]`` (default ``i + 1``, the order given to :func:`write_dicom_seg`).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not source_datasets:
        raise DicomExportError("source_datasets is empty: the SR must reference the CT series")
    if not reports:
        raise DicomExportError("no lesion reports to write")
    segment_numbers = list(segment_numbers) if segment_numbers is not None else list(range(1, len(reports) + 1))
    if len(segment_numbers) != len(reports):
        raise DicomExportError(f"{len(reports)} reports but {len(segment_numbers)} segment numbers")
    available = {int(s.SegmentNumber) for s in seg_dataset.SegmentSequence}
    bad = [s for s in segment_numbers if s not in available]
    if bad:
        raise DicomExportError(f"segment number(s) {bad} are not in the SEG (it has {sorted(available)})")

    groups = []
    for report, number in zip(reports, segment_numbers):
        # only the model's and the reader's findings: a measured descriptor or an attribute the model
        # was not trained on is not a qualitative evaluation of this lesion
        qualitative = [hd.sr.QualitativeEvaluation(attribute_name_code(name), attribute_value_code(name, f.value))
                       for name, f in report.findings().items()]
        organ = (report.location or {}).get("organ")
        sites = ([hd.sr.FindingSite(anatomic_location=hd.sr.CodedConcept(_local_code(organ), CODING_SCHEME, organ[:64]))]
                 if organ else None)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=str(report.lesion_id)[:64]),
            referenced_segment=_referenced_segment(seg_dataset, number, hd),
            finding_type=codes.SCT.Lesion,
            finding_sites=sites,
            measurements=_measurements_for(report, hd, codes),
            qualitative_evaluations=qualitative or None))
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=SOFTWARE_VERSION))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ComputedTomography, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source_datasets, seg_dataset], content=content, series_instance_uid=hd.UID(),
        series_number=int(series_number), sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True)
    _atomic_save(sr, Path(out_path))
    return sr


def export_dicom(image: sitk.Image, label_map, reports: Sequence, out_dir: str | os.PathLike,
                 source_datasets: Sequence | None = None) -> dict:
    """SEG + SR for one image into ``out_dir``; writes a CT series first when there are no source datasets
    (NIfTI input). Report ``i`` is lesion label ``reports[i].label`` (or ``i + 1``).
    Returns the paths: ``{"ct_dir" (or None), "seg", "sr"}``.
    """
    out_dir = Path(out_dir)
    ct_dir = None
    if not source_datasets:
        ct_dir = out_dir / "ct"
        source_datasets = write_ct_series_from_image(image, ct_dir)
    names = {int(r.label if r.label is not None else i + 1): str(r.lesion_id) for i, r in enumerate(reports)}
    seg = write_dicom_seg(source_datasets, label_map, names, out_dir / "seg.dcm")
    write_dicom_sr(source_datasets, seg, reports, out_dir / "sr.dcm")
    return {"ct_dir": str(ct_dir) if ct_dir else None, "seg": str(out_dir / "seg.dcm"), "sr": str(out_dir / "sr.dcm")}
