"""Loading a trained ISRG model folder (``nnUNet_results/DatasetXXX/Trainer__Plans__3d_fullres``).

The folder is nnU-Net's: ``plans.json`` (with the ``isrg`` block the trainer stores in the
3d_fullres configuration), ``dataset.json`` and ``fold_X/checkpoint_final.pth`` holding
``network_weights``. The network is rebuilt from ``plans.json`` alone
(:func:`nnunet_isrg.modeling.from_plans.build_isrg_network`), exactly as the trainer built it.

Several folds are wrapped in :class:`ISRGEnsemble`, which has the single model's split API
(``encode_image``/``decode``/``crop_size``) and averages the folds' mask logits and attribute
probabilities, so :class:`nnunet_isrg.inference.lesion_predictor.LesionPredictor` takes either.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_isrg.attributes import (ATTRIBUTE_CLASS_COUNTS_FILENAME, ATTRIBUTE_CLASS_COUNTS_KEY, ATTRIBUTE_SUPPORT_KEY,
                                    untrained_attributes, validate_schema)
from nnunet_isrg.modeling.isrg_model import PROMPT_EXTENSION_PARAMETERS
from nnunet_isrg.prompts import PROMPT_KINDS, PROMPT_KINDS_KEY
from nnunet_isrg.modeling.from_plans import build_isrg_network, isrg_block_of

CONFIGURATION = "3d_fullres"
Folds = Union[Sequence[Union[int, str]], str, int]


class ModelFolderError(FileNotFoundError):
    """A trained model folder lacks a file it needs (or holds one that cannot be used)."""


class ISRGEnsemble(nn.Module):
    """Averages several ISRG networks of identical architecture (e.g. the folds of a cross-validation).

    ``encode_image`` returns the list of per-network embeddings; ``decode`` averages the networks'
    ``mask_logits``, ``low_res_logits`` and ``iou_pred`` and their attribute *probabilities*
    (returned as log-probabilities under ``attribute_logits``, so a softmax of them gives the mean
    probabilities back). A mask prompt (the previous ``low_res_logits``) is the ensemble's averaged
    one and is given to every member.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one network")
        sizes = {tuple(m.crop_size) for m in members}
        if len(sizes) != 1:
            raise ValueError(f"ensemble members have different crop sizes {sorted(sizes)}; they must share the plans")
        self.members = nn.ModuleList(members)

    @property
    def crop_size(self) -> tuple[int, int, int]:
        return tuple(self.members[0].crop_size)

    @property
    def attribute_names(self) -> list[str]:
        return list(self.members[0].attribute_names)

    def encode_image(self, image: torch.Tensor) -> list[Any]:
        return [m.encode_image(image) for m in self.members]

    def decode(self, embedding: Sequence[Any], points: torch.Tensor, labels: torch.Tensor,
               mask_prompt: torch.Tensor | None = None, scribbles: torch.Tensor | None = None) -> dict[str, Any]:
        if len(embedding) != len(self.members):
            raise ValueError(f"expected {len(self.members)} embeddings (one per member), got {len(embedding)}")
        outs = [m.decode(e, points, labels, mask_prompt, scribbles) for m, e in zip(self.members, embedding)]
        mean = lambda key: torch.stack([o[key] for o in outs]).mean(0)  # noqa: E731
        attrs = OrderedDict()
        for name in outs[0]["attribute_logits"]:
            p = torch.stack([torch.softmax(o["attribute_logits"][name].float(), -1) for o in outs]).mean(0)
            attrs[name] = torch.log(p.clamp_min(1e-12))
        return {"mask_logits": mean("mask_logits"), "low_res_logits": mean("low_res_logits"),
                "iou_pred": mean("iou_pred"), "attribute_logits": attrs}

    def forward(self, image, points=None, labels=None, mask_prompt=None, scribbles=None):
        return self.decode(self.encode_image(image), points, labels, mask_prompt, scribbles)


@dataclass
class LoadedModel:
    """Everything inference needs from a trained model folder."""

    folder: Path
    plans_manager: Any                 # nnunetv2 PlansManager
    configuration_manager: Any         # its 3d_fullres ConfigurationManager
    dataset_json: dict
    schema: "OrderedDict[str, list[str]]"
    network: nn.Module                 # one ISRGModel or an ISRGEnsemble, eval mode, on ``device``
    folds: list[Union[int, str]]
    device: torch.device
    isrg_block: dict = field(default_factory=dict)
    #: attribute -> labelled training cases (the fewest over the folds); None for a checkpoint
    #: written before the trainer recorded it: every attribute then counts as trained
    attribute_support: Optional[dict] = None
    #: the prompts every fold was trained with (``clicks`` only for a checkpoint from before boxes)
    prompt_kinds: tuple[str, ...] = ("clicks",)
    #: attribute -> class -> training cases (summed over the folds): the predictor balances the
    #: attribute probabilities with it; None when a fold has no record (probabilities as they are)
    attribute_class_counts: Optional[dict] = None

    @property
    def untrained_attributes(self) -> list[str]:
        """Attributes the model never had a training label for: never reported as its findings."""
        return untrained_attributes(self.attribute_support)

    @property
    def crop_size(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.network.crop_size)

    @property
    def target_spacing(self) -> list[float]:
        """3d_fullres spacing (in the plans' transposed axis order)."""
        return [float(s) for s in self.configuration_manager.spacing]


def _fold_name(f: Union[int, str]) -> str:
    return "fold_all" if str(f) == "all" else f"fold_{int(f)}"


def available_folds(model_folder: str | Path, checkpoint: str = "checkpoint_final.pth") -> list[Union[int, str]]:
    """Folds of ``model_folder`` that hold ``checkpoint`` (ints, and ``"all"`` for ``fold_all``)."""
    folds: list[Union[int, str]] = []
    for p in sorted(Path(model_folder).glob("fold_*")):
        m = re.fullmatch(r"fold_(\d+|all)", p.name)
        if m and (p / checkpoint).is_file():
            folds.append("all" if m.group(1) == "all" else int(m.group(1)))
    return folds


def _resolve_folds(model_folder: Path, folds: Folds, checkpoint: str) -> list[Union[int, str]]:
    if isinstance(folds, str) and folds in ("all available", "available", "auto"):
        found = available_folds(model_folder, checkpoint)
        if not found:
            raise ModelFolderError(f"{model_folder}: no fold_X/{checkpoint} found; train a fold with nnUNetv2_train "
                                   f"(expected e.g. {model_folder / 'fold_0' / checkpoint})")
        return found
    if isinstance(folds, (int, str)):
        folds = [folds]
    out = []
    for f in folds:
        if str(f) != "all" and not str(f).lstrip("-").isdigit():
            raise ValueError(f"fold {f!r} is not an integer or 'all'")
        out.append("all" if str(f) == "all" else int(f))
    if not out:
        raise ValueError("folds is empty; give fold numbers or 'all available'")
    return out


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path} is missing: a trained model folder needs {what}")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path} is not readable JSON ({e}); it should be {what}") from None


#: checkpoint entries of training-only submodules that the trainer attaches to the network
TRAINING_ONLY_PREFIXES = ("loss_weighting.",)


def _clean_state_dict(state: dict) -> dict:
    # DDP ('module.') and torch.compile ('_orig_mod.') prefixes, as nnU-Net strips them when loading.
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if not k.startswith(TRAINING_ONLY_PREFIXES):
            out[k] = v
    return out


def load_trained_model(model_folder: str | Path, folds: Folds = (0,), checkpoint: str = "checkpoint_final.pth",
                       device: str | torch.device = "cpu") -> LoadedModel:
    """Loads an ISRG model folder trained by ``nnUNetv2_train ... -tr ISRGTrainer*``.

    Args:
        model_folder: ``nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__3d_fullres``.
        folds: fold numbers (``"all"`` for ``fold_all``), or ``"all available"`` for every fold with
            ``checkpoint``. Several folds are averaged (:class:`ISRGEnsemble`).
        checkpoint: file name inside each ``fold_X`` (``checkpoint_final.pth``, ``checkpoint_best.pth``).
        device: torch device for the network(s).
    """
    folder = Path(model_folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist; expected nnUNet_results/DatasetXXX_Name/"
                               f"<Trainer>__<Plans>__{CONFIGURATION} as written by nnUNetv2_train")
    plans = _read_json(folder / "plans.json", "the plans.json that nnUNetv2_train saves next to the folds")
    dataset_json = _read_json(folder / "dataset.json", "the dataset.json that nnUNetv2_train copies next to the folds")
    plans_manager = PlansManager(plans)
    if CONFIGURATION not in plans.get("configurations", {}):
        raise ModelFolderError(f"{folder / 'plans.json'} has no '{CONFIGURATION}' configuration "
                               f"(has {sorted(plans.get('configurations', {}))}); ISRG models are 3d_fullres")
    configuration_manager = plans_manager.get_configuration(CONFIGURATION)
    block = isrg_block_of(configuration_manager.configuration, str(folder / "plans.json"))
    schema = validate_schema(block["schema"], f"{folder / 'plans.json'} isrg schema")
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {"0": "CT"})))

    device = torch.device(device)
    fold_list = _resolve_folds(folder, folds, checkpoint)
    networks, supports, kinds, class_counts = [], [], [], []
    for f in fold_list:
        ckpt = folder / _fold_name(f) / checkpoint
        if not ckpt.is_file():
            have = available_folds(folder, checkpoint)
            others = sorted(p.name for p in (folder / _fold_name(f)).glob("checkpoint*.pth")) \
                if (folder / _fold_name(f)).is_dir() else []
            raise ModelFolderError(
                f"{ckpt} is missing: expected the checkpoint nnUNetv2_train writes for fold {f}. "
                f"Folds with {checkpoint}: {have or 'none'}" + (f"; this fold has {others}" if others else ""))
        try:
            saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        except Exception as e:  # corrupt or truncated file
            raise ModelFolderError(f"{ckpt} could not be read as a torch checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(saved, dict) or "network_weights" not in saved:
            raise ModelFolderError(f"{ckpt} has no 'network_weights'; it is not an nnU-Net checkpoint")
        supports.append(saved.get(ATTRIBUTE_SUPPORT_KEY))
        class_counts.append(saved.get(ATTRIBUTE_CLASS_COUNTS_KEY)
                            or _optional_sidecar(ckpt.parent / ATTRIBUTE_CLASS_COUNTS_FILENAME))
        kinds.append(tuple(saved.get(PROMPT_KINDS_KEY) or ("clicks",)))
        networks.append(_load_weights(build_isrg_network(block, n_channels), saved["network_weights"], ckpt,
                                      folder).to(device).eval())
    network = networks[0] if len(networks) == 1 else ISRGEnsemble(networks).to(device).eval()
    return LoadedModel(folder=folder, plans_manager=plans_manager, configuration_manager=configuration_manager,
                       dataset_json=dataset_json, schema=schema, network=network, folds=fold_list, device=device,
                       isrg_block=dict(block), attribute_support=_fewest_labels(supports, schema),
                       attribute_class_counts=_summed_class_counts(class_counts, schema),
                       prompt_kinds=tuple(k for k in PROMPT_KINDS if all(k in fold for fold in kinds)))


def _load_weights(net: nn.Module, weights: dict, ckpt: Path, folder: Path) -> nn.Module:
    """``weights`` into ``net``; a checkpoint from before boxes and region maps may lack their
    parameters (they keep their initial values, which leave clicks' outputs as they were)."""
    try:
        missing, unexpected = net.load_state_dict(_clean_state_dict(weights), strict=False)
        missing = [k for k in missing if k not in PROMPT_EXTENSION_PARAMETERS]
        detail = f"missing {missing[:6]}, unexpected {unexpected[:6]}" if missing or unexpected else None
    except RuntimeError as e:           # a parameter of another shape
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])
        detail = detail if len(detail) < 400 else detail[:400] + "..."
    if detail:
        raise ModelFolderError(f"{ckpt}: weights do not fit the network described by {folder / 'plans.json'} "
                               f"(trained with another version of the network?): {detail}")
    return net


def _optional_sidecar(path: Path) -> Optional[dict]:
    """The JSON object in ``path``; None when it is missing or unreadable (an optional sidecar)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _summed_class_counts(counts: list, schema) -> Optional[dict]:
    """Per attribute and class, the training cases summed over the folds (the ensemble's prevalence);
    None when a fold has no record (checkpoint key, or the ``attribute_class_counts.json`` the trainer
    writes beside it): its probabilities are then left as the network gives them."""
    if not counts or any(c is None for c in counts):
        return None
    return {name: {cls: sum(int((c.get(name) or {}).get(cls, 0)) for c in counts) for cls in classes}
            for name, classes in schema.items()}


def _fewest_labels(supports: list, schema) -> Optional[dict]:
    """Per attribute, the fewest labelled training cases over the folds; None when any fold's
    checkpoint predates the record (then the ensemble counts as trained on every attribute)."""
    if not supports or any(s is None for s in supports):
        return None
    return {name: min(int(s.get(name, 0)) for s in supports) for name in schema}
