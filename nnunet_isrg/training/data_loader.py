"""Lesion-centred crops on top of nnU-Net's own data loader, and per-sample attribute labels.

The loader is a subclass that changes one thing (where a foreground crop is centred); datasets,
augmentation and multiprocessing stay nnU-Net's. Attribute labels are looked up per sample with
``batch['keys']``, which every nnU-Net batch carries.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_isrg.attributes import encode_case


class LesionCentredDataLoader(nnUNetDataLoader):
    """Foreground crops are centred on the lesion around a sampled lesion voxel, with jitter.

    nnU-Net centres a foreground crop on a random foreground voxel, so large lesions are mostly cut
    by the crop border. Here the centre is the mean of the sampled lesion locations within half a
    crop of that voxel (the lesion's centre for a lesion smaller than the crop), plus Gaussian jitter
    of ``jitter_fraction`` of the crop size, as the paper crops around the lesion centre.
    """

    jitter_fraction = 0.08

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        lbs, ubs = super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        if not force_fg or not class_locations:
            return lbs, ubs
        locations = [v for v in class_locations.values() if len(v) > 0]
        if not locations:
            return lbs, ubs
        locs = np.concatenate(locations, 0)[:, 1:].astype(np.float64)  # drop the channel column
        patch = np.asarray(self.patch_size, dtype=np.float64)
        # nnU-Net put the sampled voxel at the crop centre; recover it and centre on its lesion instead
        seed_voxel = np.asarray(lbs, dtype=np.float64) + patch // 2
        near = np.all(np.abs(locs - seed_voxel) <= patch / 2, axis=1)
        centre = locs[near].mean(0) if near.any() else seed_voxel
        centre = centre + np.random.normal(0, self.jitter_fraction * patch)
        dim = len(data_shape)
        need_to_pad = np.maximum(self.need_to_pad, np.asarray(self.patch_size) - np.asarray(data_shape))
        low = [-(need_to_pad[i] // 2) for i in range(dim)]
        high = [data_shape[i] + need_to_pad[i] // 2 + need_to_pad[i] % 2 - self.patch_size[i] for i in range(dim)]
        new_lbs = [int(np.clip(round(centre[i] - patch[i] / 2), low[i], max(low[i], high[i]))) for i in range(dim)]
        return new_lbs, [new_lbs[i] + self.patch_size[i] for i in range(dim)]


class AttributeLabels:
    """Attribute class indices per case id, ``IGNORE_INDEX`` where unknown (missing case or attribute)."""

    def __init__(self, table: Mapping[str, Mapping[str, str]], schema: Mapping[str, Sequence[str]]):
        self.schema = schema
        self._encoded = {case: encode_case(entry, schema) for case, entry in table.items()}
        self._unknown = encode_case(None, schema)

    def for_keys(self, keys: Sequence[str]) -> torch.Tensor:
        """(B, n_attributes) long tensor for the cases of a batch, in batch order."""
        return torch.from_numpy(np.stack([self._encoded.get(str(k), self._unknown) for k in keys]))
