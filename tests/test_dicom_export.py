"""DICOM SEG/SR export with highdicom: real DICOM input (STS_002) and NIfTI -> CT series -> SEG."""
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

hd = pytest.importorskip("highdicom")

from nnunet_isrg.report.dicom_export import (DicomExportError, export_dicom, read_dicom_series,  # noqa: E402
                                             write_ct_series_from_image, write_dicom_seg, write_dicom_sr)
from nnunet_isrg.report.structured import build_lesion_report  # noqa: E402

# ../shared/realdata beside the repository; ISRG_REALDATA points elsewhere
SHARED = Path(os.environ.get("ISRG_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
STS_DICOM = SHARED / "ibsi-sts-dicom" / "STS_002" / "CT" / "image"
STS_NIFTI = SHARED / "ibsi-sts" / "STS_002"
PROBS = {"shape": {"Round-like": 0.3, "Irregular": 0.7}, "density": {"Hypodense": 0.2, "Isodense": 0.7, "Hyperdense": 0.1},
         "heterogeneity": {"Homogeneous": 0.1, "Heterogeneous": 0.9}}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the real headers have over-long SH values
needs_real_data = pytest.mark.skipif(not STS_DICOM.is_dir() or not STS_NIFTI.is_dir(),
                                     reason=f"real data not found at {SHARED}")


def _ipp(ds) -> np.ndarray:
    return np.asarray(ds.ImagePositionPatient, dtype=float)


def _check_seg_matches_source(seg, source, label_map, n_segments):
    """Frame geometry, segment count and pixels of a SEG against its source series."""
    assert seg.get_segment_numbers() == list(range(1, n_segments + 1))
    by_uid = {d.SOPInstanceUID: (i, d) for i, d in enumerate(source)}
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, float),
                       np.asarray(source[0].PixelSpacing, float))
    assert np.allclose(np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float),
                       np.asarray(source[0].ImageOrientationPatient, float))
    assert (seg.Rows, seg.Columns) == (source[0].Rows, source[0].Columns)
    # one frame per (segment, slice with that segment) and each at the position of the slice it derives from
    expected = sum(int((label_map == k).any(axis=(1, 2)).sum()) for k in range(1, n_segments + 1))
    assert int(seg.NumberOfFrames) == expected
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        i, ds = by_uid[ref]
        assert np.allclose(np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float), _ipp(ds), atol=1e-3)
    # pixels, by source instance, reproduce the label map
    pix = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in source], combine_segments=True,
                                            assert_missing_frames_are_empty=True)
    assert np.array_equal(pix.astype(np.int64), label_map.astype(np.int64))


@pytest.fixture(scope="module")
def sts002():
    image, datasets = read_dicom_series(STS_DICOM)
    mask_img = sitk.ReadImage(str(STS_NIFTI / "CT_mask.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.Resample(mask_img, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    return image, datasets, mask


@needs_real_data
def test_read_dicom_series_sorted_and_matches_nifti(sts002):
    image, datasets, mask = sts002
    assert len(datasets) == 48 and image.GetSize()[2] == 48
    for k, ds in enumerate(datasets):  # datasets follow the image's z order
        assert np.allclose(_ipp(ds), image.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-3)
    nifti = sitk.ReadImage(str(STS_NIFTI / "CT_image.nii.gz"))
    assert nifti.GetSize() == image.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(nifti), sitk.GetArrayFromImage(image).astype(np.float32))
    assert mask.sum() == int(sitk.GetArrayFromImage(sitk.ReadImage(str(STS_NIFTI / "CT_mask.nii.gz"))).sum())


@needs_real_data
def test_seg_and_sr_from_dicom_input(sts002, tmp_path):
    image, datasets, mask = sts002
    # two lesions: the tumour split at its middle slice
    label_map = mask.astype(np.uint8)
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    label_map[zs[len(zs) // 2]:][label_map[zs[len(zs) // 2]:] > 0] = 2
    reports = [build_lesion_report(image, label_map == k, PROBS, [], f"lesion_{k}", label=k, evidence={})
               for k in (1, 2)]
    write_dicom_seg(datasets, label_map, ["lesion_1", "lesion_2"], tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    _check_seg_matches_source(seg, datasets, label_map, 2)
    assert [seg.get_segment_description(k).SegmentLabel for k in (1, 2)] == ["lesion_1", "lesion_2"]
    assert seg.SeriesInstanceUID != datasets[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID

    write_dicom_sr(datasets, seg, reports, tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for k, (group, rep) in enumerate(zip(groups, reports), start=1):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert list(ref.referenced_segment_numbers) == [k]
        values = {(m.name.meaning, m.derivation.meaning if m.derivation else None): (m.value, m.unit.value)
                  for m in group.get_measurements()}
        assert values[("Volume", None)] == (pytest.approx(rep.measurements["volume_ml"]), "ml")
        assert values[("Volume", None)][0] == pytest.approx((label_map == k).sum() * np.prod(image.GetSpacing()) / 1000)
        assert values[("Long axis", None)] == (pytest.approx(rep.measurements["recist"]["long_axis_mm"]), "mm")
        assert values[("Short axis", None)] == (pytest.approx(rep.measurements["recist"]["short_axis_mm"]), "mm")
        assert values[("Attenuation Coefficient", "Mean")][0] == pytest.approx(rep.measurements["hu"]["mean"])
        qual = {q.name.meaning: (q.value.meaning, q.value.scheme_designator) for q in group.get_qualitative_evaluations()}
        assert qual == {"Shape": ("Irregular", "99ISRG"), "Density": ("Isodense", "99ISRG"),
                        "Heterogeneity": ("Heterogeneous", "99ISRG")}
    # the SR lists the CT series and the SEG as evidence
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence and datasets[0].SOPInstanceUID in evidence


ROTATED = tuple(sitk.VersorTransform((0.2, 0.1, 1.0), 0.4).GetMatrix())


@pytest.mark.parametrize("direction", [None, (1, 0, 0, 0, 1, 0, 0, 0, -1), ROTATED])
def test_nifti_to_ct_series_to_seg_round_trip(tmp_path, direction):
    # a CT-like synthetic volume (independent of the real data): 30 HU ellipsoid in noisy -100..80 HU
    rng = np.random.default_rng(0)
    shape = (12, 40, 36)
    zz, yy, xx = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    mask = (zz / 4) ** 2 + (yy / 9) ** 2 + (xx / 7) ** 2 <= 1
    arr = np.where(mask, 30.0, rng.uniform(-100, 80, shape)) + rng.normal(0, 5, shape)
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-120.5, 33.25, -640.0))
    if direction is not None:  # flipped: the slice axis runs against the slice normal; or oblique
        image.SetDirection(direction)
    datasets = write_ct_series_from_image(image, tmp_path / "ct")
    assert len(list((tmp_path / "ct").glob("*.dcm"))) == image.GetSize()[2]
    assert len({d.SeriesInstanceUID for d in datasets}) == len({d.FrameOfReferenceUID for d in datasets}) == 1
    back, back_ds = read_dicom_series(tmp_path / "ct")
    # same physical image (SimpleITK may reorder the slices along the normal)
    same = sitk.Resample(back, image, sitk.Transform(), sitk.sitkNearestNeighbor, -5000)
    assert np.array_equal(sitk.GetArrayFromImage(same), np.rint(sitk.GetArrayFromImage(image)))
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-4)

    lm = mask.astype(np.uint8)
    organs = np.ones(mask.shape, np.uint8)  # an organ map: the finding site of the SR group
    reports = [build_lesion_report(image, mask, PROBS, [], "tumour", label=1, evidence={}, organ_map=organs,
                                   organ_names={1: "Thigh muscle"})]
    paths = export_dicom(image, lm, reports, tmp_path / "out", source_datasets=datasets)
    seg = hd.seg.segread(paths["seg"])
    _check_seg_matches_source(seg, datasets, lm, 1)
    # export without a source series writes one itself
    paths2 = export_dicom(image, lm, reports, tmp_path / "out2")
    assert paths2["ct_dir"] and len(list(Path(paths2["ct_dir"]).glob("*.dcm"))) == image.GetSize()[2]
    sr = hd.sr.srread(paths2["sr"])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1
    assert [f.value.meaning for f in groups[0].finding_sites] == ["Thigh muscle"]


def test_errors_are_clear(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(DicomExportError, match="nothing_here: no DICOM CT series found"):
        read_dicom_series(empty)
    image = sitk.GetImageFromArray(np.zeros((6, 16, 16), np.float32))
    datasets = write_ct_series_from_image(image, tmp_path / "ct")
    mask = np.zeros((6, 16, 16), bool)
    mask[2:4, 5:9, 5:9] = True
    with pytest.raises(DicomExportError, match="does not match the source series"):
        write_dicom_seg(datasets, mask[:-1].astype(np.uint8), ["a"], tmp_path / "x.dcm")
    lm = mask.astype(np.uint8)
    lm[0, 0, 0] = 5
    with pytest.raises(DicomExportError, match=r"label\(s\) \[5\] without a lesion name"):
        write_dicom_seg(datasets, lm, ["a"], tmp_path / "x.dcm")
    with pytest.raises(DicomExportError, match=r"no voxels for lesion label\(s\) \[2\]"):
        write_dicom_seg(datasets, mask.astype(np.uint8), ["a", "b"], tmp_path / "x.dcm")
    sheared = sitk.Image(8, 8, 4, sitk.sitkInt16)
    sheared.SetDirection((1, 0, 0.5, 0, 1, 0, 0, 0, 0.8660254037844386))
    with pytest.raises(DicomExportError, match="not perpendicular"):
        write_ct_series_from_image(sheared, tmp_path / "ct")
