"""Lesions of any size: the one lesion predictor zooms out for a lesion larger than the crop, refines
along its border only, says when a lesion goes on beyond its largest view, and is the same algorithm
in the session, the validation and ``isrg predict``.

The network is :class:`stand_ins.BrightLesionStandIn` (it segments what is bright in the view it
sees), on images holding one bright analytic ellipsoid, so every expected mask is known. The crop is
16 voxels, which keeps a lesion five crops long small enough for a test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import load_script
from nnunet_isrg.attributes import DEFAULT_SCHEMA, validate_schema
from nnunet_isrg.clicks import first_click_deterministic
from nnunet_isrg.evaluation.fold_validation import protocol_with_network
from nnunet_isrg.evaluation.metrics import dice
from nnunet_isrg.inference.lesion_predictor import DEFAULT_MAX_TILES, LesionPredictor
from nnunet_isrg.inference.model_loading import LoadedModel
from nnunet_isrg.inference.session import ISRGSession
from nnunet_isrg.report.structured import validate_report
from scipy.ndimage import binary_erosion
from stand_ins import BrightLesionStandIn

CROP = 16
SPACING = 1.5                      # mm, the test plans' spacing
LESION_HU, BACKGROUND_HU = 300.0, -100.0
SCHEMA = validate_schema(DEFAULT_SCHEMA)


def ellipsoid(shape, centre, radii) -> np.ndarray:
    """Bool (Z, Y, X) ellipsoid of ``radii`` (voxels) around ``centre`` (voxel z, y, x)."""
    grids = np.indices(shape, dtype=np.float64)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1


def normalised_volume(lesion: np.ndarray) -> torch.Tensor:
    """(1, Z, Y, X) as CT normalisation leaves a bright lesion: 4 inside, -3.5 outside."""
    return torch.from_numpy(np.where(lesion, 4.0, -3.5).astype(np.float32))[None]


def predictor_for(lesion: np.ndarray, zoom_factors=(1.5, 2.0, 3.0, 4.0), max_tiles=DEFAULT_MAX_TILES):
    network = BrightLesionStandIn((CROP,) * 3, SCHEMA)
    return LesionPredictor(network, SCHEMA, normalised_volume(lesion), zoom_factors=zoom_factors,
                           max_tiles=max_tiles), network


# ------------------------------------------------------------------------------------ the predictor
@pytest.mark.parametrize("crops, radii, zoom_factors, zoom", [
    # 3 crops long: it fills the 3x view (touching its faces), so the 4x view is the one that holds it
    (3, (24, 17, 14), (1.5, 2.0, 3.0, 4.0), 4.0),
    # 5 crops long: beyond the default largest view (4x), whole when the zoom goes on to 6x
    (5, (40, 20, 17), (1.5, 2.0, 3.0, 4.0, 6.0), 6.0),
])
def test_lesion_larger_than_the_crop_comes_out_whole(crops, radii, zoom_factors, zoom):
    shape = (crops * CROP + 24, 56, 52)
    centre = ((shape[0] - 1) / 2, 27.5, 25.5)
    lesion = ellipsoid(shape, centre, radii)
    assert np.ptp(np.argwhere(lesion)[:, 0]) + 1 == crops * CROP       # as long as ``crops`` crops
    click = tuple(int(round(c)) for c in centre)
    # within the default budget of refinement crops (the rest of the border keeps the coarse mask) ...
    predictor, _ = predictor_for(lesion, zoom_factors)
    p = predictor.predict([(click, True)])
    assert dice(p.mask, lesion) >= 0.95 and 0 < len(p.tiles) <= DEFAULT_MAX_TILES
    assert p.zoom == zoom and not p.truncated and p.truncated_faces == []
    # ... and with every crop the border passes through refined
    predictor, _ = predictor_for(lesion, zoom_factors, max_tiles=None)
    p = predictor.predict([(click, True)])
    assert dice(p.mask, lesion) >= 0.99
    assert p.zoom == zoom and not p.truncated and p.truncated_faces == []
    assert p.bbox and all(lo <= a and b <= hi for (lo, hi), (a, b) in
                          zip(p.bbox, zip(np.argwhere(lesion).min(0), np.argwhere(lesion).max(0) + 1)))
    # the refinement crops all sit on the lesion's border, none further from it than one voxel of the
    # zoomed-out view (which is as exactly as the coarse mask can place the border)
    border = lesion & ~binary_erosion(lesion)
    reach = int(np.ceil(p.zoom))
    assert p.tiles
    for box in p.tiles:
        assert border[tuple(slice(max(a - reach, 0), b + reach) for a, b in box)].any(), box
        assert not lesion[tuple(slice(max(a, 0), b) for a, b in box)].all(), box   # not inside it either
    # ... so they are fewer than the crops that tile the field of view
    fov_cells = np.prod([np.ceil((b - a) / CROP) for a, b in p.field_of_view])
    assert len(p.tiles) < fov_cells


def test_lesion_beyond_the_largest_zoom_is_reported_truncated_with_its_faces():
    shape = (5 * CROP + 24, 56, 52)
    centre = ((shape[0] - 1) / 2, 27.5, 25.5)
    lesion = ellipsoid(shape, centre, (40, 20, 17))
    predictor, _ = predictor_for(lesion)                       # largest zoom 4x: 64 of its 80 voxels
    p = predictor.predict([(tuple(int(round(c)) for c in centre), True)])
    assert p.zoom == 4.0 and p.truncated and p.truncated_faces == ["z-", "z+"]
    # cut where it says, at the faces of the largest view, and whole inside it
    fov = np.zeros_like(lesion)
    fov[tuple(slice(max(a, 0), b) for a, b in p.field_of_view)] = True
    z = np.argwhere(p.mask)[:, 0]
    assert z.max() - z.min() + 1 == 4 * CROP and not (p.mask & ~fov).any()
    assert dice(p.mask, lesion & fov) >= 0.99 and dice(p.mask, lesion) < 0.99
    # a lesion cut by the IMAGE border is not truncated: there is nothing beyond to see
    at_border = ellipsoid(shape, (8, 27.5, 25.5), (30, 20, 17))
    predictor, _ = predictor_for(at_border)
    p = predictor.predict([((8, 27, 25), True)])
    assert not p.truncated and dice(p.mask, at_border) >= 0.95


def test_further_click_on_a_lesion_that_fits_one_crop_calls_the_encoder_zero_times():
    shape = (64, 56, 52)
    lesion = ellipsoid(shape, (30, 27, 25), (5, 4, 4))
    predictor, network = predictor_for(lesion)
    first = predictor.predict([((30, 27, 25), True)])
    assert first.zoom == 1.0 and first.n_encodes == 1 and network.encodes == 1 and not first.tiles
    clicks = [((30, 27, 25), True)]
    for point, positive in [((32, 27, 25), False), ((29, 28, 24), True), ((34, 27, 26), False)]:
        clicks.append((point, positive))
        p = predictor.predict(clicks)
        assert p.n_encodes == 0
    assert network.encodes == 1
    # a zoomed-out lesion keeps its views too: a further click decodes every one of them from the cache
    big = ellipsoid(shape, (30, 27, 25), (22, 17, 15))
    predictor, network = predictor_for(big)
    first = predictor.predict([((30, 27, 25), True)])
    assert first.zoom > 1 and first.n_encodes == network.encodes > 1
    assert predictor.predict([((30, 27, 25), True), ((31, 28, 25), False)]).n_encodes == 0


def test_clicks_after_a_box_keep_the_box_s_crop_its_embedding_and_its_mask_prompt():
    """The CVPR 2025 protocol's clicks after a box mark errors, often outside the lesion: the crop stays
    where the box placed it (no encoding, the previous mask as prompt); before, the first click moved
    the crop onto itself, re-encoded and dropped the box's mask prompt."""
    shape = (64, 56, 52)
    lesion = ellipsoid(shape, (30, 27, 25), (5, 4, 4))
    predictor, network = predictor_for(lesion)
    prompts = []
    decode = network.decode
    network.decode = lambda emb, pts, lab, mask_prompt=None, scribbles=None: (
        prompts.append(mask_prompt) or decode(emb, pts, lab, mask_prompt))
    box = ((25, 23, 21), (35, 31, 29))
    boxed = predictor.predict([], box=box)
    assert boxed.n_encodes == 1 and prompts[-1] is None
    negative = ((30, 21, 31), False)                      # outside the lesion, inside the box's crop
    after = predictor.predict([negative], box=box)
    assert after.n_encodes == 0 and network.encodes == 1
    assert after.field_of_view == boxed.field_of_view and prompts[-1] is not None
    assert np.array_equal(after.mask, boxed.mask)         # the stand-in segments what is bright: unchanged
    # a lesion's first click places the crop just as before, and a box inside that crop then costs no encoding
    predictor, network = predictor_for(lesion)
    first = predictor.predict([((31, 28, 26), True)])
    assert predictor.predict([((31, 28, 26), True)], box=box).n_encodes == 0
    assert predictor.predict([((31, 28, 26), True)], box=box).field_of_view == first.field_of_view


# ------------------------------------------------------------------------------------ one algorithm
@pytest.fixture(scope="module")
def plans_folder(tmp_path_factory) -> Path:
    """plans.json + dataset.json of a CT model at 1.5 mm isotropic (the network is the stand-in)."""
    folder = tmp_path_factory.mktemp("lesion_size_model")
    bench = load_script("benchmark_session")
    bench.write_model_folder(folder, "tiny", (SPACING,) * 3, bench.INTENSITY, (CROP,) * 3)
    return folder


def stand_in_model(folder: Path) -> LoadedModel:
    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    cm = plans.get_configuration("3d_fullres")
    return LoadedModel(folder, plans, cm, json.loads((folder / "dataset.json").read_text()), SCHEMA,
                       BrightLesionStandIn((CROP,) * 3, SCHEMA), [0], torch.device("cpu"), dict(cm.configuration["isrg"]))


def ct_image(lesion: np.ndarray, spacing_zyx=(SPACING,) * 3) -> sitk.Image:
    img = sitk.GetImageFromArray(np.where(lesion, LESION_HU, BACKGROUND_HU).astype(np.float32))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    img.SetOrigin((-20.0, 35.5, 7.0))
    return img


def test_session_validation_and_isrg_predict_give_the_same_mask(plans_folder, tmp_path, monkeypatch):
    from nnunet_isrg.inference import predict_cli
    import nnunet_isrg.inference.session as session_module

    shape = (3 * CROP + 24, 56, 52)
    lesion = ellipsoid(shape, (35.5, 27.5, 25.5), (24, 17, 14))
    image = ct_image(lesion)
    model = stand_in_model(plans_folder)
    click = first_click_deterministic(lesion, (SPACING,) * 3)

    session = ISRGSession(model)
    session.set_image(image)
    state = session.add_click(click)
    assert state.zoom > 1 and not state.truncated and dice(state.mask, lesion) >= 0.95

    # the validation path: nnU-Net's own preprocessing of the case, then protocol_with_network
    data, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        sitk.GetArrayFromImage(image)[None], None, {"spacing": [SPACING] * 3}, model.plans_manager,
        model.configuration_manager, model.dataset_json)
    result, _ = protocol_with_network(model.network, SCHEMA, torch.from_numpy(data), lesion, [SPACING] * 3, 1)
    assert result.clicks[0]["point"] == list(click)
    assert np.array_equal(result.final_mask, state.mask)

    # isrg predict, the stand-in in place of the model folder's network
    monkeypatch.setattr(session_module, "load_trained_model", lambda *a, **k: stand_in_model(plans_folder))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    (tmp_path / "clicks.json").write_text(json.dumps({"space": "voxel", "lesions": [
        {"clicks": [{"point": list(map(int, click)), "positive": True}]}]}))
    args = predict_cli.add_predict_arguments(__import__("argparse").ArgumentParser()).parse_args(
        ["-i", str(tmp_path / "case.nii.gz"), "-m", str(plans_folder), "-c", str(tmp_path / "clicks.json"),
         "-o", str(tmp_path / "out")])
    predict_cli.run_predict_from_args(args)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case" / "mask.nii.gz"))) == 1
    assert np.array_equal(written, state.mask)
    report = json.loads((tmp_path / "out" / "case" / "report.json").read_text())["lesions"][0]
    assert report["truncated"] is False and report["truncated_faces"] == []


def test_session_reports_a_truncated_lesion_with_its_faces(plans_folder):
    shape = (5 * CROP + 24, 56, 52)
    lesion = ellipsoid(shape, (51.5, 27.5, 25.5), (40, 20, 17))
    session = ISRGSession(stand_in_model(plans_folder))
    session.set_image(ct_image(lesion))
    state = session.add_click((52, 27, 25))
    assert state.truncated and state.truncated_faces == ["z-", "z+"] and state.zoom == 4.0
    report = session.report()
    d = report.to_dict()
    validate_report(d)
    assert d["truncated"] is True and d["truncated_faces"] == ["z-", "z+"]
    # undo and a further click keep the state of the click they belong to
    session.add_click((52, 27, 25), positive=True)
    assert session.undo().truncated_faces == ["z-", "z+"]


def test_session_zooms_out_on_a_resampled_image(plans_folder):
    """An image at 3 x 1 x 1 mm (separate-z resampling to the plans' 1.5 mm): the crops and the zoomed
    views come from the original voxels on nnU-Net's grid, the mask goes back to the original grid."""
    spacing = (3.0, 1.0, 1.0)
    shape = (40, 84, 78)
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    radii_mm = (40.0, 26.0, 22.0)      # 53 x 35 x 29 voxels at 1.5 mm: the 4x view (64) holds it
    centre = (19.5, 41.5, 38.5)
    lesion = sum(((g - c) * s / r) ** 2 for g, c, s, r in zip((zz, yy, xx), centre, spacing, radii_mm)) <= 1
    session = ISRGSession(stand_in_model(plans_folder))
    session.set_image(ct_image(lesion, spacing))
    state = session.add_click((20, 41, 38))
    assert state.zoom > 1 and not state.truncated
    assert dice(state.mask, lesion) >= 0.95
    n = session.encode_calls
    assert session.add_click((21, 43, 38), positive=False).mask.any() and session.encode_calls == n


def test_benchmark_pools_alternating_rounds_over_the_cases_in_one_crop_in_both_codes():
    """``--rounds``: the further clicks of every round on the cases that fit one crop before *and* after."""
    bench = load_script("benchmark_lesion_size")

    def case(name, first_encodes, further_s):
        return {"case": name, "clicks": [{"s": 1.0, "encodes": first_encodes, "zoom": 1.0}]
                + [{"s": t, "encodes": 0, "zoom": 1.0} for t in further_s]}

    runs = {"after": {"cases": [case("A", 1, [0.040, 0.042]), case("B", 1, [0.050]), case("C", 3, [0.9])],
                      "later_rounds": [[case("A", 1, [0.044, 0.046]), case("B", 1, [0.048]), case("C", 3, [0.9])]]},
            "before": {"cases": [case("A", 1, [0.030, 0.032]), case("B", 2, [0.7]), case("C", 1, [0.035])],
                       "later_rounds": [[case("A", 1, [0.034, 0.036]), case("B", 2, [0.7]), case("C", 1, [0.03])]]}}
    for run in runs.values():
        run["summary"] = {}
    bench.compare_on_common_cases(runs)
    # only A fits one crop in both codes; B (before) and C (after) needed more than one encoding
    assert runs["after"]["summary"]["one_crop_cases"] == ["A"]
    assert runs["after"]["summary"]["further_click_fits_crop_round_medians_s"] == pytest.approx([0.041, 0.045])
    assert runs["before"]["summary"]["further_click_fits_crop_round_medians_s"] == pytest.approx([0.031, 0.035])
    pooled = runs["after"]["summary"]["further_click_fits_crop_s"]
    assert pooled["n"] == 4 and pooled["median"] == pytest.approx(0.043)


def test_benchmark_clicks_only_copy_of_a_model_predicts_the_same_click_masks(debug_model, tmp_path):
    """The lesion-size benchmark's "before" code knows only the click model's parameters: it gets a copy
    without those of boxes and region maps, whose click outputs are the original model's exactly."""
    from nnunet_isrg.inference.model_loading import load_trained_model
    from nnunet_isrg.modeling.isrg_model import PROMPT_EXTENSION_PARAMETERS

    bench = load_script("benchmark_lesion_size")
    copy = bench.clicks_only_copy(debug_model, tmp_path / "clicks_only")
    saved = torch.load(copy / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert not set(PROMPT_EXTENSION_PARAMETERS) & set(saved["network_weights"])
    original, stripped = (load_trained_model(m, folds=(0,)).network for m in (debug_model, copy))
    image = torch.randn(1, 1, *original.crop_size, generator=torch.Generator().manual_seed(0))
    points, labels = torch.tensor([[[8.0, 9.0, 10.0], [4.0, 4.0, 4.0]]]), torch.tensor([[1, 0]])
    with torch.inference_mode():
        a, b = (net.decode(net.encode_image(image), points, labels) for net in (original, stripped))
    assert torch.equal(a["mask_logits"], b["mask_logits"])
    # the parameters removed are trained ones: a box does use them, so the copy answers a box differently
    box = torch.tensor([[[2.0, 2.0, 2.0], [12.0, 12.0, 12.0]]]), torch.tensor([[2, 3]])
    with torch.inference_mode():
        a, b = (net.decode(net.encode_image(image), *box) for net in (original, stripped))
    assert not torch.equal(a["mask_logits"], b["mask_logits"])


def test_a_view_the_box_does_not_reach_gets_no_box():
    """A box around the lower part of a lesion 3 crops long: the views and refinement tiles that the box
    reaches get its corners (labels 2, 3); those wholly beyond it get none (padding), instead of corners
    clamped onto their face, which would tell the network that a one-voxel slab is the box."""
    shape = (3 * CROP + 24, 56, 52)
    centre = ((shape[0] - 1) / 2, 27.5, 25.5)
    lesion = ellipsoid(shape, centre, (24, 17, 14))
    predictor, network = predictor_for(lesion, max_tiles=None)
    seen = []
    decode = network.decode

    def recording(embedding, points, labels, mask_prompt=None, scribbles=None):
        seen.append(labels[0].tolist())
        return decode(embedding, points, labels, mask_prompt)

    network.decode = recording
    views = []
    view_decode = predictor._decode
    predictor._decode = lambda view, *a: views.append(view) or view_decode(view, *a)
    lo, hi = np.argwhere(lesion).min(0), np.argwhere(lesion).max(0)
    box_hi_z = int(lo[0]) + CROP                                  # the box: the lesion's first crop in z
    p = predictor.predict([], box=((int(lo[0]), int(lo[1]), int(lo[2])), (box_hi_z, int(hi[1]), int(hi[2]))))
    assert p.tiles and len(seen) == len(views)
    for view, labels in zip(views, seen):   # the box spans the lesion in y and x: only z decides
        box_lo, box_hi = view.to_view(np.array([[lo[0], 0, 0], [box_hi_z, 0, 0]]))[:, 0]
        reaches = box_hi >= -0.5 and box_lo <= CROP - 0.5
        assert labels == ([2, 3] if reaches else [-1, -1]), (view.box, labels)
    assert any(labels == [-1, -1] for labels in seen) and any(labels == [2, 3] for labels in seen)
