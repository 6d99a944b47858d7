"""Two-process DistributedDataParallel training steps on the CPU (gloo) for the four model configurations.

DDP is used as the trainer uses it: without ``find_unused_parameters``. A parameter that got no
gradient in one iteration makes DDP raise at the next one, so every configuration runs three steps
(first round without mask prompt, a correction round with one, and again without). The synchronised
gradient of the first step is checked against the mean of the per-rank gradients of a plain copy.
"""
from __future__ import annotations

import copy
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

SMALL = dict(embed_dim=32, depth=2, num_heads=2, prompt_embed_dim=32, decoder_heads=2, decoder_mlp_dim=64,
             iou_head_hidden=32, synergy_dim=16, decoder_depth=1)
CONFIGS = [(False, False), (True, False), (False, True), (True, True)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(rank: int, step: int):
    g = torch.Generator().manual_seed(100 * rank + step)
    x = torch.randn(2, 1, 32, 32, 32, generator=g)
    target = (torch.rand(2, 1, 32, 32, 32, generator=g) > 0.7).float()
    pts = torch.rand(2, 3, 3, generator=g) * 31
    lab = torch.tensor([[1, 0, -1], [1, 1, 0]])
    attr = torch.tensor([[0, 1], [1, -1]])  # -1: unknown attribute, masked out
    return x, pts, lab, target, attr


def _loss(out, target, attr, names):
    prob = torch.sigmoid(out["mask_logits"])
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    ce = sum(F.cross_entropy(out["attribute_logits"][n], attr[:, i], ignore_index=-1) for i, n in enumerate(names))
    inter = ((out["mask_logits"] > 0).float() * target).flatten(1).sum(1)
    union = ((out["mask_logits"] > 0).float() + target).clamp(max=1).flatten(1).sum(1)
    iou = F.mse_loss(out["iou_pred"][:, 0], inter / union.clamp(min=1))
    return dice + ce + iou


def _flat_grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from collections import OrderedDict

        from nnunet_isrg.modeling.build import build_isrg_model

        schema = OrderedDict(shape=["a", "b", "c"], density=["d", "e"])
        for refine, synergy in CONFIGS:
            torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
            model = build_isrg_model("tiny", crop_size=32, schema=schema, point_refinement=refine,
                                     feature_synergy=synergy, **SMALL)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            ref = copy.deepcopy(model)  # weights already broadcast by the DDP constructor
            opt = torch.optim.SGD(ddp.parameters(), lr=1e-2)
            prev = None
            for step in range(3):
                x, pts, lab, target, attr = _batch(rank, step)
                mask_prompt = prev if step == 1 else None
                opt.zero_grad(set_to_none=True)
                out = ddp(x, pts, lab, mask_prompt)
                _loss(out, target, attr, model.attribute_names).backward()
                missing = [n for n, p in model.named_parameters() if p.grad is None]
                assert not missing, f"config refine={refine} synergy={synergy}: no gradient for {missing}"
                if step == 0:
                    _loss(ref(x, pts, lab, None), target, attr, model.attribute_names).backward()
                    expected = _flat_grads(ref)
                    dist.all_reduce(expected)
                    expected /= world
                    torch.testing.assert_close(_flat_grads(model), expected, rtol=1e-4, atol=1e-6)
                opt.step()
                prev = out["low_res_logits"].detach()
            params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            gathered = [torch.empty_like(params) for _ in range(world)]
            dist.all_gather(gathered, params)
            assert torch.equal(gathered[0], gathered[1]), "ranks diverged after DDP steps"
        # both ranks leave together: a rank that tears gloo down while the other still has traffic in
        # flight aborts in C++ ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_training_step_all_configurations():
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)
