"""ISRGSession, region preprocessing and model loading, on the debug model trained by nnUNetv2_train."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from nnunet_isrg.inference.model_loading import (ISRGEnsemble, LoadedModel, ModelFolderError, load_trained_model)
from nnunet_isrg.inference.region_preprocessing import (RegionGeometry, image_grid, preprocess_box,
                                                        resample_region_logits, zoom_box)
from nnunet_isrg.inference.session import ISRGSession, SessionError

from stand_ins import BrightLesionStandIn, ClickSpheresStandIn, with_network

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
STS_DICOM = REALDATA / "ibsi-sts-dicom" / "STS_002" / "CT" / "image"


@pytest.fixture(scope="module")
def loaded(debug_model) -> LoadedModel:
    torch.set_num_threads(1)
    return load_trained_model(debug_model, folds=(0,))


@pytest.fixture(scope="module")
def phantom_case(phantom_raw) -> tuple[sitk.Image, np.ndarray]:
    """The first phantom case with a lesion, with a non-trivial direction and origin (so world != voxel)."""
    for img_path in sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz")):
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_raw / "labelsTr" / (img_path.name[:-len("_0000.nii.gz")] + ".nii.gz"))))
        if (lab > 0).sum() > 20:
            img = sitk.ReadImage(str(img_path))
            img.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))  # 90 degree in-plane rotation
            img.SetOrigin((12.5, -30.0, 7.25))
            return img, lab > 0
    raise AssertionError("no phantom case with a lesion")


def _interior_point(mask: np.ndarray) -> tuple[int, int, int]:
    from scipy.ndimage import distance_transform_edt

    d = distance_transform_edt(mask)
    return tuple(int(v) for v in np.unravel_index(np.argmax(d), mask.shape))


# ----------------------------------------------------------------------------------------------- region
@pytest.mark.parametrize("spacing_zyx, exact", [((3.0, 1.5, 1.0), False),   # 3D spline (order 3)
                                                ((6.0, 1.5, 1.5), True),    # separate z: nearest along z
                                                ((1.5, 1.5, 1.5), True)])   # target spacing: no resampling
def test_preprocessed_boxes_equal_nnunet_default_preprocessor(loaded, phantom_case, spacing_zyx, exact):
    """Boxes of nnU-Net's grid computed on demand (inside the image, overhanging it, the whole grid) vs
    nnU-Net's DefaultPreprocessor on the whole image, voxel for voxel: exact where nothing or only z
    (nearest) is resampled; with a 3D cubic spline, within the ringing of the source box's faces and
    the clipping to the box's range (both confined to sharp edges)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    img, _ = phantom_case
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    pm, cm = loaded.plans_manager, loaded.configuration_manager
    whole, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
        arr[None], None, {"spacing": list(spacing_zyx)}, pm, cm, loaded.dataset_json)
    # nnU-Net's grid starts at the non-zero box it crops to; preprocess the same box here
    arr = arr[tuple(slice(a, b) for a, b in props["bbox_used_for_cropping"])]
    grid = image_grid(arr.shape, spacing_zyx, pm, cm)
    assert tuple(grid.shape) == whole.shape[1:]
    rng = float(np.ptp(whole))
    for box in ([[4, 20], [10, 30], [5, 25]], [[-6, 14], [20, 60], [-3, 9]], [[0, n] for n in grid.shape]):
        got = preprocess_box(arr, grid, box, pm, cm)[0]
        inside = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(box, grid.shape))
        local = tuple(slice(s.start - a, s.stop - a) for s, (a, _) in zip(inside, box))
        err = np.abs(got[local] - whole[0][inside]) / rng
        assert err.max() < (1e-5 if exact else 2e-3), (box, err.max())
        outside = np.ones(got.shape, bool)
        outside[local] = False
        assert not got[outside].any()                        # 0 beyond the image, nnU-Net's padding
    # a zoomed-out view where the plans do not resample is the preprocessed box averaged down
    if tuple(grid.size) == tuple(grid.shape):
        box = [[-8, 24], [2, 34], [0, 32]]
        zoomed = zoom_box(arr, grid, box, (16, 16, 16), pm, cm)
        full = torch.from_numpy(preprocess_box(arr, grid, box, pm, cm))
        np.testing.assert_allclose(zoomed, F.adaptive_avg_pool3d(full[None], (16, 16, 16))[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("orig, target, shape, size", [
    ((3.0, 1.5, 1.5), (1.5, 1.5, 1.5), (40, 36, 30), (20, 36, 30)),    # upsampled z
    ((1.0, 0.8, 0.7), (1.5, 1.5, 1.5), (30, 28, 26), (45, 52, 56)),    # downsampled, non-integer ratios
    ((5.0, 1.5, 1.5), (1.5, 1.5, 1.5), (40, 20, 20), (12, 20, 20)),    # anisotropic: separate z, nearest
])
def test_paste_back_equals_nnunet_export_of_whole_region(loaded, orig, target, shape, size):
    """The fast path (only around positive voxels) gives nnU-Net's export resampling of the whole region."""
    from scipy.ndimage import gaussian_filter

    g = RegionGeometry((3, 5, 7), size, shape, (0, 1, 2), (0, 1, 2), (100, 100, 100), orig, target)
    logits = gaussian_filter(np.random.default_rng(0).normal(size=(24, 24, 24)), 3) * 40 - 1
    bbox = [[6, 30], [4, 28], [-2, 22]]
    (fs, fv) = resample_region_logits(g, logits, bbox, loaded.configuration_manager)
    (gs, gv) = resample_region_logits(g, logits, bbox, loaded.configuration_manager, force_full=True)
    assert tuple(s.stop - s.start for s in gs) == size   # the oracle went through nnU-Net's function
    inner = gv[tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(fs, gs))]
    np.testing.assert_allclose(fv, inner, atol=1e-4)
    assert (gv > 0).sum() == (inner > 0).sum() > 0       # nothing positive outside the fast box


# ----------------------------------------------------------------------------------------------- model loading
def test_ensemble_averages_folds(loaded, debug_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(debug_model, folder, ignore=shutil.ignore_patterns("validation", "*.png", "*.txt"))
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    with torch.no_grad():
        ckpt["network_weights"] = {k: (v * 1.1 if v.is_floating_point() else v) for k, v in ckpt["network_weights"].items()}
    (folder / "fold_1").mkdir(exist_ok=True)
    torch.save(ckpt, folder / "fold_1" / "checkpoint_final.pth")
    ens = load_trained_model(folder, folds="all available")
    assert ens.folds == [0, 1] and isinstance(ens.network, ISRGEnsemble)
    one = load_trained_model(folder, folds=(1,))
    x = torch.randn(1, 1, *loaded.crop_size)
    pts, lab = torch.tensor([[[16.0, 16.0, 16.0]]]), torch.tensor([[1]])
    with torch.no_grad():
        outs = [m.network.decode(m.network.encode_image(x), pts, lab) for m in (loaded, one)]
        e = ens.network.decode(ens.network.encode_image(x), pts, lab)
    torch.testing.assert_close(e["mask_logits"], (outs[0]["mask_logits"] + outs[1]["mask_logits"]) / 2)
    for name in loaded.schema:
        p = (torch.softmax(outs[0]["attribute_logits"][name], -1) + torch.softmax(outs[1]["attribute_logits"][name], -1)) / 2
        torch.testing.assert_close(torch.softmax(e["attribute_logits"][name], -1), p)


def test_missing_model_files_are_named(debug_model, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_trained_model(tmp_path / "nope")
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(ModelFolderError, match=r"plans\.json is missing"):
        load_trained_model(folder)
    shutil.copy(debug_model / "plans.json", folder / "plans.json")
    with pytest.raises(ModelFolderError, match=r"dataset\.json is missing"):
        ISRGSession(folder)
    shutil.copy(debug_model / "dataset.json", folder / "dataset.json")
    with pytest.raises(ModelFolderError, match=r"fold_3/checkpoint_final\.pth is missing"):
        load_trained_model(folder, folds=(3,))
    with pytest.raises(ModelFolderError, match="no fold_X/checkpoint_final.pth"):
        load_trained_model(folder, folds="all available")


# ----------------------------------------------------------------------------------------------- session
@pytest.mark.parametrize("network", ["debug", "stand-in"])
def test_voxel_and_world_clicks_undo_and_lesions_do_not_overlap(loaded, phantom_case, network):
    """With the debug model (real network; barely trained, so its masks may be anything, even empty) and
    with a click-driven stand-in whose masks are known to be non-empty and to overlap."""
    img, lesion = phantom_case
    if network == "stand-in":
        loaded = with_network(loaded, ClickSpheresStandIn(loaded.crop_size, loaded.schema))
    p1 = _interior_point(lesion)
    s = ISRGSession(loaded)
    s.set_image(img)
    first = s.add_click(p1)
    assert first.mask.shape == lesion.shape and first.mask.dtype == bool
    if network == "stand-in":   # a ball of radius 5.5 voxels (the plans' spacing is the image's) around p1
        zz, yy, xx = np.indices(lesion.shape)
        ball = (zz - p1[0]) ** 2 + (yy - p1[1]) ** 2 + (xx - p1[2]) ** 2 <= 5.5 ** 2
        assert np.array_equal(first.mask, ball)

    # the same click in world coordinates (x, y, z mm) gives the same mask, in a fresh session
    world = img.TransformIndexToPhysicalPoint([int(v) for v in p1[::-1]])
    s_world = ISRGSession(loaded)
    s_world.set_image(img)
    assert np.array_equal(s_world.add_click(world, space="world").mask, first.mask)

    # a correction changes the mask; undo restores the previous one exactly (and its report)
    neg = tuple(int(v) for v in np.argwhere(first.mask & ~lesion)[0]) if (first.mask & ~lesion).any() \
        else tuple(min(v + 3, n - 1) for v, n in zip(p1, lesion.shape))
    second = s.add_click(neg, positive=False)
    assert len(second.clicks) == 2
    if network == "stand-in":
        assert second.mask.sum() < first.mask.sum()
    undone = s.undo()
    assert np.array_equal(undone.mask, first.mask) and len(undone.clicks) == 1
    assert undone.attribute_probs == first.attribute_probs

    # a second lesion never takes voxels of the first: its mask alone (fresh session) minus lesion 1
    p2 = tuple(int(v) for v in np.argwhere(~first.mask)[len(np.argwhere(~first.mask)) // 2])
    if network == "stand-in":
        p2 = (p1[0] + 4, p1[1], p1[2])   # its ball overlaps lesion 1's
    alone = ISRGSession(loaded)
    alone.set_image(img)
    alone_mask = alone.add_click(p2).mask
    lid = s.new_lesion()
    assert lid == 2
    two = s.add_click(p2)
    assert np.array_equal(two.mask, alone_mask & ~first.mask)
    if network == "stand-in":
        assert (alone_mask & first.mask).any() and two.mask.any()
    labels = s.label_map()
    assert np.array_equal(labels == 1, first.mask) and np.array_equal(labels == 2, two.mask)
    assert s.lesion_ids == [1, 2]

    if not first.mask.any():
        return
    # reports: one per lesion, reader override kept apart from the model's prediction
    s.set_attribute(1, "density", "hyperdense")
    rep = s.report(1)
    assert rep.attributes["density"].source == "reader" and rep.attributes["density"].value == "Hyperdense"
    assert rep.attributes["density"].model is not None
    assert [r.label for r in s.reports()] == [1] + ([2] if two.mask.any() else [])
    vol = first.mask.sum() * np.prod(img.GetSpacing()) / 1000.0
    assert rep.measurements["volume_ml"] == pytest.approx(vol, rel=1e-6)


def test_embedding_is_computed_once_for_repeated_clicks(loaded, phantom_case):
    img, lesion = phantom_case
    p = _interior_point(lesion)
    # zooming off: the debug model's mask may reach a crop face, and this test is about the crop alone
    # (a lesion larger than the crop: test_lesion_larger_than_crop_is_zoomed_out, tests/test_lesion_size.py)
    s = ISRGSession(loaded, zoom_factors=())
    s.set_image(img)
    s.add_click(p)
    assert s.encode_calls == 1
    for d in (1, 2, -1):
        s.add_click(tuple(int(np.clip(v + d, 0, n - 1)) for v, n in zip(p, lesion.shape)), positive=d > 0)
    assert s.encode_calls == 1
    # a new lesion elsewhere needs its own crop, once
    far = tuple(int(n - 1 - v) for v, n in zip(p, lesion.shape))
    s.new_lesion()
    s.add_click(far)
    s.add_click(tuple(max(v - 1, 0) for v in far))
    assert s.encode_calls == 2


def test_lesion_larger_than_crop_is_zoomed_out(loaded):
    crop = loaded.crop_size[0]
    shape = (3 * crop, 40, 40)
    zz, yy, xx = np.indices(shape)
    tube = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 36) & (zz >= 3) & (zz < shape[0] - 3)   # longer than 2 crops
    arr = np.where(tube, 300.0, -500.0).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 1.5))   # the plans' spacing: grid voxels = image voxels
    props = loaded.plans_manager.foreground_intensity_properties_per_channel["0"]
    thr = (0.0 - props["mean"]) / props["std"]
    stand_in = LoadedModel(loaded.folder, loaded.plans_manager, loaded.configuration_manager, loaded.dataset_json,
                           loaded.schema, BrightLesionStandIn(loaded.crop_size, loaded.schema, thr), [0],
                           torch.device("cpu"))
    s = ISRGSession(stand_in, zoom_factors=())
    s.set_image(img)
    cut = s.add_click((6, 20, 20))
    assert cut.mask.any() and np.argwhere(cut.mask)[:, 0].max() < crop    # without zooming: cut at the crop
    assert cut.truncated and cut.truncated_faces == ["z+"]                # ... and it says so
    s = ISRGSession(stand_in)
    s.set_image(img)
    state = s.add_click((6, 20, 20))
    assert np.array_equal(state.mask, tube) and state.zoom > 1 and not state.truncated   # the whole tube
    n = s.encode_calls
    s.add_click((8, 20, 20))                                      # further clicks reuse the cached views
    assert s.encode_calls == n
    # a second lesion clicked on the same tube gets nothing: every voxel is already lesion 1's
    assert s.new_lesion() == 2
    assert not s.add_click((shape[0] - 10, 20, 20)).mask.any()
    assert np.array_equal(s.label_map(), tube.astype(np.uint16))
    # clicked in the middle, the tube leaves the crop through both faces: zoomed out all the same
    s = ISRGSession(stand_in)
    s.set_image(img)
    assert np.array_equal(s.add_click((shape[0] // 2, 20, 20)).mask, tube)


@pytest.mark.skipif(not STS_DICOM.is_dir(), reason="real DICOM data not available")
def test_dicom_series_input(loaded):
    s = ISRGSession(loaded)
    s.set_image(STS_DICOM)
    assert s.image_shape == (48, 143, 161) and s.dicom_datasets is not None
    # world position of slice 10's first voxel is that slice's ImagePositionPatient
    ipp = np.asarray(s.dicom_datasets[10].ImagePositionPatient, float)
    np.testing.assert_allclose(s.to_world((10, 0, 0)), ipp, atol=1e-3)
    state = s.add_click(tuple(ipp + np.array([80 * 0.976562, 70 * 0.976562, 0])), space="world")
    assert state.mask.shape == (48, 143, 161)
    assert state.clicks[0].voxel_zyx == pytest.approx((10, 70, 80), abs=1e-3)


def test_errors_are_clear(loaded, phantom_case, tmp_path):
    img, lesion = phantom_case
    s = ISRGSession(loaded)
    with pytest.raises(SessionError, match="call set_image"):
        s.add_click((1, 1, 1))
    with pytest.raises(SessionError, match="no image"):
        s.label_map()
    s.set_image(img)
    with pytest.raises(SessionError, match=r"outside the image .* shape \(z, y, x\)"):
        s.add_click((lesion.shape[0] + 5, 1, 1))
    with pytest.raises(SessionError, match="outside the image"):
        s.add_click((1e4, 0, 0), space="world")
    with pytest.raises(SessionError, match="unknown coordinate space 'pixel'"):
        s.add_click((1, 1, 1), space="pixel")
    with pytest.raises(SessionError, match="first click on a lesion must be positive"):
        s.add_click((1, 1, 1), positive=False)
    with pytest.raises(SessionError, match="nothing to undo"):
        s.undo()
    with pytest.raises(SessionError, match="no mask yet"):
        s.report()
    s.add_click(_interior_point(lesion))
    with pytest.raises(SessionError, match=r"unknown value 'Very dense'; allowed values: \['Hypodense'"):
        s.set_attribute(1, "density", "Very dense")
    with pytest.raises(SessionError, match="unknown attribute 'colour'"):
        s.set_attribute(1, "colour", "red")
    with pytest.raises(SessionError, match="no lesion 7"):
        s.set_attribute(7, "density", "Hypodense")
    # images the model cannot take
    nan = sitk.GetArrayFromImage(img).astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(SessionError, match="NaN"):
        s.set_image(sitk.GetImageFromArray(nan))
    with pytest.raises(SessionError, match="3D CT"):
        s.set_image(sitk.Image(8, 8, sitk.sitkFloat32))
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(SessionError, match="broken.nii.gz: not a readable image"):
        s.set_image(bad)
    with pytest.raises(SessionError, match="no such file"):
        s.set_image(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_in_any_file_format_are_refused_naming_the_file(loaded, tmp_path, suffix, value):
    """The outside tester's NIfTI with NaN voxels arrived as 0 HU while the same image as .mha was
    refused: every format is read as written and refused the same way, with the file and the count."""
    arr = np.full((6, 8, 8), 40.0, dtype=np.float32)
    arr[2, 3, 4] = arr[4, 1, 1] = value
    path = tmp_path / f"bad_ct{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    # the file holds them (SimpleITK reads a NIfTI's as 0, hence nibabel there)
    written = np.asanyarray(nibabel.load(str(path)).dataobj) if "nii" in suffix else \
        sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert int((~np.isfinite(written)).sum()) == 2
    s = ISRGSession(loaded)
    with pytest.raises(SessionError, match=rf"bad_ct{suffix.replace('.', '[.]')}: 2 voxel\(s\) are NaN or infinite"):
        s.set_image(path)


def test_a_checkpoint_from_before_boxes_loads_and_takes_clicks(debug_model, loaded, phantom_case, tmp_path):
    """Its weights lack the parameters added for boxes and region maps: it loads, states that it was
    trained with clicks only, and answers clicks exactly as the same weights do in the current network.
    A checkpoint missing any other parameter is refused, naming it."""
    from nnunet_isrg.modeling.isrg_model import PROMPT_EXTENSION_PARAMETERS

    saved = torch.load(debug_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    old = tmp_path / "old_model"
    (old / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(debug_model / name, old / name)
    saved["network_weights"] = {k: v for k, v in saved["network_weights"].items()
                                if k not in PROMPT_EXTENSION_PARAMETERS}
    saved.pop("isrg_prompt_kinds", None)
    torch.save(saved, old / "fold_0" / "checkpoint_final.pth")
    model = load_trained_model(old, folds=(0,))
    assert model.prompt_kinds == ("clicks",)
    img, lesion = phantom_case
    p = _interior_point(lesion)
    masks = []
    for m in (loaded, model):
        s = ISRGSession(m)
        s.set_image(img)
        s.add_click(p)
        masks.append(s.add_click(tuple(min(v + 2, n - 1) for v, n in zip(p, lesion.shape)), positive=False).mask)
    assert np.array_equal(masks[0], masks[1])

    del saved["network_weights"]["mask_head.click_prior.weight"]
    torch.save(saved, old / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelFolderError, match=r"weights do not fit .* missing \['mask_head.click_prior.weight'\]"):
        load_trained_model(old, folds=(0,))
