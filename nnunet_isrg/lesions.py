"""Lesion helpers shared by training, evaluation, inference and the scripts."""
from __future__ import annotations

from typing import Iterable

import cc3d
import numpy as np


def largest_lesion_component(seg: np.ndarray, lesion_labels: Iterable[int]) -> tuple[np.ndarray, int]:
    """The largest 26-connected lesion component of a label map (z, y, x) and its label value.

    Returns an all-False mask and label 0 when the map holds no lesion label.
    """
    lesion = np.isin(seg, list(lesion_labels))
    if not lesion.any():
        return lesion, 0
    cc = cc3d.connected_components(lesion, connectivity=26)
    sizes = np.bincount(cc.ravel())
    sizes[0] = 0
    component = cc == int(np.argmax(sizes))
    label_value = int(np.bincount(seg[component].astype(np.int64)).argmax())
    return component, label_value
