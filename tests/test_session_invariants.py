"""Invariants of ISRGSession after any sequence of calls, checked by hypothesis.

Random sequences of add_click, undo, reset, new_lesion, select_lesion and set_attribute run on a
click-driven stand-in network (masks are balls around the positive clicks, so lesions placed near
each other overlap unless the session keeps them apart). After every call: no voxel belongs to two
lesions and each lesion's state is its part of the label map. At the end of a sequence: each
lesion's report (its volume), the label map, ``mask.nii.gz`` as ``isrg predict`` writes it, the
DICOM SEG and the DICOM SR agree voxel for voxel.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nnunet_isrg.inference.model_loading import load_trained_model
from nnunet_isrg.inference.session import ISRGSession, SessionError

from stand_ins import ClickSpheresStandIn, with_network

hd = pytest.importorskip("highdicom")

SHAPE = (20, 36, 36)         # (z, y, x) voxels of the synthetic CT, at the phantom plans' 1.5 mm
#: click positions 3 voxels apart: balls of radius 5.5 around them overlap (few, so that sequences
#: often return to the same place, where lesions compete for voxels)
LATTICE = [(z, y, x) for z in (8, 11) for y in (15, 18) for x in (15, 18)]

operation = st.one_of(
    st.tuples(st.just("add_click"), st.sampled_from(LATTICE), st.booleans()),
    st.tuples(st.just("undo")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("new_lesion")),
    st.tuples(st.just("select_lesion"), st.integers(1, 3)),
    st.tuples(st.just("set_attribute"), st.integers(1, 3), st.sampled_from(["Round", "Irregular", None])),
)


@pytest.fixture(scope="module")
def stand_in(debug_model):
    loaded = load_trained_model(debug_model, folds=(0,))
    return with_network(loaded, ClickSpheresStandIn(loaded.crop_size, loaded.schema))


@pytest.fixture(scope="module")
def image() -> sitk.Image:
    rng = np.random.default_rng(3)
    img = sitk.GetImageFromArray(rng.normal(40, 20, SHAPE).astype(np.float32))
    img.SetSpacing((1.5, 1.5, 1.5))
    img.SetOrigin((-20.0, 14.5, -300.0))
    return img


def apply(session: ISRGSession, op: tuple) -> None:
    """One call; a call the session refuses (nothing to undo, unknown lesion...) is allowed to fail."""
    name, *args = op
    try:
        if name == "add_click":
            session.add_click(args[0], positive=args[1])
        elif name == "select_lesion":
            session.select_lesion(args[0])
        elif name == "set_attribute":
            session.set_attribute(args[0], "shape", args[1])
        else:
            getattr(session, name)()
    except SessionError:
        pass


def check_label_map(session: ISRGSession) -> np.ndarray:
    """No voxel in two lesions; each lesion's state mask is exactly its label in the label map."""
    labels = session.label_map()
    covered = np.zeros(SHAPE, dtype=np.int32)
    for lid in session.lesion_ids:
        mask = session.state(lid).mask
        covered += mask
        assert np.array_equal(mask, labels == lid), f"lesion {lid}: state and label map differ"
    assert covered.max(initial=0) <= 1, f"{int((covered > 1).sum())} voxels belong to two lesions"
    assert np.array_equal(covered > 0, labels > 0)
    return labels


def check_exports(session: ISRGSession, labels: np.ndarray, out) -> None:
    """Reports, mask.nii.gz, SEG and SR against the label map."""
    from nnunet_isrg.report.dicom_export import export_dicom

    voxel_ml = float(np.prod(session.image.GetSpacing())) / 1000.0
    reports = session.reports()
    assert sorted(r.label for r in reports) == sorted(int(v) for v in np.unique(labels) if v)
    for rep in reports:
        assert rep.measurements["volume_ml"] == pytest.approx((labels == rep.label).sum() * voxel_ml, rel=1e-9)

    sitk.WriteImage(session.label_image(), str(out / "mask.nii.gz"), True)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz"))), labels)
    if not reports:
        return
    paths = export_dicom(session.image, labels, reports, out / "dicom")
    seg = hd.seg.segread(paths["seg"])
    ct = sorted((out / "dicom" / "ct").glob("*.dcm"))
    import pydicom

    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct]
    datasets = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in ct}
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=True,
                                               skip_overlap_checks=False)
    # SEG segment k is the k-th report; map back to lesion labels through the segment labels
    segment_to_label = {k: int(seg.get_segment_description(k).SegmentLabel.split("_")[-1])
                        for k in seg.get_segment_numbers()}
    seg_labels = np.vectorize(lambda v: segment_to_label.get(int(v), 0))(pixels) if pixels.any() else pixels
    # frames follow the CT files' instance order; the label map follows the image's z order
    z_of_uid = {pydicom.dcmread(datasets[u], stop_before_pixels=True).InstanceNumber: i for i, u in enumerate(uids)}
    order = [z_of_uid[n] for n in sorted(z_of_uid)]
    assert np.array_equal(seg_labels[order].astype(np.int64), labels.astype(np.int64))
    sr = hd.sr.srread(paths["sr"])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    volumes = {}
    for g in groups:
        (k,) = g.referenced_segment.referenced_segment_numbers
        volumes[segment_to_label[k]] = {m.name.meaning: m.value for m in g.get_measurements()}["Volume"]
    assert volumes == {r.label: pytest.approx(r.measurements["volume_ml"]) for r in reports}


#: the outside tester's kind of sequence: a negative click frees lesion 1's middle, lesion 2 takes it,
#: lesion 1's click is undone
RECLAIM = [("add_click", (8, 15, 15), True), ("add_click", (8, 15, 15), False), ("new_lesion",),
           ("add_click", (8, 15, 18), True), ("select_lesion", 1), ("undo",)]


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(ops=RECLAIM)
@given(ops=st.lists(operation, min_size=1, max_size=16))
def test_any_sequence_keeps_lesions_disjoint(stand_in, image, ops):
    session = ISRGSession(stand_in)
    session.set_image(image)
    for op in ops:
        apply(session, op)
        check_label_map(session)


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(ops=RECLAIM)
@given(ops=st.lists(operation, min_size=1, max_size=16))
def test_any_sequence_gives_reports_mask_seg_and_sr_that_agree(stand_in, image, tmp_path_factory, ops):
    session = ISRGSession(stand_in)
    session.set_image(image)
    for op in ops:
        apply(session, op)
    check_exports(session, check_label_map(session), tmp_path_factory.mktemp("outputs"))


def test_undo_after_another_lesion_took_the_freed_voxels_does_not_overlap(stand_in, image):
    """The kind of sequence the outside tester found: a negative click frees the middle of lesion 1, a
    second lesion takes it, lesion 1's click is undone. Lesion 1 comes back without the voxels lesion 2
    holds now (before the fix it came back whole and the two shared them)."""
    s = ISRGSession(stand_in)
    s.set_image(image)
    first = s.add_click((10, 18, 18)).mask
    s.add_click((10, 18, 18), positive=False)          # frees a ball of radius 2.75 in its middle
    s.new_lesion()
    two = s.add_click((10, 18, 20)).mask                # lesion 2 takes the freed middle
    assert (two & first).any(), "the test needs lesion 2 inside lesion 1's first mask"
    s.select_lesion(1)
    one = s.undo().mask
    assert np.array_equal(one, first & ~two)
    labels = check_label_map(s)
    assert s.report(1).measurements["volume_ml"] == pytest.approx((labels == 1).sum() * 1.5 ** 3 / 1000)
    s.select_lesion(2)
    s.undo()                                            # lesion 2 gone: lesion 1 keeps what it had
    assert np.array_equal(s.state(1).mask, one) and not s.state(2).mask.any()


def test_undo_history_is_capped_at_its_depth(stand_in, image):
    s = ISRGSession(stand_in, undo_depth=3)
    s.set_image(image)
    masks = [s.add_click(p).mask for p in [(10, 18, 18), (10, 18, 22), (10, 22, 22), (14, 22, 22), (6, 10, 10)]]
    for expected in masks[-2:-5:-1]:           # three steps back, each exactly the earlier mask
        assert np.array_equal(s.undo().mask, expected)
    with pytest.raises(SessionError, match=r"lesion 1 has nothing to undo \(the last 3 steps are kept\)"):
        s.undo()
    with pytest.raises(SessionError, match="undo_depth must be at least 1, got 0"):
        ISRGSession(stand_in, undo_depth=0)
