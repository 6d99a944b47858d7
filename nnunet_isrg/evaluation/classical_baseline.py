"""What a reader without deep learning uses: seeded region growing and threshold + connected
component at the clicks, the seed tools of 3D Slicer's Segment Editor, run through the same
click protocol as the model.

Both grow a 26-connected region from the positive clicks through an intensity interval:

- ``region_growing``: SimpleITK's ``ConfidenceConnected`` (the interval is the mean of the seeds'
  neighbourhood +- ``multiplier`` standard deviations, re-estimated from the region ``iterations``
  times).
- ``threshold``: SimpleITK's ``ConnectedThreshold`` with the interval [lowest seed value - t,
  highest seed value + t], t = ``width`` standard deviations of the image in a ball of
  ``radius_mm`` around the seeds.

Both intervals are relative to the image's own spread, so a setting carries over between HU and
nnU-Net's normalised intensities. A negative click trims the region: every voxel nearer (in mm) to
a negative click than to every positive click is dropped, and only the parts that hold a positive
click are kept. Settings are chosen per fold on the training cases (:func:`choose_setting`);
:func:`run_classical_folds` cross-validates the baseline as a trained model is cross-validated
(``isrg compare --classical-baseline`` runs it on nnU-Net's preprocessed cases).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .protocol import CaseResult, Click, PredictFn, run_interactive_protocol

METHODS = ("region_growing", "threshold")


@dataclass(frozen=True)
class ClassicalSetting:
    """One method with its parameters (``params`` as in the module docstring)."""
    method: str
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown classical method '{self.method}'; choose one of {METHODS}")

    @property
    def name(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))
        return f"{self.method}({args})"


#: the settings tried per fold; the one with the best mean Dice after the last click on the
#: training cases is used on the validation cases
DEFAULT_SETTINGS: tuple[ClassicalSetting, ...] = (
    *(ClassicalSetting("region_growing", {"multiplier": m, "iterations": 2, "radius": 1}) for m in (1.5, 2.5, 3.5)),
    *(ClassicalSetting("threshold", {"width": w, "radius_mm": 10.0}) for w in (0.5, 1.0, 2.0)),
)


def _grow(image: sitk.Image, seeds: list[tuple[int, int, int]], setting: ClassicalSetting,
          spacing_zyx: Sequence[float]) -> np.ndarray:
    """The region grown from ``seeds`` (z, y, x voxels) as a bool (z, y, x) array."""
    index_xyz = [tuple(int(c) for c in reversed(s)) for s in seeds]
    p = setting.params
    if setting.method == "region_growing":
        grown = sitk.ConfidenceConnected(image, seedList=index_xyz, numberOfIterations=int(p.get("iterations", 2)),
                                         multiplier=float(p.get("multiplier", 2.5)),
                                         initialNeighborhoodRadius=int(p.get("radius", 1)), replaceValue=1)
    else:
        values = sitk.GetArrayViewFromImage(image)
        ball = _ball_around(values.shape, seeds, float(p.get("radius_mm", 10.0)), spacing_zyx)
        spread = float(values[ball].std())
        seed_values = [float(values[s]) for s in seeds]
        t = float(p.get("width", 1.0)) * spread
        grown = sitk.ConnectedThreshold(image, seedList=index_xyz, lower=min(seed_values) - t,
                                        upper=max(seed_values) + t, replaceValue=1)
    return sitk.GetArrayFromImage(grown).astype(bool)


def _ball_around(shape: Sequence[int], seeds: Iterable[Sequence[int]], radius_mm: float,
                 spacing_zyx: Sequence[float]) -> np.ndarray:
    marks = np.zeros(shape, dtype=bool)
    for s in seeds:
        marks[tuple(s)] = True
    return ndimage.distance_transform_edt(~marks, sampling=spacing_zyx) <= radius_mm


def trim_by_negative_clicks(region: np.ndarray, positives: Sequence[Sequence[int]],
                            negatives: Sequence[Sequence[int]], spacing_zyx: Sequence[float]) -> np.ndarray:
    """``region`` without the voxels nearer (mm) to a negative click than to every positive one,
    keeping only the 26-connected parts that hold a positive click."""
    if not negatives or not region.any():
        return region

    def nearest_mm(points):
        marks = np.zeros(region.shape, dtype=bool)
        for p in points:
            marks[tuple(p)] = True
        return ndimage.distance_transform_edt(~marks, sampling=spacing_zyx)

    kept = region & (nearest_mm(positives) <= nearest_mm(negatives))
    labels = cc3d.connected_components(kept, connectivity=26)
    holding = {int(labels[tuple(p)]) for p in positives} - {0}
    return np.isin(labels, list(holding)) if holding else np.zeros_like(region)


def classical_predict_fn(image: np.ndarray, spacing_zyx: Sequence[float], setting: ClassicalSetting) -> PredictFn:
    """A protocol ``predict_fn`` for the image (z, y, x; HU or normalised) that segments from the
    clicks with ``setting``; it predicts no attributes."""
    sitk_image = sitk.GetImageFromArray(np.asarray(image, dtype=np.float32))
    sitk_image.SetSpacing([float(s) for s in reversed(spacing_zyx)])

    def predict(clicks: list[Click]) -> tuple[np.ndarray, None]:
        positives = [tuple(int(c) for c in p) for p, positive in clicks if positive]
        negatives = [tuple(int(c) for c in p) for p, positive in clicks if not positive]
        if not positives:
            return np.zeros(image.shape, dtype=bool), None
        region = _grow(sitk_image, positives, setting, spacing_zyx)
        return trim_by_negative_clicks(region, positives, negatives, spacing_zyx), None

    return predict


@dataclass
class ClassicalCase:
    """One lesion to segment: the image and the lesion mask (z, y, x), spacing in mm."""
    case_id: str
    image: np.ndarray
    lesion: np.ndarray
    spacing_zyx: Sequence[float]


def run_classical_baseline(cases: Sequence[ClassicalCase], setting: ClassicalSetting,
                           n_clicks: int = 5) -> list[CaseResult]:
    """The click protocol with ``setting`` on each case."""
    return [run_interactive_protocol(classical_predict_fn(c.image, c.spacing_zyx, setting), c.lesion, c.spacing_zyx,
                                     n_clicks=n_clicks, case_id=c.case_id, keep_final_mask=False) for c in cases]


def choose_setting(training_cases: Sequence[ClassicalCase], settings: Sequence[ClassicalSetting] = DEFAULT_SETTINGS,
                   n_clicks: int = 5, progress: Callable[[str], None] | None = None
                   ) -> tuple[ClassicalSetting, dict[str, float]]:
    """The setting with the best mean Dice after ``n_clicks`` on ``training_cases``, and every
    setting's mean Dice (by name)."""
    if not training_cases:
        raise ValueError("choosing a classical setting needs at least one training case")
    scores = {}
    for setting in settings:
        results = run_classical_baseline(training_cases, setting, n_clicks)
        scores[setting.name] = float(np.mean([r.dice[-1] for r in results]))
        if progress:
            progress(f"{setting.name}: mean Dice {scores[setting.name]:.3f} on {len(training_cases)} training cases")
    best = max(settings, key=lambda s: scores[s.name])
    return best, scores


# ------------------------------------------------------------------------------------------ per fold
#: at most this many of a fold's training cases choose its setting (evenly spread over the sorted
#: case ids): each setting runs the whole click protocol on each of them
MAX_TRAINING_CASES = 100


def spread_subset(ids: Sequence[str], max_n: int | None) -> list[str]:
    """At most ``max_n`` of ``ids`` (sorted), evenly spread over them; all of them when ``max_n`` is None or 0."""
    ids = sorted(ids)
    if not max_n or len(ids) <= max_n:
        return ids
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, int(max_n)).round().astype(int)]


@dataclass
class ClassicalFold:
    """The classical baseline on one cross-validation fold: the setting its training cases chose
    and the click protocol's results on its validation cases."""
    fold: int
    setting: ClassicalSetting
    training_mean_dice: dict[str, float]  # setting name -> mean Dice after the last click on the choosing cases
    training_cases: list[str]             # the training cases that chose (with a lesion; maybe a spread subset)
    n_training_cases: int                 # training cases of the split with a lesion
    results: list[CaseResult] = field(repr=False)

    def to_dict(self) -> dict:
        return {"setting": self.setting.name, "method": self.setting.method, "params": dict(self.setting.params),
                "training_mean_dice": dict(self.training_mean_dice), "n_training_cases_used": len(self.training_cases),
                "n_training_cases": self.n_training_cases, "n_validation_cases": len(self.results)}


def run_classical_folds(load_case: Callable[[str], ClassicalCase | None], splits: Sequence[Mapping[str, Sequence[str]]],
                        folds: Sequence[int], val_cases: Mapping[int, Sequence[str]] | None = None, n_clicks: int = 5,
                        settings: Sequence[ClassicalSetting] = DEFAULT_SETTINGS,
                        max_training_cases: int | None = MAX_TRAINING_CASES,
                        progress: Callable[[str], None] | None = None) -> dict[int, ClassicalFold]:
    """The classical baseline per fold, as a trained model is cross-validated: for each fold, the
    setting with the best mean Dice after ``n_clicks`` on the fold's training cases
    (:func:`choose_setting`; at most ``max_training_cases`` of them, :func:`spread_subset`), then
    the click protocol with that setting on the fold's validation cases.

    ``load_case(case_id)``: the case's image and target lesion on the grid the models are scored on,
    or None for a case without a lesion (skipped, as the click protocol skips it). ``splits``:
    nnU-Net's ``splits_final.json`` content; ``val_cases[fold]`` (default the split's ``val``) are
    the cases to score, e.g. those the compared models were validated on.
    """
    say = progress or (lambda _msg: None)
    out: dict[int, ClassicalFold] = {}
    for f in folds:
        f = int(f)
        val_ids = sorted(val_cases[f]) if val_cases is not None else sorted(splits[f]["val"])
        overlap = set(val_ids) & set(splits[f]["train"])
        if overlap:
            raise ValueError(f"fold {f}: validation case(s) {sorted(overlap)[:5]} are training cases of the split")
        # every training case is read once to know which hold a lesion; only the choosing ones are kept
        with_lesion = [c.case_id for c in map(load_case, sorted(splits[f]["train"])) if c is not None]
        chosen_on = spread_subset(with_lesion, max_training_cases)
        say(f"classical baseline, fold {f}: choosing among {len(settings)} settings on {len(chosen_on)} of "
            f"{len(with_lesion)} training cases")
        best, scores = choose_setting([load_case(k) for k in chosen_on], settings, n_clicks, progress)
        val = [c for c in map(load_case, val_ids) if c is not None]
        say(f"classical baseline, fold {f}: {best.name} on {len(val)} validation cases")
        out[f] = ClassicalFold(f, best, scores, chosen_on, len(with_lesion), run_classical_baseline(val, best, n_clicks))
    return out
