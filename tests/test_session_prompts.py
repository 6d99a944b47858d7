"""Boxes, scribbles and lassos through ISRGSession, on the click-driven stand-in network (which
segments the box, the positive strokes and balls around positive clicks, less negative strokes)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_isrg.inference.model_loading import load_trained_model
from nnunet_isrg.inference.session import ISRGSession, SessionError
from nnunet_isrg.prompts import Box

from stand_ins import ClickSpheresStandIn, with_network

SHAPE = (40, 72, 72)        # (z, y, x) voxels at the debug plans' 1.5 mm; the debug crop is 32^3


@pytest.fixture(scope="module")
def stand_in(debug_model):
    loaded = load_trained_model(debug_model, folds=(0,))
    model = with_network(loaded, ClickSpheresStandIn(loaded.crop_size, loaded.schema))
    model.prompt_kinds = ("clicks", "boxes", "scribbles", "lassos")
    return model


@pytest.fixture(scope="module")
def image() -> sitk.Image:
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(40, 20, SHAPE).astype(np.float32))
    img.SetSpacing((1.5, 1.5, 1.5))
    img.SetOrigin((-50.0, 20.0, -300.0))
    img.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))        # rotated in-plane: world != voxel
    return img


def _session(stand_in, image) -> ISRGSession:
    s = ISRGSession(stand_in)
    s.set_image(image)
    return s


def test_a_box_in_voxel_or_world_corners_gives_the_box(stand_in, image):
    s = _session(stand_in, image)
    a, b = (12, 20, 30), (22, 34, 44)
    state = s.add_box(a, b)
    expected = Box.from_corners(a, b).mask(SHAPE)
    assert np.array_equal(state.mask, expected) and state.zoom == 1
    assert state.prompts == [{"kind": "box", "positive": True, "corners_voxel_zyx": [[12, 20, 30], [22, 34, 44]]}]
    # the same corners as world points (x, y, z mm), in the other order: the same crop and mask
    world = [image.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in (b, a)]
    other = _session(stand_in, image)
    assert np.array_equal(other.add_box(*world, space="world").mask, expected)
    # a 2D box on axial slice 17
    flat = _session(stand_in, image).add_box((17, 20, 30), (17, 34, 44))
    assert flat.mask.sum() == 15 * 15 and flat.mask[17].sum() == 15 * 15


def test_a_box_bounds_its_lesion_until_a_positive_click_outside_it_overrides_it(stand_in, image):
    s = _session(stand_in, image)
    a, b = (12, 20, 30), (22, 34, 44)
    box = Box.from_corners(a, b).mask(SHAPE)
    s.add_box(a, b)
    near_face = s.add_click((17, 22, 37))          # the stand-in's ball (radius 5.5) spills 3 voxels over y = 20
    assert np.array_equal(near_face.mask, box)
    beyond = s.add_click((17, 12, 37))             # the reader says the box was drawn too tight
    assert beyond.mask[17, 12, 37] and beyond.mask[17, 17, 37] and (beyond.mask & ~box).sum() > 100
    assert np.array_equal(s.undo().mask, box)
    # a 2D box on axial slice 17 bounds that slice only: the ball around a click near its edge
    # is cut on slice 17 and whole on the slices above and below
    flat = _session(stand_in, image)
    flat.add_box((17, 20, 30), (17, 34, 44))
    mask = flat.add_click((17, 21, 37)).mask
    assert np.array_equal(mask[17], Box.from_corners((17, 20, 30), (17, 34, 44)).mask(SHAPE)[17])
    assert mask[16, 16:20, 37].all() and mask[18, 16:20, 37].all()


def test_a_box_larger_than_the_crop_is_zoomed_out_to_and_comes_out_whole(stand_in, image):
    s = _session(stand_in, image)
    a, b = (4, 6, 10), (35, 66, 60)                              # 32 x 61 x 51 voxels: about 2x the crop
    state = s.add_box(a, b)
    expected = Box.from_corners(a, b).mask(SHAPE)
    dice = 2 * (state.mask & expected).sum() / (state.mask.sum() + expected.sum())
    assert dice >= 0.95 and state.zoom > 1 and not state.truncated


def test_undo_after_a_box_restores_the_previous_mask_and_a_box_in_the_crop_costs_no_encoding(stand_in, image):
    s = _session(stand_in, image)
    first = s.add_click((20, 36, 36)).mask
    encodes = s.encode_calls
    boxed = s.add_box((16, 32, 32), (24, 42, 40))                  # inside the crop at the click
    assert s.encode_calls == encodes                               # a decode, not an encode
    assert boxed.mask.sum() > first.sum()
    assert np.array_equal(s.undo().mask, first)
    assert s.state().prompts == []
    # a second box replaces the first (one per lesion); undo brings the first back
    s.add_box((16, 32, 32), (24, 42, 40))
    second = s.add_box((18, 30, 30), (22, 44, 44)).mask
    assert np.array_equal(s.state().mask, second) and len(s.state().prompts) == 1
    s.undo()
    assert s.state().prompts[0]["corners_voxel_zyx"] == [[16, 32, 32], [24, 42, 40]]


def test_scribbles_and_lassos_add_and_remove_their_voxels_and_the_report_lists_every_prompt(stand_in, image):
    s = _session(stand_in, image)
    base = s.add_click((20, 36, 36)).mask
    stroke = s.add_scribble([(20, 36, 42), (20, 36, 50)])          # a positive stroke beyond the ball
    assert stroke.mask[20, 36, 42:51].all() and (stroke.mask & ~base).sum() == 9 - base[20, 36, 42:51].sum()
    cut = s.add_scribble([(20, 30, 36), (20, 42, 36)], positive=False)
    assert not cut.mask[20, 30:43, 36].any()
    lasso = s.add_lasso("z", 26, [(30, 30), (30, 40), (40, 40), (40, 30)])     # axial slice 26, (y, x)
    assert lasso.mask[26, 30:41, 30:41].all()
    gone = s.add_lasso(0, 20, [(34, 34), (34, 38), (38, 38), (38, 34)], positive=False)
    assert not gone.mask[20, 34:39, 34:39].any()
    kinds = [(p["kind"], p["positive"]) for p in s.report().to_dict()["prompts"]]
    assert kinds == [("scribble", True), ("scribble", False), ("lasso", True), ("lasso", False)]
    report = s.report().to_dict()
    assert report["prompts"][2] == {"kind": "lasso", "positive": True, "slice_axis": "z", "slice_index": 26,
                                    "polygon": [[30, 30], [30, 40], [40, 40], [40, 30]], "n_voxels": 121}
    assert len(report["clicks"]) == 1
    from nnunet_isrg.report.structured import validate_report

    validate_report(report)
    # a mask as scribble, and reset/undo cover every prompt
    mask = np.zeros(SHAPE, bool)
    mask[10, 10, 10:14] = True
    s.new_lesion()
    assert s.add_scribble(mask).mask[10, 10, 10:14].all()
    s.reset()
    assert not s.state().mask.any()
    assert s.undo().mask[10, 10, 10:14].all()


def test_prompt_errors_are_clear(stand_in, debug_model, image):
    s = _session(stand_in, image)
    with pytest.raises(SessionError, match="first prompt on a lesion must be positive"):
        s.add_scribble([(20, 36, 42), (20, 36, 50)], positive=False)
    with pytest.raises(SessionError, match=r"lasso slice 99 is outside axis z of the image \(0-39\)"):
        s.add_lasso("z", 99, [(1, 1), (1, 5), (5, 5)])
    with pytest.raises(SessionError, match="outside the image"):
        s.add_box((0, 0, 0), (50, 10, 10))
    with pytest.raises(SessionError, match=r"scribble mask must have the image's shape"):
        s.add_scribble(np.zeros((3, 3, 3), bool))
    # (y, x) pairs are not regrouped into 3D points, a two-letter axis is not an axis, errors name the point
    with pytest.raises(SessionError, match=r"scribble needs \(N, 3\) points .* shape \(3, 2\)"):
        s.add_scribble([(36, 42), (36, 50), (40, 50)])
    for axis in ("zy", "", True, 3):
        with pytest.raises(SessionError, match=r"slice_axis must be 0 or 'z' \(axial\)"):
            s.add_lasso(axis, 20, [(1, 1), (1, 5), (5, 5)])
    with pytest.raises(SessionError, match=r"^box corner at voxel"):
        s.add_box((12, 20, 30), (22, 34, 99))
    with pytest.raises(SessionError, match=r"^scribble point at voxel"):
        s.add_scribble([(20, 36, 42), (20, 36, 99)])
    # a model whose checkpoint predates boxes (trained with clicks only) refuses them by name
    old = load_trained_model(debug_model, folds=(0,))
    old.network = ClickSpheresStandIn(old.crop_size, old.schema)
    old.prompt_kinds = ("clicks",)
    s_old = _session(old, image)
    with pytest.raises(SessionError, match=r"trained with clicks only, not boxes \(its checkpoint predates"):
        s_old.add_box((12, 20, 30), (22, 34, 44))
    assert s_old.add_click((20, 36, 36)).mask.any()


def test_a_scribble_as_the_first_prompt_longer_than_the_crop_zooms_out_and_comes_out_whole(stand_in, image):
    """No click, no box: the scribble places the lesion (its centre) and the views zoom out until the
    whole scribble lies inside (62 voxels along y; the crop is 32)."""
    s = _session(stand_in, image)
    state = s.add_scribble([(20, 5, 36), (20, 66, 36)])
    assert state.zoom > 1 and not state.truncated
    assert state.mask[20, 5:67, 36].all()


def test_a_negative_box_keeps_two_corners_not_a_voxel_list_and_removes_its_voxels(stand_in, image):
    s = _session(stand_in, image)
    before = s.add_box((12, 20, 30), (22, 34, 44)).mask
    state = s.add_box((0, 0, 0), (39, 71, 40), positive=False)   # most of the image, the box's left part
    assert state.prompts[-1]["kind"] == "box" and state.prompts[-1]["n_voxels"] == 40 * 72 * 41
    assert s._lesions[s.current_lesion_id].strokes[-1].voxels.shape == (2, 3)
    assert not state.mask[:, :, :41].any() and (state.mask == (before & (np.arange(72) > 40))).all()


def test_strokes_on_thick_slices_cover_every_finer_slice_of_the_network_grid():
    """An original voxel of 4.5 mm in z holds three 1.5 mm voxels of the network's grid: a stroke on it
    marks all three (its centre alone would mark one); a 0.75 mm voxel marks the grid voxel holding it."""
    from nnunet_isrg.inference.region_preprocessing import RegionGeometry

    grid = RegionGeometry(start=(0, 0, 0), size=(10, 20, 20), shape=(30, 10, 10), transpose_forward=(0, 1, 2),
                          transpose_backward=(0, 1, 2), image_shape_zyx=(10, 20, 20),
                          original_spacing=(4.5, 0.75, 0.75), target_spacing=(1.5, 1.5, 1.5))
    # z voxel 4 spans the grid's [11.5, 14.5] -> grid voxels 12, 13, 14; in-plane voxels 6 and 7 both -> grid 3
    assert grid.original_voxels_to_region([[4, 6, 6], [4, 7, 7]]).tolist() == [[12, 3, 3], [13, 3, 3], [14, 3, 3]]
    assert grid.original_box_to_region([4, 6, 6], [5, 9, 9]).tolist() == [[12, 3, 3], [17, 4, 4]]


def test_boxes_on_thick_slices_reach_the_network_grid_whole_and_a_2d_box_stays_one_voxel_thick(stand_in):
    """4.5 mm slices on the debug plans' 1.5 mm grid: a 3D box covers the three grid slices of each of its
    slices; a 2D box (corners on one slice) gives the network one grid slice, as the trainer draws them."""
    img = sitk.GetImageFromArray(np.random.default_rng(1).normal(40, 20, (14, 72, 72)).astype(np.float32))
    img.SetSpacing((1.5, 1.5, 4.5))
    s = _session(stand_in, img)
    seen = []
    predict = s._predictor.predict
    s._predictor.predict = lambda *a, **kw: seen.append(np.asarray(kw["box"])) or predict(*a, **kw)
    grid = s._predictor.volume.grid
    axis_z = list(grid.transpose_forward).index(0)
    assert grid.scale[axis_z] == pytest.approx(1 / 3, rel=0.02)       # original voxels per grid voxel
    s.add_box((4, 20, 30), (6, 34, 44))
    lo_z, hi_z = seen[-1][:, axis_z]
    assert hi_z - lo_z + 1 == pytest.approx(9, abs=1)           # 3 slices x 3 grid voxels
    s.new_lesion()
    s.add_box((5, 20, 30), (5, 34, 44))                          # 2D, on axial slice 5
    lo_z, hi_z = seen[-1][:, axis_z]
    assert lo_z == hi_z == pytest.approx(grid.original_to_region(np.array([5.0, 27.0, 37.0]))[axis_z], abs=0.5)


def _image(shape, spacing_xyz, seed=2) -> sitk.Image:
    img = sitk.GetImageFromArray(np.random.default_rng(seed).normal(40, 20, shape).astype(np.float32))
    img.SetSpacing(spacing_xyz)
    return img


def test_a_box_bounds_its_lesion_in_the_image_s_own_voxels_on_thicker_or_thinner_slices(stand_in):
    """On 3 mm slices (two 1.5 mm grid slices each) a 2D box bounds the reader's slice and a positive
    click outside it on that slice overrides it; on 0.5 mm slices a 3D box three slices thick (one grid
    slice) bounds the lesion above and below it, not only on that grid slice."""
    thick = _session(stand_in, _image((16, 72, 72), (1.5, 1.5, 3.0)))
    box = Box.from_corners((8, 20, 30), (8, 34, 44))
    thick.add_box(box.lo, box.hi)
    mask = thick.add_click((8, 22, 37)).mask               # the ball spills over y = 20 on slice 8
    assert mask[8, 20:25, 37].all() and not (mask[8] & ~box.mask(mask.shape)[8]).any()
    assert mask[7, 18:20, 37].all()                        # the slices beside it are not bounded
    beyond = thick.add_click((8, 12, 37)).mask             # outside the box, on its slice
    assert beyond[8, 12, 37] and beyond[8, 17, 37]

    thin = _session(stand_in, _image((90, 72, 72), (1.5, 1.5, 0.5)))
    state = thin.add_box((44, 20, 30), (46, 34, 44))
    thin_mask = thin.add_click((45, 27, 37)).mask           # a ball of 8 mm radius: 16 slices each way
    assert thin_mask[44:47].any() and not thin_mask[:44].any() and not thin_mask[47:].any()
    assert state.mask[44:47].any() and not (state.mask & ~Box.from_corners((44, 20, 30), (46, 34, 44)).mask(
        state.mask.shape)).any()


def test_a_bounded_lesion_is_cut_only_at_the_view_faces_its_box_reaches(stand_in):
    """The crop sits at the box's centre (view y 15-46 of 64); a click near its y- face draws a ball
    (radius 5.5) across that face. Bounded by a box that stops inside the view, the lesion is not cut
    there; by a box of the same centre that goes on beyond both y faces (the stand-in fills the box),
    it is cut at both."""
    from nnunet_isrg.inference.lesion_predictor import LesionPredictor

    predictor = LesionPredictor(stand_in.network, stand_in.schema, torch.zeros(1, 64, 64, 64), zoom_factors=())
    for lo_y, hi_y, cut in ((17, 44, []), (8, 53, ["y-", "y+"])):
        box = ((20, lo_y, 20), (44, hi_y, 44))
        predictor.predict([], state=None, box=box)
        bounded = predictor.predict([((32, 18, 32), True)], box=box)
        assert bounded.field_of_view[1][0] in (14, 15)    # the ball (from y = 12.5) crosses the face
        assert bounded.truncated_faces == cut and not bounded.mask[:, :lo_y].any()
        unbounded = predictor.predict([((32, 18, 32), True)], box=box, bound_to_box=False)
        assert "y-" in unbounded.truncated_faces and unbounded.mask[:, 14:17].any()
