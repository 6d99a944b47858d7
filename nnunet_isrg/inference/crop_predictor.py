"""Click-driven prediction of one lesion inside a preprocessed volume, caching the crop's embedding.

All coordinates here are voxel indices (z, y, x) of the *preprocessed* volume (nnU-Net's target
spacing, normalised intensities). The crop is placed around the lesion's first click; later clicks
on the same crop only run the decoder. When the mask reaches a crop face that is not an image border
the crop is moved towards it and the lesion predicted again (``follow_lesion``), so lesions larger
than one crop are not cut at the crop edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

Click = tuple[Sequence[float], bool]  # ((z, y, x) voxel, positive?)


@dataclass
class CropPrediction:
    """Result of one prediction: the lesion mask in the whole volume and the crop it came from."""

    mask: np.ndarray                      # (Z, Y, X) bool, whole preprocessed volume
    logits: torch.Tensor                  # (D, H, W) float32 mask logits of the crop (CPU)
    bbox: list[list[int]]                 # crop [[z0, z1], [y0, y1], [x0, x1]] in volume voxels (half open)
    attribute_probs: dict[str, dict[str, float]] = field(default_factory=dict)
    iou_pred: float = float("nan")
    n_encodes: int = 0                    # image encodings this prediction needed (0 when cached)


def centred_bbox(centre: Sequence[float], crop_size: Sequence[int], volume_shape: Sequence[int]) -> list[list[int]]:
    """A crop of ``crop_size`` around ``centre``, shifted to lie inside the volume where it fits."""
    bbox = []
    for c, s, n in zip(centre, crop_size, volume_shape):
        lo = int(round(c - s / 2))
        lo = min(max(lo, 0), n - s) if n >= s else -((s - n) // 2)
        bbox.append([lo, lo + s])
    return bbox


class CropPredictor:
    """Runs an ISRG model on crops of one preprocessed volume; the image embedding is cached per crop.

    Args:
        model: an ``ISRGModel`` (``encode_image``/``decode``) in eval mode.
        schema: attribute schema {name: [classes]} to name the attribute probabilities.
        volume: (C, Z, Y, X) normalised preprocessed image.
        untrained_attributes: attributes the model has no training label for; their head's output
            is an untrained guess and is left out of ``attribute_probs``.
    """

    def __init__(self, model: torch.nn.Module, schema, volume: torch.Tensor | np.ndarray,
                 device: torch.device | str = "cpu", follow_lesion: bool = True, max_follow_steps: int = 2,
                 untrained_attributes: Sequence[str] = ()):
        self.model = model
        self.schema = schema
        self.untrained_attributes = frozenset(untrained_attributes)
        self.device = torch.device(device)
        self.crop_size = tuple(int(s) for s in model.crop_size)
        volume = torch.as_tensor(np.asarray(volume) if not torch.is_tensor(volume) else volume, dtype=torch.float32)
        if volume.ndim != 4:
            raise ValueError(f"volume must be (C, Z, Y, X), got shape {tuple(volume.shape)}")
        self.volume = volume
        self.follow_lesion = follow_lesion
        self.max_follow_steps = max_follow_steps
        self.encode_calls = 0
        self._cache_bbox: list[list[int]] | None = None
        self._cache_embedding: Any = None  # what model.encode_image returns (an ImageEmbedding for an ISRGModel)
        self._low_res: torch.Tensor | None = None       # previous round's low-res logits, for the same crop

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape[1:])

    @property
    def mask_prompt(self) -> torch.Tensor | None:
        """The previous round's low-res logits, fed back with the next click (None for a new lesion).

        Undo in a session saves and restores it, so the next click sees the prompt it saw before.
        """
        return self._low_res

    @mask_prompt.setter
    def mask_prompt(self, value: torch.Tensor | None) -> None:
        self._low_res = value

    def reset(self) -> None:
        """Forget the previous mask prompt (a new lesion); the embedding cache stays valid for its crop."""
        self._low_res = None

    def _embedding(self, bbox: list[list[int]]) -> Any:
        if self._cache_bbox != bbox:
            crop = crop_and_pad_nd(self.volume, bbox, 0)[None].to(self.device)
            with torch.no_grad():
                self._cache_embedding = self.model.encode_image(crop)
            self._cache_bbox = [list(b) for b in bbox]
            self.encode_calls += 1
            self._low_res = None  # a mask prompt belongs to the crop it was predicted on
        return self._cache_embedding

    @torch.no_grad()
    def _decode(self, bbox, clicks: Sequence[Click]):
        emb = self._embedding(bbox)
        lo = np.array([b[0] for b in bbox], dtype=np.float32)
        hi = lo + np.array(self.crop_size, dtype=np.float32) - 1
        # Clicks outside the crop cannot be encoded as points of it; they are clamped to its face,
        # which keeps their direction (e.g. a positive click beyond the border pulls the mask there).
        pts = np.clip(np.array([c[0] for c in clicks], dtype=np.float32), lo, hi) - lo
        points = torch.from_numpy(pts)[None].to(self.device)
        labels = torch.tensor([[1 if c[1] else 0 for c in clicks]], dtype=torch.long, device=self.device)
        out = self.model.decode(emb, points, labels, self._low_res)
        return out

    def predict(self, clicks: Sequence[Click], bbox: list[list[int]] | None = None) -> CropPrediction:
        """Predicts the lesion given all its clicks so far (the first click places the crop)."""
        if not clicks:
            raise ValueError("predict needs at least one click")
        encodes_before = self.encode_calls
        if bbox is None:
            bbox = self._cache_bbox if self._cache_bbox is not None and self._low_res is not None \
                else centred_bbox(clicks[0][0], self.crop_size, self.shape)
        out = self._decode(bbox, clicks)
        for _ in range(self.max_follow_steps if self.follow_lesion else 0):
            shift = self._shift_towards_cut(out["mask_logits"][0, 0] > 0, bbox)
            if not any(shift):
                break
            bbox = [[b[0] + s, b[1] + s] for b, s in zip(bbox, shift)]
            out = self._decode(bbox, clicks)
        self._low_res = out["low_res_logits"]
        logits = out["mask_logits"][0, 0].float().cpu()
        mask = np.zeros(self.shape, dtype=bool)
        src, dst = [], []
        for (lo, hi), n in zip(bbox, self.shape):
            a, b = max(lo, 0), min(hi, n)
            dst.append(slice(a, b))
            src.append(slice(a - lo, b - lo))
        mask[tuple(dst)] = (logits[tuple(src)] > 0).numpy()
        probs = {name: dict(zip(self.schema[name], torch.softmax(l[0].float(), 0).cpu().tolist()))
                 for name, l in out["attribute_logits"].items() if name not in self.untrained_attributes}
        return CropPrediction(mask=mask, logits=logits, bbox=[list(b) for b in bbox], attribute_probs=probs,
                              iou_pred=float(out["iou_pred"][0, 0]), n_encodes=self.encode_calls - encodes_before)

    def _shift_towards_cut(self, crop_mask: torch.Tensor, bbox) -> list[int]:
        """Voxel shift per axis that moves the crop towards faces the mask touches (0 at image borders)."""
        shift = []
        for axis, ((lo, hi), n, s) in enumerate(zip(bbox, self.shape, self.crop_size)):
            low_face = crop_mask.narrow(axis, 0, 1).any().item() and lo > 0
            high_face = crop_mask.narrow(axis, s - 1, 1).any().item() and hi < n
            step = s // 4
            if low_face and not high_face:
                shift.append(-min(step, lo))
            elif high_face and not low_face:
                shift.append(min(step, n - hi))
            else:
                shift.append(0)
        return shift
