"""Tests of the ISRG network (nnunet_isrg/modeling): shapes, gradients, K-means, refinement, split API."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_isrg.attributes import DEFAULT_SCHEMA
from nnunet_isrg.modeling.build import PRESETS, build_isrg_model, build_isrg_model_from_config
from nnunet_isrg.modeling.image_embedding import ImageEmbedding
from nnunet_isrg.modeling.point_refinement import PointRefinement, farthest_point_init, kmeans

torch.set_num_threads(1)

# A much smaller tiny: same architecture, small widths, so each test takes well under a second.
SMALL = dict(embed_dim=48, depth=2, num_heads=4, prompt_embed_dim=32, decoder_heads=2, decoder_mlp_dim=64,
             iou_head_hidden=32, synergy_dim=16)
CONFIGS = {"vanilla": (False, False), "refine": (True, False), "synergy": (False, True), "full": (True, True)}


def small_model(crop=32, refine=True, synergy=True, schema=None, seed=0, **kw):
    torch.manual_seed(seed)
    return build_isrg_model("tiny", crop_size=crop, schema=schema, point_refinement=refine,
                            feature_synergy=synergy, **{**SMALL, **kw})


def clicks(batch=2):
    pts = torch.tensor([[[10.0, 12.0, 14.0], [20.0, 5.0, 30.0], [0.0, 0.0, 0.0]],
                        [[31.0, 31.0, 31.0], [15.5, 16.2, 3.7], [8.0, 8.0, 8.0]]])[:batch]
    lab = torch.tensor([[1, 0, -1], [1, 1, 0]])[:batch]
    return pts, lab


def assert_outputs_close(a, b, atol=1e-5):
    for key in ("mask_logits", "low_res_logits", "iou_pred"):
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4)
    assert list(a["attribute_logits"]) == list(b["attribute_logits"])
    for k in a["attribute_logits"]:
        torch.testing.assert_close(a["attribute_logits"][k], b["attribute_logits"][k], atol=atol, rtol=1e-4)


# --- shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("crop,batch", [((32, 32, 32), 1), ((32, 48, 40), 2), ((64, 64, 64), 2)])
def test_output_shapes(crop, batch):
    schema = OrderedDict(a=["x", "y"], b=["1", "2", "3", "4", "5"], c=["p", "q", "r"])
    model = small_model(crop, schema=schema).eval()
    assert model.crop_size == crop
    grid = tuple(c // 8 for c in crop)
    assert model.grid_size == grid and model.low_res_size == tuple(4 * g for g in grid)
    assert model.attribute_names == ["a", "b", "c"] and dict(model.num_classes) == {"a": 2, "b": 5, "c": 3}
    pts, lab = clicks(batch)
    x = torch.randn(batch, 1, *crop)
    with torch.no_grad():
        out = model(x, pts, lab)
        out2 = model(x, pts, lab, mask_prompt=out["low_res_logits"])
    for o in (out, out2):
        assert o["mask_logits"].shape == (batch, 1, *crop)
        assert o["low_res_logits"].shape == (batch, 1, *model.low_res_size)
        assert o["iou_pred"].shape == (batch, 1)
        assert ((o["iou_pred"] >= 0) & (o["iou_pred"] <= 1)).all()
        assert list(o["attribute_logits"]) == ["a", "b", "c"]
        assert [v.shape for v in o["attribute_logits"].values()] == [(batch, 2), (batch, 5), (batch, 3)]
        assert torch.isfinite(o["mask_logits"]).all()
    # the mask prompt is used: feeding back the previous logits changes the result
    assert not torch.allclose(out["mask_logits"], out2["mask_logits"])


def test_mask_logits_are_the_upsampled_low_res_logits_without_the_subvoxel_refiner():
    model = small_model(32, subvoxel_refiner_chans=0).eval()
    assert model.subvoxel_refiner is None
    pts, lab = clicks(1)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32, 32), pts, lab)
    ref = F.interpolate(out["low_res_logits"], size=(32, 32, 32), mode="trilinear", align_corners=False)
    torch.testing.assert_close(out["mask_logits"], ref)
    refined = small_model(32).eval()
    with torch.no_grad():  # with its output layer zeroed the refiner adds nothing to the upsampled logits
        refined.subvoxel_refiner.prompt_net[-1].weight.zero_()
        out = refined(torch.randn(1, 1, 32, 32, 32), pts, lab)
    ref = F.interpolate(out["low_res_logits"], size=(32, 32, 32), mode="trilinear", align_corners=False)
    torch.testing.assert_close(out["mask_logits"], ref)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (1, 1, 0)])
def test_conv3d_equals_torch_conv3d_for_a_single_crop(kernel, stride, padding):
    """The oneDNN route for a batch of one gives torch's own Conv3d result and gradients."""
    from nnunet_isrg.modeling.common import Conv3d

    torch.manual_seed(0)
    ours, ref = Conv3d(4, 6, kernel, stride=stride, padding=padding), torch.nn.Conv3d(4, 6, kernel, stride=stride,
                                                                                      padding=padding)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 4, 12, 12, 12, requires_grad=True)
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref, atol=1e-5, rtol=1e-4)
    g_ours = torch.autograd.grad(y_ours.square().sum(), (x, ours.weight, ours.bias))
    g_ref = torch.autograd.grad(y_ref.square().sum(), (x, ref.weight, ref.bias))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def test_subvoxel_refiner_draws_boundaries_finer_than_the_low_res_grid():
    """Upsampled stride-2 logits cannot draw a one-voxel checkerboard; the refiner learns it from the crop."""
    from nnunet_isrg.modeling.subvoxel_refiner import SubvoxelRefiner

    torch.manual_seed(0)
    z, y, x = np.indices((16, 16, 16))
    target = torch.from_numpy(((z + y + x) % 2 == 0).astype(np.float32))[None, None]
    image = 2 * target - 1 + 0.1 * torch.randn_like(target)       # the pattern is visible in the crop
    coarse = torch.zeros(1, 1, 8, 8, 8)                             # the low-res head cannot resolve it
    refiner = SubvoxelRefiner(stride=2, feature_chans=0, hidden=8)
    opt = torch.optim.Adam(refiner.parameters(), 1e-2)

    def predict():
        return refiner(coarse, refiner.image_features(image, None), torch.zeros(1, 4, 8, 8, 8))

    for _ in range(150):
        loss = F.binary_cross_entropy_with_logits(predict(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = predict() > 0
    upsampled = F.interpolate(coarse, size=(16, 16, 16), mode="trilinear", align_corners=False) > 0
    assert (pred == target.bool()).float().mean() > 0.99
    assert (upsampled == target.bool()).float().mean() == 0.5


def test_crop_not_multiple_of_patch_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        small_model((32, 36, 32))


def test_bad_inputs_are_clear_errors():
    model = small_model(32).eval()
    pts, lab = clicks(1)
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32, 24), pts, lab)
    with pytest.raises(ValueError, match="mask_prompt must have shape"):
        model(torch.randn(1, 1, 32, 32, 32), pts, lab, mask_prompt=torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"labels must be 1 .* or 2 and 3 \(a box's lower and higher corner\)"):
        model(torch.randn(1, 1, 32, 32, 32), pts, torch.tensor([[1, 4, 0]]))
    with pytest.raises(ValueError, match=r"scribbles must have shape \(1, 2, 32, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32, 32), pts, lab, scribbles=torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="labels"):
        model(torch.randn(1, 1, 32, 32, 32), pts, None)
    with pytest.raises(ValueError, match="finite"):
        model(torch.randn(1, 1, 32, 32, 32), torch.full((1, 1, 3), float("nan")), torch.tensor([[1]]))


def test_no_clicks_raises_and_points_to_isrg_predict():
    model = small_model(32).eval()
    with pytest.raises(RuntimeError, match="isrg predict"):
        model(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(RuntimeError, match="isrg predict"):
        model.decode(model.encode_image(torch.randn(1, 1, 32, 32, 32)), None, None)


# --- gradients and ablation switches --------------------------------------------------------------

def _loss(out, target):
    prob = torch.sigmoid(out["mask_logits"])
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    ce = sum(F.cross_entropy(v, torch.zeros(v.shape[0], dtype=torch.long)) for v in out["attribute_logits"].values())
    iou_target = torch.full_like(out["iou_pred"], 0.7)
    return dice + ce + F.mse_loss(out["iou_pred"], iou_target)


def _sphere(crop, centre, r):
    zz, yy, xx = np.meshgrid(*[np.arange(c) for c in crop], indexing="ij")
    m = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r ** 2
    return torch.from_numpy(m.astype(np.float32))[None, None]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_parameter_gets_a_gradient_and_disabled_modules_are_absent(name):
    refine, synergy = CONFIGS[name]
    model = small_model(32, refine=refine, synergy=synergy).train()
    names = [n for n, _ in model.named_parameters()]
    assert (model.point_refiner is not None) == refine
    assert (model.synergy is not None) == synergy
    assert any(n.startswith("synergy.") for n in names) == synergy
    assert not any("point_refiner" in n for n in names)  # refinement is parameter-free
    if refine:
        assert sum(p.numel() for p in model.point_refiner.parameters()) == 0

    pts, lab = clicks(2)
    x = torch.randn(2, 1, 32, 32, 32)
    target = torch.cat([_sphere((32,) * 3, (10, 12, 14), 6), _sphere((32,) * 3, (20, 20, 20), 8)])
    mask_prompt = torch.randn(2, 1, *model.low_res_size)
    # every kind of prompt: clicks, a box (corner labels 2 and 3), positive and negative scribbles
    box = torch.tensor([[[4.0, 6.0, 8.0], [16.0, 18.0, 20.0]]] * 2)
    scribbles = torch.zeros(2, 2, 32, 32, 32)
    scribbles[:, 0, 10, 12, 8:20] = 1
    scribbles[:, 1, 25, 5:15, 5] = 1
    _loss(model(x, torch.cat([pts, box], 1), torch.cat([lab, torch.tensor([[2, 3]] * 2)], 1), mask_prompt,
                scribbles), target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without a (non-zero) gradient in {name}: {missing}"

    # Without a mask prompt (first round) every parameter must still be part of the graph (DDP).
    model.zero_grad(set_to_none=True)
    _loss(model(x, pts, lab, None), target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph without mask prompt in {name}: {missing}"


# --- K-means and point refinement -----------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_kmeans_matches_sklearn(seed):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    m, p, c, k = 6, 27, 8, 3
    centres = rng.normal(0, 3, size=(m, k, c))
    x = centres[np.arange(m)[:, None], rng.integers(0, k, size=(m, p))] + rng.normal(0, 1.5, size=(m, p, c))
    valid = np.ones((m, p), bool)
    valid[1, :9] = False          # a window clipped at a border: only valid points take part
    valid[2, ::2] = False
    xt, vt = torch.from_numpy(x), torch.from_numpy(valid)
    first = torch.full((m,), p // 2)
    init = farthest_point_init(xt, k, first, vt)
    res = kmeans(xt, init, vt, max_iter=300)
    for i in range(m):
        xi = x[i][valid[i]]
        km = KMeans(n_clusters=k, init=init[i].numpy(), n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(xi)
        ours = res.labels[i][vt[i]].numpy()
        assert (res.labels[i][~vt[i]] == -1).all()
        same_partition = np.array_equal(ours, km.labels_)
        rel = abs(float(res.inertia[i]) - km.inertia_) / km.inertia_
        assert same_partition or rel < 1e-3, (i, rel)
        assert rel < 1e-3


def test_farthest_point_init_is_maxmin():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 4.0], [5.0, 5.0]]])
    init = farthest_point_init(x, 3, torch.tensor([0]))
    # from point 0 the farthest is (10, 0); then the largest squared distance to the nearer of the
    # two: (0, 4) -> min(16, 116) = 16, (5, 5) -> min(50, 50) = 50, (1, 0) -> 1: so (5, 5)
    assert init[0].tolist() == [[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]


def _oracle_refine(emb, click, patch, w, k):
    """Independent numpy/sklearn version of eq. 1-2 for one click: window cells, K-means, nearest."""
    from sklearn.cluster import KMeans

    c, *grid = emb.shape
    cell = [min(max(int(np.floor((v + 0.5) / patch)), 0), g - 1) for v, g in zip(click, grid)]
    r = w // 2
    cells, feats = [], []
    for dz in range(-r, r + 1):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                q = (cell[0] + dz, cell[1] + dy, cell[2] + dx)
                if all(0 <= a < g for a, g in zip(q, grid)):
                    cells.append(q)
                    feats.append(emb[:, q[0], q[1], q[2]])
    feats = np.stack(feats).astype(np.float64)
    # max-min initialisation from the clicked cell
    chosen = [cells.index(tuple(cell))]
    dmin = ((feats - feats[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        chosen.append(int(np.argmax(dmin)))
        dmin = np.minimum(dmin, ((feats - feats[chosen[-1]]) ** 2).sum(1))
    km = KMeans(n_clusters=k, init=feats[chosen], n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(feats)
    # Per cluster (in init order) the member nearest the centroid; near-ties (a two-member cluster
    # has both at the same distance from its midpoint) go to the cell nearest the click.
    out = []
    for i in range(k):
        members = np.flatnonzero(km.labels_ == i)
        dist = ((feats[members] - km.cluster_centers_[i]) ** 2).sum(1)
        tied = [cells[j] for j in members[dist <= dist.min() * (1 + PointRefinement.TIE_RTOL) + 1e-12]]
        out.append(min(tied, key=lambda q: (sum((a - b) ** 2 for a, b in zip(q, cell)), cells.index(q))))
    return out, cell


def test_refined_points_on_grid_inside_window_with_click_label():
    torch.manual_seed(0)
    w, k, patch = 3, 3, 8
    emb = torch.randn(2, 16, 4, 5, 6, dtype=torch.float64)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [17.3, 20.9, 30.1], [31.0, 39.0, 47.0]],
                        [[12.0, 12.0, 12.0], [3.0, 35.0, 44.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    lab = torch.tensor([[1, 0, 1], [0, 1, -1]])
    ref = PointRefinement(w, k, max_iter=300)
    rp, rl = ref(emb, pts, lab, (patch, patch, patch))
    assert rp.shape == (2, 3 * k, 3) and rl.shape == (2, 3 * k)
    assert torch.equal(rl, lab.repeat_interleave(k, dim=1))
    cells = (rp + 0.5) / patch - 0.5
    assert torch.allclose(cells, cells.round(), atol=1e-9), "refined points must be grid cell centres"
    for b in range(2):
        for n in range(3):
            if lab[b, n] < 0:
                continue
            expected, click_cell = _oracle_refine(emb[b].numpy(), pts[b, n].tolist(), patch, w, k)
            got = [tuple(int(v) for v in c) for c in cells[b, n * k:(n + 1) * k].round()]
            for c in got:
                assert all(abs(a - b_) <= w // 2 for a, b_ in zip(c, click_cell))
                assert all(0 <= a < g for a, g in zip(c, (4, 5, 6)))
            # refined point i is the selection of cluster i (same init order as the oracle)
            assert got == expected


def test_refinement_settings_are_validated():
    with pytest.raises(ValueError, match="odd"):
        PointRefinement(window=4)
    with pytest.raises(ValueError, match="refine_k"):
        PointRefinement(window=3, k=9)


# --- split API, padding ---------------------------------------------------------------------------

def test_decode_of_cached_embedding_equals_forward():
    model = small_model(32).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    pts, lab = clicks(2)
    with torch.no_grad():
        emb = model.encode_image(x)
        emb_copy = dataclasses.asdict(emb)  # deep copies of the maps
        first = model.decode(emb, pts, lab)
        assert_outputs_close(first, model(x, pts, lab), atol=1e-6)
        prev = first["low_res_logits"]
        pts2 = torch.cat([pts, torch.tensor([[[5.0, 6.0, 7.0]], [[25.0, 2.0, 9.0]]])], 1)
        lab2 = torch.cat([lab, torch.tensor([[0], [1]])], 1)
        assert_outputs_close(model.decode(emb, pts2, lab2, prev), model(x, pts2, lab2, prev), atol=1e-6)
    for name, copy in emb_copy.items():  # decoding leaves the cached embedding as it was
        assert torch.equal(getattr(emb, name), copy)


def test_batch_items_are_independent():
    model = small_model(32).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    pts, lab = clicks(2)
    with torch.no_grad():
        both = model(x, pts, lab)
        one = model(x[1:], pts[1:], lab[1:])
    torch.testing.assert_close(both["mask_logits"][1:], one["mask_logits"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["vanilla", "full"])
def test_padding_clicks_change_nothing(name):
    refine, synergy = CONFIGS[name]
    model = small_model(32, refine=refine, synergy=synergy).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    pts, lab = clicks(2)
    nan = torch.full((2, 1, 3), float("nan"))
    padded_pts = torch.cat([pts[:, :1], nan, pts[:, 1:], torch.full((2, 1, 3), 5.0)], 1)
    padded_lab = torch.cat([lab[:, :1], torch.full((2, 1), -1), lab[:, 1:], torch.full((2, 1), -1)], 1)
    with torch.no_grad():
        mp = torch.randn(2, 1, *model.low_res_size)
        assert_outputs_close(model(x, pts, lab, mp), model(x, padded_pts, padded_lab, mp))


def test_all_padding_clicks_give_finite_outputs():
    model = small_model(32).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        for n in (0, 2):
            out = model(x, torch.zeros(2, n, 3), torch.full((2, n), -1))
            assert torch.isfinite(out["mask_logits"]).all() and torch.isfinite(out["iou_pred"]).all()
            assert all(torch.isfinite(v).all() for v in out["attribute_logits"].values())


# --- presets and builder --------------------------------------------------------------------------

def test_presets():
    tiny = PRESETS["tiny"]
    assert tiny["crop_size"] == (64, 64, 64) and tiny["patch_size"] == 8
    assert tiny["embed_dim"] <= 192 and tiny["depth"] <= 4
    base = build_isrg_model("base")
    assert base.crop_size == (128, 128, 128) and base.grid_size == (8, 8, 8)
    enc = base.image_encoder
    assert enc.patch_embed[-1].out_channels == 768 and len(enc.blocks) == 12
    assert enc.global_attn_indexes == (2, 5, 8, 11)
    assert [b.window_size for b in enc.blocks] == [4, 4, 0] * 4
    assert base.attribute_names == list(DEFAULT_SCHEMA)
    with pytest.raises(ValueError, match="unknown preset"):
        build_isrg_model("huge")
    with pytest.raises(TypeError, match="unknown model setting"):
        build_isrg_model("tiny", depht=2)


#: every preset's settings as they were before the presets shared their defaults
RESOLVED_PRESETS = {
    "tiny": dict(crop_size=(64, 64, 64), patch_size=8, embed_dim=192, depth=4, num_heads=6, mlp_ratio=4.0,
                 window_size=4, global_every=2, prompt_embed_dim=128, decoder_depth=2, decoder_heads=4,
                 decoder_mlp_dim=512, mask_head_depth=1, mask_in_chans=16, iou_head_hidden=128, synergy_dim=64,
                 refine_window=3, refine_k=3, refine_max_iter=20, conv_stem=True, high_res_skip=True,
                 subvoxel_refiner_chans=8, lesion_pooling=True, click_sigma=1.5),
    "small": dict(crop_size=(96, 96, 96), patch_size=8, embed_dim=384, depth=8, num_heads=8, mlp_ratio=4.0,
                  window_size=4, global_every=4, prompt_embed_dim=256, decoder_depth=2, decoder_heads=8,
                  decoder_mlp_dim=1024, mask_head_depth=1, mask_in_chans=16, iou_head_hidden=256, synergy_dim=128,
                  refine_window=3, refine_k=3, refine_max_iter=20, conv_stem=True, high_res_skip=True,
                  subvoxel_refiner_chans=8, lesion_pooling=True, click_sigma=1.5),
    "base": dict(crop_size=(128, 128, 128), patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 window_size=4, global_every=3, prompt_embed_dim=384, decoder_depth=2, decoder_heads=8,
                 decoder_mlp_dim=2048, mask_head_depth=1, mask_in_chans=16, iou_head_hidden=256, synergy_dim=192,
                 refine_window=3, refine_k=3, refine_max_iter=20, conv_stem=True, high_res_skip=True,
                 subvoxel_refiner_chans=8, lesion_pooling=True, click_sigma=1.5),
}


def test_presets_resolve_to_their_settings():
    assert list(PRESETS) == list(RESOLVED_PRESETS)
    for name, settings in RESOLVED_PRESETS.items():
        assert PRESETS[name] == settings, name
        config = build_isrg_model(name, depth=1).config  # depth only to keep base cheap to build
        assert {k: config[k] for k in settings} == {**settings, "crop_size": list(settings["crop_size"]), "depth": 1}


@pytest.mark.parametrize("how", ["overrides", "config"])
def test_the_removed_intensity_windows_setting_loads_only_when_off(how):
    """Old configs and checkpoints recorded ``intensity_windows: 0`` (off): they still build, with the
    same weights; a model that used the windows cannot be built and says why."""
    def build(windows):
        if how == "overrides":
            return small_model(32, intensity_windows=windows)
        return build_isrg_model_from_config({**small_model(32).config, "intensity_windows": windows})

    old = build(0)
    assert "intensity_windows" not in old.config
    old.load_state_dict(small_model(32).state_dict())
    with pytest.raises(ValueError, match="'intensity_windows' was removed"):
        build(4)


def test_image_embedding_detaches_and_moves_every_map():
    model = small_model(32).train()
    emb = model.encode_image(torch.randn(1, 1, 32, 32, 32))
    fields = [f.name for f in dataclasses.fields(ImageEmbedding)]
    assert all(getattr(emb, name).requires_grad for name in fields if name != "intensities")
    detached = emb.detach()
    assert not any(getattr(detached, name).requires_grad for name in fields)
    assert all(torch.equal(getattr(detached, name), getattr(emb, name)) for name in fields)
    assert detached.to(torch.float64).grid.dtype == torch.float64 and detached.batch_size == 1
    partial = ImageEmbedding(grid=torch.zeros(2, 4, 1, 1, 1)).detach().to("cpu")
    assert partial.skip_features is None and partial.batch_size == 2


def test_package_root_exports_the_public_api_lazily():
    import nnunet_isrg
    from nnunet_isrg import ISRGSession, build_isrg_model as root_build, load_trained_model
    from nnunet_isrg.inference.model_loading import load_trained_model as home_load
    from nnunet_isrg.inference.session import ISRGSession as HomeSession

    assert ISRGSession is HomeSession and root_build is build_isrg_model and load_trained_model is home_load
    assert set(nnunet_isrg.__all__) >= {"ISRGSession", "build_isrg_model", "load_trained_model", "__version__"}
    with pytest.raises(AttributeError):
        nnunet_isrg.no_such_name  # noqa: B018
    light = ("import sys, nnunet_isrg, nnunet_isrg.attributes; "
             "assert 'torch' not in sys.modules, 'importing the package pulled in torch'")
    subprocess.run([sys.executable, "-c", light], check=True)


def test_rebuild_from_config_loads_weights():
    model = small_model(32, refine_k=2, schema=OrderedDict(a=["x", "y"], b=["1", "2", "3"]))
    again = build_isrg_model_from_config(model.config)
    again.load_state_dict(model.state_dict())
    assert again.config == model.config and again.point_refiner.k == 2
    pts, lab = clicks(1)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert_outputs_close(model.eval()(x, pts, lab), again.eval()(x, pts, lab), atol=1e-6)


def test_voxel_level_terms_follow_the_clicks_and_survive_the_split_api():
    """The click maps reach the mask at voxel level; the embedding's voxel-level maps round-trip
    through encode/decode, each at its own resolution and None when its module is off."""
    from nnunet_isrg.modeling.subvoxel_refiner import depth_to_space, space_to_depth

    x = torch.randn(2, 3, 16, 24, 8)
    assert torch.equal(depth_to_space(space_to_depth(x, 4), 3, 4), x)
    for kw in ({}, {"subvoxel_refiner_chans": 0}, {"conv_stem": False}, {"high_res_skip": False},
               {"lesion_pooling": False},
               {"high_res_skip": False, "lesion_pooling": False}):
        model = small_model(32, **kw).eval()
        img = torch.randn(1, 1, 32, 32, 32)
        pts, lab = clicks(1)
        with torch.no_grad():
            emb = model.encode_image(img)
            assert_outputs_close(model.decode(emb, pts, lab), model(img, pts, lab), atol=1e-6)
        low_res = model.low_res_size
        assert emb.grid.shape == (1, 32, *model.grid_size)
        expected = {"skip_features": (model.high_res_skip, (1, 4, *low_res)),
                    "intensities": (model.lesion_pooling, (1, 1, *low_res)),
                    "refiner_features": (model.subvoxel_refiner, (1, 8, *low_res))}
        for name, (module, shape) in expected.items():
            value = getattr(emb, name)
            assert (value is None) == (module is None), (kw, name)
            assert value is None or value.shape == shape, (kw, name)
    model = small_model(32).eval()
    maps = model.prompt_encoder.click_maps(torch.tensor([[[4.0, 20.0, 30.0], [16.0, 16.0, 16.0]]]),
                                           torch.tensor([[1, 0]]))
    assert maps.shape == (1, 2, *model.low_res_size)
    # the positive blob peaks in the low-res voxel holding crop voxel (4, 20, 30); the negative one at (16,16,16)
    scale = model.low_res_size[0] / 32
    pos_peak = np.unravel_index(int(maps[0, 0].argmax()), model.low_res_size)
    neg_peak = np.unravel_index(int(maps[0, 1].argmax()), model.low_res_size)
    assert np.allclose(pos_peak, np.floor(np.array([4.5, 20.5, 30.5]) * scale), atol=1)
    assert np.allclose(neg_peak, np.floor(np.array([16.5, 16.5, 16.5]) * scale), atol=1)
    assert maps[0, 0].max() <= 1.0 and maps[0, 1].max() <= 1.0


def test_lesion_pooling_geometry_matches_analytic_solids():
    """Moment eigenvalues of a solid ellipsoid with semi-axes a_i are a_i^2 / 5; a ball fills its ellipsoid."""
    from nnunet_isrg.modeling.lesion_pooling import LesionPooling

    z, y, x = np.indices((40, 40, 40)) - 20
    axes = np.array([4.0, 7.0, 14.0])
    ellipsoid = ((z / axes[0]) ** 2 + (y / axes[1]) ** 2 + (x / axes[2]) ** 2 <= 1).astype(np.float32)
    ball = (z ** 2 + y ** 2 + x ** 2 <= 9 ** 2).astype(np.float32)
    shell = ((z ** 2 + y ** 2 + x ** 2 <= 11 ** 2) & (z ** 2 + y ** 2 + x ** 2 > 8 ** 2)).astype(np.float32)
    g = LesionPooling.geometry(torch.from_numpy(np.stack([ellipsoid, ball, shell]))[:, None]).numpy()
    v23 = ellipsoid.sum() ** (2 / 3)
    np.testing.assert_allclose(np.exp(g[0, :3]) * v23, axes ** 2 / 5, rtol=0.06)  # voxelisation
    assert abs(g[1, 3]) < 0.05                      # a ball's volume equals its moment ellipsoid's
    assert g[2, 3] > 0.8                            # a hollow shell fills its moment ellipsoid poorly
    assert g[2, 4] > g[1, 4] + 0.5                  # and has far more surface per volume^(2/3)


def test_untrained_model_predicts_a_blob_at_a_positive_click_and_a_hole_at_a_negative_one():
    """The click prior: before any training, a positive click is inside the mask and far voxels are not."""
    model = small_model(32).eval()
    img = torch.randn(1, 1, 32, 32, 32)
    pts = torch.tensor([[[16.0, 16.0, 16.0], [16.0, 16.0, 22.0]]])
    with torch.no_grad():
        only_pos = model(img, pts[:, :1], torch.tensor([[1]]))["mask_logits"][0, 0]
        with_neg = model(img, pts, torch.tensor([[1, 0]]))["mask_logits"][0, 0]
    assert only_pos[16, 16, 16] > 0 and only_pos[16, 16, 19] > 0
    assert (only_pos[:4] < 0).all() and (only_pos[:, :, 28:] < 0).all()
    assert with_neg[16, 16, 22] < 0 < with_neg[16, 16, 16]


# --- boxes and region maps ------------------------------------------------------------------------

def test_box_and_scribble_region_maps_match_the_prompt_geometry():
    from nnunet_isrg.modeling.prompt_encoder import region_maps
    from nnunet_isrg.prompts import Box

    crop = (16, 16, 16)
    corners = torch.tensor([[[9.6, 2.0, 3.4], [3.0, 7.5, 12.0], [1.0, 1.0, 1.0]],     # corners in any order
                            [[5.0, 5.0, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[3, 2, 1], [1, -1, -1]])                                    # sample 2: no box
    scribbles = torch.zeros(2, 2, *crop)
    scribbles[1, 1, 4, 4, 2:9] = 1
    full = region_maps(corners, labels, scribbles, crop, crop)
    expected = Box.from_corners((9.6, 2.0, 3.4), (3.0, 7.5, 12.0)).mask(crop)
    assert torch.equal(full[0, 0].bool(), torch.from_numpy(expected)) and not full[1, 0].any()
    assert torch.equal(full[:, 1:], scribbles)
    # at the low-res grid (stride 2): a cell is set when any of its voxels is
    low = region_maps(corners, labels, scribbles, crop, (8, 8, 8))
    assert torch.equal(low, F.max_pool3d(full, 2))
    assert low[1, 2, 2, 2, 1:5].all() and low[1, 2].sum() == 4


def test_clicks_give_the_same_outputs_whatever_the_box_and_region_weights():
    """What lets a checkpoint from before boxes load: with clicks only, the parameters added for boxes
    and region maps have no influence (the region maps are zero and their branches have no bias; the
    box corner embeddings only enter for labels 2 and 3)."""
    from nnunet_isrg.modeling.isrg_model import PROMPT_EXTENSION_PARAMETERS

    model = small_model(32).eval()
    pts, lab = clicks(2)
    x = torch.randn(2, 1, 32, 32, 32)
    prompt = torch.randn(2, 1, *model.low_res_size)
    with torch.no_grad():
        before = model(x, pts, lab, prompt)
        params = dict(model.named_parameters())
        assert set(PROMPT_EXTENSION_PARAMETERS) <= set(params)
        for name in PROMPT_EXTENSION_PARAMETERS:
            params[name].normal_()
        after = model(x, pts, lab, prompt)
        # ...while a box does change the prediction
        boxed = model(x, torch.cat([pts, torch.tensor([[[4.0, 4, 4], [20, 20, 20]]] * 2)], 1),
                      torch.cat([lab, torch.tensor([[2, 3]] * 2)], 1), prompt)
    for key in ("mask_logits", "low_res_logits", "iou_pred"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.allclose(boxed["mask_logits"], after["mask_logits"])
