"""The ISRG network as nnU-Net builds it: from an ``isrg`` block stored in the plans' configuration.

nnU-Net's ``build_network_architecture`` is static and gets only the plans, so the trainer writes
everything the network needs (preset, crop, schema, ablation switches, overrides) into the
configuration of the plans it saves next to the checkpoint; inference rebuilds the same network
from that ``plans.json`` alone.
"""
from __future__ import annotations

from typing import Mapping

from .build import PRESETS, build_isrg_model
from .isrg_model import ISRGModel

PLANS_KEY = "isrg"


def make_isrg_block(preset: str, crop_size, schema: Mapping, point_refinement: bool, feature_synergy: bool,
                    overrides: Mapping | None = None, learn_lambda: bool = True, initial_lambda: float = 1.0) -> dict:
    return {
        "preset": preset,
        "crop_size": [int(s) for s in crop_size],
        "schema": {k: list(v) for k, v in schema.items()},
        "point_refinement": bool(point_refinement),
        "feature_synergy": bool(feature_synergy),
        "overrides": dict(overrides or {}),
        "learn_lambda": bool(learn_lambda),
        "initial_lambda": float(initial_lambda),
    }


def preset_crop_size(preset: str) -> tuple[int, int, int]:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}'; available: {list(PRESETS)}")
    return tuple(int(s) for s in PRESETS[preset]["crop_size"])


def isrg_block_of(configuration: Mapping, where: str = "plans") -> dict:
    block = configuration.get(PLANS_KEY)
    if block is None:
        raise RuntimeError(f"{where}: this configuration has no '{PLANS_KEY}' block, so it was not trained with an "
                           f"ISRG trainer; use nnU-Net's own trainers/predictor for it")
    return block


def build_isrg_network(block: Mapping, num_input_channels: int = 1) -> ISRGModel:
    """The ISRG model that ``block`` (a plans configuration's ``isrg`` record) describes, untrained.

    The trainer attaches its loss weighting to the result (training code, so that the checkpoint
    holds it); inference loads the same weights without it.
    """
    if num_input_channels != 1:
        raise ValueError(f"ISRG models take one CT channel; this dataset has {num_input_channels} input channels")
    return build_isrg_model(block["preset"], crop_size=tuple(block["crop_size"]), schema=block["schema"],
                            point_refinement=block["point_refinement"], feature_synergy=block["feature_synergy"],
                            **block.get("overrides", {}))
