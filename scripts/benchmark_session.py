#!/usr/bin/env python
"""Benchmark of the interactive session on this machine (CPU), against nnU-Net's own full-volume prediction.

Volumes: a real CT from ``../shared/realdata/ibsi-sts`` (default STS_002, 0.98 x 0.98 x 3.27 mm) and
a synthetic CT-like volume of 512 x 512 x 300 voxels (0.8 x 0.8 x 1.5 mm, body, organs, bone,
a hypodense lesion). Presets: ``tiny`` and ``base`` (random weights: timing only).

Each configuration runs in a fresh subprocess, so the peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is that configuration's own. Per configuration:

- ``set_image``: reading the NIfTI file and validating it (what a reader waits for when opening a CT);
- first click: region preprocessing (nnU-Net's normalisation + resampling of the region around the
  click), crop encoding, decoding, paste-back to the original grid;
- further clicks: ``--repeats`` correction clicks near the first (median and p95), decode + paste-back
  only (the embedding is cached); the report is built on demand and timed separately (``report_s``);
- the model plans are the ones a model trained on such data would have: for the real CT the
  data's own spacing (no resampling), for the synthetic volume 1.0 x 0.8 x 0.8 mm (z resampled);
  zooming out is off (``zoom_factors=()``) because a random-weight mask says nothing about the
  lesion's extent: this table is the crop at the clicks alone (a lesion larger than the crop:
  ``scripts/benchmark_lesion_size.py``).

Baseline, per volume, in its own subprocess: nnU-Net's ``nnUNetPredictor.predict_sliding_window_return_logits``
with a ``PlainConvUNet`` from plans (untrained, 5 stages, nnU-Net's default 3d_fullres patch for the
data), tile step 0.5, Gaussian weighting, no mirroring (nnU-Net's default 8-fold mirroring would
make it 8x slower); the whole-volume nnU-Net preprocessing is timed separately. On the large
volume a full sliding-window run takes tens of minutes on a shared 2-core CPU, so by default
(``--baseline auto``) it is extrapolated there: nnU-Net's own tile grid
(``compute_steps_for_sliding_window``) times the measured time of one patch forward pass; ``--baseline full``
runs it.

Writes ``results/benchmark_session.json`` and ``results/benchmark_session.md``; ``--update-readme``
replaces the README section ``session-benchmark``.

    python scripts/benchmark_session.py                                  # everything, 20 repeats
    python scripts/benchmark_session.py --presets tiny --volumes real --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # the package, and script_support beside this file
REALDATA = REPO.parent / "shared" / "realdata" / "ibsi-sts"

TARGETS = {"further_click_median_ms": 150.0, "first_click_s": 2.0, "peak_rss_gib": 2.5, "speedup_vs_baseline": 20.0}
SYNTH_SHAPE_ZYX = (300, 512, 512)
SYNTH_SPACING_XYZ = (0.8, 0.8, 1.5)
SYNTH_TARGET_SPACING_ZYX = (1.0, 0.8, 0.8)
SYNTH_LESION = {"centre_zyx": (150, 300, 200), "radius_mm": 15.0}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 ** 2  # Linux: KiB


# ---------------------------------------------------------------------------------------------- inputs
def make_synthetic_ct(path: Path, seed: int = 0, lesion: dict = SYNTH_LESION) -> None:
    """A 512 x 512 x 300 CT-like volume in HU (int16 NIfTI): air, body, fat rim, liver, kidneys, spine,
    ribs, a lesion in the liver (hypodense by default), and noise. ``lesion``: ``centre_zyx`` (voxels),
    ``radius_mm`` (a sphere) or ``radii_mm_zyx`` (an ellipsoid), and optionally ``hu`` (default 15)."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    z, y, x = SYNTH_SHAPE_ZYX
    sp_x, sp_y, sp_z = SYNTH_SPACING_XYZ
    yy, xx = np.meshgrid((np.arange(y) - y / 2) * sp_y, (np.arange(x) - x / 2) * sp_x, indexing="ij")
    body = (xx / 170) ** 2 + (yy / 120) ** 2 <= 1
    inner = (xx / 160) ** 2 + (yy / 110) ** 2 <= 1
    slice_hu = np.full((y, x), -1000, np.int16)
    slice_hu[body] = -90                                                # fat rim
    slice_hu[inner] = 40                                                # soft tissue
    slice_hu[((xx + 60) / 80) ** 2 + ((yy - 10) / 60) ** 2 <= 1] = 60   # liver
    for cx in (-70, 70):
        slice_hu[((xx - cx) / 25) ** 2 + ((yy + 50) / 35) ** 2 <= 1] = 35  # kidneys
    slice_hu[(xx ** 2 + (yy + 80) ** 2) <= 18 ** 2] = 700               # vertebra
    ring = np.abs(np.sqrt((xx / 155) ** 2 + (yy / 105) ** 2) - 0.95) < 0.02
    slice_hu[ring & (np.abs(np.sin(np.arctan2(yy, xx) * 8)) > 0.6)] = 500  # ribs
    vol = np.broadcast_to(slice_hu, (z, y, x)).copy()
    cz, cy, cx = lesion["centre_zyx"]
    rz, ry, rx = lesion.get("radii_mm_zyx", (lesion.get("radius_mm"),) * 3)
    in_plane = (((np.arange(y) - cy) * sp_y / ry) ** 2)[:, None] + (((np.arange(x) - cx) * sp_x / rx) ** 2)[None]
    for k in range(max(int(cz - rz / sp_z) - 1, 0), min(int(cz + rz / sp_z) + 2, z)):  # slice by slice: small
        vol[k][in_plane + ((k - cz) * sp_z / rz) ** 2 <= 1] = lesion.get("hu", 15)
    for k in range(z):  # slice by slice: no 600 MB float64 noise array
        vol[k] += (rng.standard_normal((y, x), dtype=np.float32) * 12).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(SYNTH_SPACING_XYZ)
    img.SetOrigin((-x / 2 * sp_x, -y / 2 * sp_y, -600.0))
    sitk.WriteImage(img, str(path), False)


def real_case(case: str) -> tuple[Path, list[int]]:
    """The real CT and a click at its tumour's deepest interior point (voxel z, y, x)."""
    import numpy as np
    import SimpleITK as sitk
    from scipy.ndimage import distance_transform_edt

    folder = REALDATA / case
    img, mask = folder / "CT_image.nii.gz", folder / "CT_mask.nii.gz"
    if not img.is_file():
        raise FileNotFoundError(f"{img} not found; the real-data benchmark needs ../shared/realdata/ibsi-sts")
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(mask))) > 0
    d = distance_transform_edt(m)
    return img, [int(v) for v in np.unravel_index(np.argmax(d), m.shape)]


def write_model_folder(folder: Path, preset: str, target_spacing_zyx, intensity: dict, patch_size) -> None:
    """plans.json + dataset.json of a model as the trainer would save them (isrg block, 3d_fullres)."""
    from nnunet_isrg.attributes import DEFAULT_SCHEMA
    from nnunet_isrg.modeling.from_plans import make_isrg_block, preset_crop_size

    crop = preset_crop_size(preset)
    stages = 5
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": stages, "features_per_stage": [32, 64, 128, 256, 320],
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * stages,
                            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1), "n_conv_per_stage": [2] * stages,
                            "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    cfg = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
           "patch_size": list(patch_size), "median_image_size_in_voxels": [300, 512, 512],
           "spacing": list(target_spacing_zyx), "normalization_schemes": ["CTNormalization"],
           "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
           "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
           "architecture": arch, "batch_dice": False,
           "isrg": make_isrg_block(preset, crop, DEFAULT_SCHEMA, True, True)}
    plans = {"dataset_name": "Dataset999_Benchmark", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": list(target_spacing_zyx),
             "original_median_shape_after_transp": [300, 512, 512], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": cfg}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": intensity}}
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 0,
               "file_ending": ".nii.gz"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))


INTENSITY = {"max": 1500.0, "mean": 60.0, "median": 55.0, "min": -200.0, "percentile_00_5": -150.0,
             "percentile_99_5": 400.0, "std": 60.0}


# ---------------------------------------------------------------------------------------------- children
def _loaded_model(folder: Path):
    """The model of ``folder`` with random weights (no checkpoint needed for timing)."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_isrg.attributes import validate_schema
    from nnunet_isrg.inference.model_loading import LoadedModel
    from nnunet_isrg.modeling.from_plans import build_isrg_network

    plans = json.loads((folder / "plans.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    block = cm.configuration["isrg"]
    torch.manual_seed(0)
    net = build_isrg_network(block).eval()
    return LoadedModel(folder, pm, cm, json.loads((folder / "dataset.json").read_text()),
                       validate_schema(block["schema"]), net, [0], torch.device("cpu"), dict(block))


def child_session(args) -> dict:
    import numpy as np
    import torch

    from nnunet_isrg.inference.session import ISRGSession

    torch.set_num_threads(args.threads)
    rss_start = _peak_rss_gib()
    model = _loaded_model(Path(args.model_folder))
    session = ISRGSession(model, zoom_factors=())
    t = time.perf_counter()
    session.set_image(args.image)
    set_image_s = time.perf_counter() - t
    click = np.array(json.loads(args.click))
    t = time.perf_counter()
    state = session.add_click(click)
    first_s = time.perf_counter() - t
    shape = np.array(session.image_shape)
    rng = np.random.default_rng(0)
    times = []
    for i in range(args.repeats):
        p = np.clip(click + rng.integers(-4, 5, size=3) * np.array([1, 2, 2]), 0, shape - 1)
        t = time.perf_counter()
        state = session.add_click(p, positive=bool(i % 2))
        times.append(time.perf_counter() - t)
    # random weights may leave the lesion without a mask after the alternating clicks; a last
    # positive click on the lesion (not timed) gives the report a mask to measure
    if not state.n_voxels:
        state = session.add_click(click, positive=True)
    report_s = None
    if state.n_voxels:
        t = time.perf_counter()
        session.report()
        report_s = time.perf_counter() - t
    ms = sorted(1e3 * v for v in times)
    return {"set_image_s": set_image_s, "first_click_s": first_s,
            "further_click_median_ms": statistics.median(ms),
            "further_click_p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))],
            "further_clicks": len(ms), "report_s": report_s, "encode_calls": session.encode_calls,
            "mask_voxels": int(state.n_voxels), "image_shape_zyx": list(map(int, shape)),
            "crop_size": list(model.crop_size), "peak_rss_gib": _peak_rss_gib(), "rss_after_import_gib": rss_start}


def child_baseline(args) -> dict:
    import numpy as np
    import SimpleITK as sitk
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(args.threads)
    folder = Path(args.model_folder)
    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    arch = cm.network_arch_init_kwargs
    net = get_network_from_plans(cm.network_arch_class_name, arch, cm.network_arch_init_kwargs_req_import, 1, 2,
                                 allow_init=True, deep_supervision=False).eval()
    img = sitk.ReadImage(args.image)
    spacing_zyx = list(img.GetSpacing())[::-1]
    shape_zyx = list(img.GetSize())[::-1]
    target_shape = [int(v) for v in compute_new_shape(shape_zyx, spacing_zyx, cm.spacing)]
    padded = [max(s, p) for s, p in zip(target_shape, cm.patch_size)]
    steps = compute_steps_for_sliding_window(padded, cm.patch_size, 0.5)
    n_tiles = int(np.prod([len(s) for s in steps]))
    out = {"patch_size": list(cm.patch_size), "target_shape_zyx": target_shape, "n_tiles": n_tiles,
           "architecture": f"{cm.network_arch_class_name.split('.')[-1]} {arch['n_stages']} stages "
                           f"{arch['features_per_stage']}", "mirroring": False, "tile_step_size": 0.5}
    full = args.baseline == "full" or (args.baseline == "auto" and n_tiles <= 8)
    if full:
        arr = sitk.GetArrayFromImage(img).astype(np.float32)[None]
        t = time.perf_counter()
        data, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(arr, None, {"spacing": spacing_zyx}, pm, cm,
                                                                     dataset_json)
        out["preprocess_s"] = time.perf_counter() - t
        del arr
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
        predictor.manual_initialization(net, pm, cm, None, dataset_json, "nnUNetTrainer", None)
        t = time.perf_counter()
        predictor.predict_sliding_window_return_logits(torch.from_numpy(data))
        out["predict_s"] = time.perf_counter() - t
        out["method"] = "measured: nnUNetPredictor.predict_sliding_window_return_logits on the whole volume"
    else:
        x = torch.randn(1, 1, *cm.patch_size)
        with torch.inference_mode():
            net(x)  # warm-up
            times = []
            for _ in range(args.baseline_patches):
                t = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t)
        per_patch = statistics.median(times)
        out["per_patch_s"] = per_patch
        out["predict_s"] = per_patch * n_tiles
        out["method"] = (f"extrapolated: {n_tiles} tiles (nnU-Net's compute_steps_for_sliding_window, step 0.5) "
                         f"x median of {len(times)} patch forward passes; preprocessing not included")
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


# ---------------------------------------------------------------------------------------------- parent
def _run_child(kind: str, args, **kw) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--child", kind, "--json-out", out, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--baseline", args.baseline, "--baseline-patches",
           str(args.baseline_patches)] + [a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    try:
        if proc.returncode != 0:
            return {"error": proc.stderr[-3000:], "wall_s": wall}
        res = json.loads(Path(out).read_text())
        res["wall_s"] = wall
        return res
    finally:
        if os.path.exists(out):
            os.remove(out)


def markdown_table(results: dict) -> str:
    lines = ["| volume | preset | set_image (s) | first click (s) | further click median / p95 (ms) | report (s) | "
             "peak RSS (GiB) | nnU-Net baseline (s) | speed-up (baseline / further click) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for vol, v in results["volumes"].items():
        base = v.get("baseline", {})
        bt = base.get("predict_s")
        for preset, r in v["presets"].items():
            if "error" in r:
                lines.append(f"| {vol} | {preset} | error: see JSON | | | | | | |")
                continue
            speed = bt / (r["further_click_median_ms"] / 1e3) if bt else None
            report = "n/a (no mask)" if r["report_s"] is None else f"{r['report_s']:.2f}"
            lines.append(f"| {vol} {tuple(r['image_shape_zyx'])} | {preset} | {r['set_image_s']:.2f} | "
                         f"{r['first_click_s']:.2f} | {r['further_click_median_ms']:.0f} / {r['further_click_p95_ms']:.0f} | "
                         f"{report} | {r['peak_rss_gib']:.2f} | "
                         f"{'%.1f' % bt if bt else '-'}{' (extrapolated)' if base.get('method', '').startswith('extra') else ''} | "
                         f"{'%.0fx' % speed if speed else '-'} |")
    t = results["targets"]
    lines += ["", f"Targets for `tiny` on the 512 x 512 x 300 volume: further click <= {t['further_click_median_ms']:.0f} ms "
              f"median, first click <= {t['first_click_s']:.0f} s, peak memory <= {t['peak_rss_gib']} GiB, click >= "
              f"{t['speedup_vs_baseline']:.0f}x faster than the baseline. Met: {results.get('targets_met')}.",
              f"Machine: {results['machine']}; {results['threads']} thread(s); {results['repeats']} further clicks; "
              "random weights; baseline without mirroring (see scripts/benchmark_session.py)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--volumes", nargs="+", default=["real", "synthetic"], choices=["real", "synthetic"])
    p.add_argument("--case", default="STS_002", help="ibsi-sts case for the real CT")
    p.add_argument("--repeats", type=int, default=20, help="further clicks per configuration")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--baseline", choices=["auto", "full", "extrapolate", "none"], default="auto")
    p.add_argument("--baseline-patches", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "results"))
    p.add_argument("--update-readme", action="store_true")
    # child mode (internal)
    p.add_argument("--child", choices=["session", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    p.add_argument("--model-folder", help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--click", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        res = child_session(args) if args.child == "session" else child_baseline(args)
        Path(args.json_out).write_text(json.dumps(res))
        return

    from tqdm import tqdm

    from nnunet_isrg.files import write_json_atomic

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible",
               "threads": args.threads, "repeats": args.repeats, "targets": TARGETS, "volumes": {}}
    with tempfile.TemporaryDirectory(prefix="isrg_bench_") as tmp:
        tmp = Path(tmp)
        volumes = {}
        if "real" in args.volumes:
            import SimpleITK as sitk

            img, click = real_case(args.case)
            sp = list(sitk.ReadImage(str(img)).GetSpacing())[::-1]
            volumes[f"real {args.case}"] = (img, click, sp, (48, 144, 160))
        if "synthetic" in args.volumes:
            path = tmp / "synthetic_512x512x300.nii"
            t = time.perf_counter()
            make_synthetic_ct(path)
            print(f"synthetic volume written in {time.perf_counter() - t:.1f} s")
            volumes["synthetic 512x512x300"] = (path, list(SYNTH_LESION["centre_zyx"]), SYNTH_TARGET_SPACING_ZYX,
                                                (128, 128, 128))
        jobs = [(v, pr) for v in volumes for pr in args.presets]
        bar = tqdm(total=len(jobs) + (len(volumes) if args.baseline != "none" else 0), desc="benchmark", unit="run")
        for vol, (img, click, target_sp, patch) in volumes.items():
            entry = results["volumes"].setdefault(vol, {"image": str(img), "click_zyx": click,
                                                        "target_spacing_zyx": list(target_sp), "presets": {}})
            for preset in args.presets:
                folder = tmp / f"{vol.split()[0]}_{preset}"
                write_model_folder(folder, preset, target_sp, INTENSITY, patch)
                entry["presets"][preset] = _run_child("session", args, model_folder=folder, image=img,
                                                      click=json.dumps(click))
                bar.update()
            if args.baseline != "none":
                folder = tmp / f"{vol.split()[0]}_{args.presets[0]}"
                entry["baseline"] = _run_child("baseline", args, model_folder=folder, image=img)
                bar.update()
        bar.close()
    syn = results["volumes"].get("synthetic 512x512x300", {})
    tiny = syn.get("presets", {}).get("tiny")
    if tiny and "error" not in tiny and "predict_s" in syn.get("baseline", {}):
        speed = syn["baseline"]["predict_s"] / (tiny["further_click_median_ms"] / 1e3)
        results["targets_met"] = {
            "further_click_median_ms": tiny["further_click_median_ms"] <= TARGETS["further_click_median_ms"],
            "first_click_s": tiny["first_click_s"] <= TARGETS["first_click_s"],
            "peak_rss_gib": tiny["peak_rss_gib"] <= TARGETS["peak_rss_gib"],
            "speedup_vs_baseline": speed >= TARGETS["speedup_vs_baseline"]}
    md = markdown_table(results)
    write_json_atomic(out_dir / "benchmark_session.json", results)
    tmp_md = out_dir / ".benchmark_session.md.tmp"
    tmp_md.write_text(md + "\n")
    os.replace(tmp_md, out_dir / "benchmark_session.md")
    print(md)
    if args.update_readme:
        from script_support import replace_readme_section

        replace_readme_section("session-benchmark", md)


if __name__ == "__main__":
    main()
