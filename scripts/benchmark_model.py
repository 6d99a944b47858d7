#!/usr/bin/env python
"""Benchmark of the ISRG network on this machine (CPU): size, interactive latency, training step, memory.

For each preset (default: tiny and base), in a fresh process each so the memory peaks are separate:

- parameters, total and per component;
- ``encode_image`` time, batch 1 (median of repeated calls, inference mode);
- ``decode`` time per click, batch 1, Full configuration (point refinement and synergy on): the
  median of repeated calls for a correction click (2 clicks + previous low-res logits as mask
  prompt), also for the first click (1 click, no mask prompt), for a box as the first prompt (its
  two corner tokens and its region map; a box inside the cached crop costs this decode, no encode)
  and, for comparison, with refinement and synergy switched off;
- one training step, forward + backward (no optimiser step), batch 2, Full, with a mask prompt and
  the loss the trainer uses (soft Dice + attribute cross-entropy + IoU MSE);
- peak memory: the process's peak resident set size (``resource.getrusage(...).ru_maxrss``), read
  after import, after the inference timings and after the training steps; it includes the Python
  and torch baseline, which is reported too.

Writes ``results/benchmark_model.json`` and ``results/benchmark_model.md``; ``--update-readme``
replaces the README section ``model-benchmark`` with the table.

    python scripts/benchmark_model.py                       # tiny + base, 1 thread
    python scripts/benchmark_model.py --presets tiny --threads 2 --repeats 20
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_REPEATS = {"tiny": 20, "small": 8, "base": 4}
TRAIN_REPEATS = {"tiny": 5, "small": 3, "base": 2}
TARGET_DECODE_MS = 100.0
TARGET_DECODE_SHARE = 0.25


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def bench_preset(preset: str, threads: int, repeats: int, train_repeats: int) -> dict:
    """Runs in a fresh process; returns the measurements of one preset."""
    import torch
    import torch.nn.functional as F

    if threads > 0:
        torch.set_num_threads(threads)
    rss_import = _rss_mib()
    from nnunet_isrg.modeling.build import build_isrg_model
    from nnunet_isrg.modeling.prompt_encoder import BOX_HIGH, BOX_LOW

    torch.manual_seed(0)
    model = build_isrg_model(preset).eval()
    crop = model.crop_size
    # Per submodule; the learned output tokens (iou/mask/attribute) are counted together.
    components: dict[str, int] = {}
    for name, mod in model.named_children():
        key = "output_tokens" if name.endswith(("_token", "_tokens")) else name
        components[key] = components.get(key, 0) + sum(p.numel() for p in mod.parameters())
    n_params = sum(p.numel() for p in model.parameters())

    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 1, *crop, generator=g)
    c = torch.tensor(crop, dtype=torch.float32)
    p1 = (c / 2)[None, None]
    p2 = torch.stack([c / 2, c / 2 + c / 8])[None]
    l1, l2 = torch.tensor([[1]]), torch.tensor([[1, 0]])
    with torch.inference_mode():
        encode_ms = _median_ms(lambda: model.encode_image(image), repeats)
        emb = model.encode_image(image)
        prev = model.decode(emb, p1, l1)["low_res_logits"]
        decode_first_ms = _median_ms(lambda: model.decode(emb, p1, l1), repeats)
        decode_ms = _median_ms(lambda: model.decode(emb, p2, l2, prev), repeats)
        # a box inside the crop as the first prompt: two corner tokens and its region map, on the cached embedding
        box, box_labels = torch.stack([c / 2 - c / 8, c / 2 + c / 8])[None], torch.tensor([[BOX_LOW, BOX_HIGH]])
        decode_box_ms = _median_ms(lambda: model.decode(emb, box, box_labels), repeats)
        # Same weights with both switches off (timing only; the modules are put back afterwards).
        refiner, synergy = model.point_refiner, model.synergy
        model.point_refiner, model.synergy = None, None
        decode_vanilla_ms = _median_ms(lambda: model.decode(emb, p2, l2, prev), repeats)
        model.point_refiner, model.synergy = refiner, synergy
    rss_inference = _rss_mib()

    model.train()
    x = torch.randn(2, 1, *crop, generator=g)
    target = torch.zeros(2, 1, *crop)
    sl = tuple(slice(s // 2 - s // 8, s // 2 + s // 8) for s in crop)
    target[(slice(None), slice(None)) + sl] = 1
    pts = torch.cat([p2, p2.flip(1)])
    labels = torch.tensor([[1, 0], [1, 1]])
    mp_ = torch.zeros(2, 1, *model.low_res_size)
    attr = torch.zeros(2, dtype=torch.long)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(x, pts, labels, mp_)
        prob = torch.sigmoid(out["mask_logits"])
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        ce = sum(F.cross_entropy(v, attr) for v in out["attribute_logits"].values())
        (dice + ce + F.mse_loss(out["iou_pred"], torch.full_like(out["iou_pred"], 0.5))).backward()

    train_ms = _median_ms(step, train_repeats, warmup=1)
    rss_train = _rss_mib()
    total = encode_ms + decode_ms
    return {
        "preset": preset, "crop_size": list(crop), "grid_size": list(model.grid_size),
        "embed_dim": model.config["embed_dim"], "depth": model.config["depth"],
        "parameters": n_params, "parameters_by_component": components,
        "encode_ms": round(encode_ms, 2), "decode_ms": round(decode_ms, 2),
        "decode_first_click_ms": round(decode_first_ms, 2), "decode_box_ms": round(decode_box_ms, 2),
        "decode_vanilla_ms": round(decode_vanilla_ms, 2),
        "decode_share": round(decode_ms / total, 3),
        "train_step_ms": round(train_ms, 1), "train_batch_size": 2,
        "rss_after_import_mib": round(rss_import, 1), "peak_rss_inference_mib": round(rss_inference, 1),
        "peak_rss_training_mib": round(rss_train, 1), "repeats": repeats, "train_repeats": train_repeats,
        "targets_met": ({"decode_ms<=100": decode_ms <= TARGET_DECODE_MS,
                         "decode_share<=0.25": decode_ms / total <= TARGET_DECODE_SHARE} if preset == "tiny" else None),
    }


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"  # n/a: a result written before boxes were measured


def to_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"Measured by `scripts/benchmark_model.py` on {m['cpu_count']} CPU cores ({m['processor'] or m['machine']}), "
        f"torch {m['torch']}, {m['threads']} thread(s), load average at start {m['load_average']}. "
        "Batch 1 for latency (median of repeated calls), Full model (point refinement and synergy on); "
        "decode = a correction click (2 clicks + previous logits). Training step = forward + backward, batch 2. "
        "Memory = the process's peak resident set size (ru_maxrss), torch and Python included.",
        "",
        "| preset | crop | tokens | params | encode_image | decode / click | decode first click | decode, a box "
        "| decode, Vanilla | decode share | train step (B=2) | peak RSS inference | peak RSS training |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["presets"]:
        lines.append(
            f"| {r['preset']} | {'x'.join(map(str, r['crop_size']))} | {'x'.join(map(str, r['grid_size']))} "
            f"| {r['parameters'] / 1e6:.1f} M | {r['encode_ms']:.1f} ms | {r['decode_ms']:.1f} ms "
            f"| {r['decode_first_click_ms']:.1f} ms | {_ms(r.get('decode_box_ms'))} | {r['decode_vanilla_ms']:.1f} ms "
            f"| {100 * r['decode_share']:.0f} % "
            f"| {r['train_step_ms'] / 1e3:.2f} s | {r['peak_rss_inference_mib']:.0f} MiB "
            f"| {r['peak_rss_training_mib']:.0f} MiB |")
    tiny = next((r for r in res["presets"] if r["preset"] == "tiny"), None)
    if tiny:
        ok = tiny["targets_met"]
        lines += ["", f"Targets for `tiny`: decode <= {TARGET_DECODE_MS:.0f} ms per click: "
                      f"{'met' if ok['decode_ms<=100'] else 'missed'} ({tiny['decode_ms']:.1f} ms); decode <= 1/4 of "
                      f"encode + decode: {'met' if ok['decode_share<=0.25'] else 'missed'} "
                      f"({100 * tiny['decode_share']:.0f} %)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "base"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch default)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per latency (default per preset)")
    ap.add_argument("--train-repeats", type=int, default=None, help="timed training steps (default per preset)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmark_model.json")
    ap.add_argument("--update-readme", action="store_true", help="replace the README section model-benchmark")
    args = ap.parse_args(argv)

    import torch

    from nnunet_isrg.files import write_json_atomic
    from nnunet_isrg.modeling.build import PRESETS

    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        ap.error(f"unknown preset(s) {unknown}; choose from {list(PRESETS)}")
    res = {"machine": {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
                       "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "threads": args.threads if args.threads > 0 else torch.get_num_threads(),
                       "load_average": [round(v, 2) for v in os.getloadavg()]},
           "memory_measure": "peak resident set size of the benchmark process (resource.getrusage ru_maxrss)",
           "presets": []}
    for preset in args.presets:
        reps = args.repeats or DEFAULT_REPEATS.get(preset, 5)
        treps = args.train_repeats or TRAIN_REPEATS.get(preset, 2)
        print(f"[benchmark_model] {preset}: {reps} latency repeats, {treps} training steps ...", flush=True)
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
            r = ex.submit(bench_preset, preset, args.threads, reps, treps).result()
        print(f"[benchmark_model] {preset}: {r['parameters'] / 1e6:.1f} M params, encode {r['encode_ms']:.1f} ms, "
              f"decode {r['decode_ms']:.1f} ms/click, train step {r['train_step_ms'] / 1e3:.2f} s", flush=True)
        res["presets"].append(r)

    md = to_markdown(res)
    write_json_atomic(args.out, res)
    md_path = args.out.with_suffix(".md")
    tmp = md_path.with_name(f".{md_path.name}.tmp")
    tmp.write_text(md)
    os.replace(tmp, md_path)
    print(md)
    print(f"wrote {args.out} and {md_path}")
    if args.update_readme:
        from script_support import replace_readme_section

        replace_readme_section("model-benchmark", md)
    return res


if __name__ == "__main__":
    main()
