"""The interactive session: click on a lesion, get its mask and structured report, correct, export.

    session = ISRGSession("nnUNet_results/Dataset501_X/ISRGTrainer__nnUNetPlans__3d_fullres", folds=(0,))
    session.set_image("case.nii.gz")                 # or a SimpleITK image, or a DICOM series folder
    state = session.add_click((40, 120, 98))          # voxel (z, y, x) of the ORIGINAL image
    state = session.add_click((41, 130, 98), positive=False)
    session.undo()
    session.new_lesion()
    session.add_click((-12.5, 40.0, 102.0), space="world")   # (x, y, z) mm, LPS, as SimpleITK
    labels = session.label_map()                      # (Z, Y, X) uint16, label = lesion id
    session.set_attribute(1, "density", "Hypodense")  # reader override; the model's prediction is kept
    reports = session.reports()

Coordinates. ``space="voxel"``: a (z, y, x) index of the original image as given to ``set_image``
(numpy / ``sitk.GetArrayFromImage`` order; fractions allowed, integer = voxel centre).
``space="world"``: an (x, y, z) physical point in mm in SimpleITK's (LPS) convention, i.e. what
``image.TransformIndexToPhysicalPoint`` returns. Every mask is a bool (Z, Y, X) array on the
original image grid.

How it runs. Preprocessing is nnU-Net's own for the model's plans (transpose, normalisation,
resampling to the 3d_fullres spacing), applied to a region around the lesion's clicks only
(:mod:`nnunet_isrg.inference.region_preprocessing`). A :class:`CropPredictor` on that region caches
the crop's image embedding, so further clicks on the lesion only decode. When the mask reaches a crop
face that is not the image border, the lesion is followed: the next crop, half a crop further that
way (both ways when it leaves through both faces of an axis), is preprocessed, encoded and predicted
with the same clicks, up to ``follow_steps`` extra crops; each crop decides the voxels no earlier
crop covered. Those crops stay cached, so further clicks on a large lesion decode only. (Zooming out
is not implemented: a lesion wider than the crops allowed is cut at the last crop.)
Lesions never overlap: voxels already claimed by another lesion stay that lesion's.
"""
from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_isrg.attributes import AttributeLabelError, normalise_class, untrained_attributes
from nnunet_isrg.inference.crop_predictor import CropPredictor, centred_bbox
from nnunet_isrg.inference.model_loading import Folds, LoadedModel, load_trained_model
from nnunet_isrg.inference.region_preprocessing import (RegionGeometry, bounding_box, paste_mask, preprocess_region,
                                                        region_box)
from nnunet_isrg.report.dicom_export import read_dicom_series
from nnunet_isrg.report.structured import build_lesion_report

ImageInput = Union[str, os.PathLike, sitk.Image]
SPACES = ("voxel", "world")


class SessionError(ValueError):
    """A session call that cannot be answered (no image, click outside the image, unknown lesion...)."""


# ---------------------------------------------------------------------------------------------------
# image input
# ---------------------------------------------------------------------------------------------------

def read_image(source: ImageInput) -> tuple[sitk.Image, list | None, str]:
    """A NIfTI (or any SimpleITK-readable) file, a DICOM series folder or a SimpleITK image ->
    ``(image as float32 HU, DICOM datasets or None, name)``, validated: 3D, one channel, finite."""
    datasets = None
    if isinstance(source, sitk.Image):
        image, name = source, "<SimpleITK image>"
    else:
        path = Path(source)
        name = str(path)
        if path.is_dir():
            try:
                image, datasets = read_dicom_series(path)
            except Exception as e:  # noqa: BLE001 (any reader failure is an unreadable series)
                raise SessionError(f"{path}: not a readable DICOM CT series ({e})") from None
        elif path.is_file():
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError as e:
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise SessionError(f"{path}: not a readable image ({msg}); give a NIfTI file, a DICOM series "
                                   f"folder or a SimpleITK image") from None
        else:
            raise SessionError(f"{path}: no such file or folder (expected a NIfTI file or a DICOM series folder)")
    if image.GetDimension() != 3:
        raise SessionError(f"{name}: the model needs a 3D CT volume, got a {image.GetDimension()}D image "
                           f"of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SessionError(f"{name}: the model needs a single-channel CT, got {image.GetNumberOfComponentsPerPixel()} "
                           f"components per voxel")
    if min(image.GetSize()) < 1:
        raise SessionError(f"{name}: empty image of size {image.GetSize()}")
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise SessionError(f"{name}: {bad} voxel(s) are NaN or infinite; the CT must hold finite HU values")
    return image, datasets, name


# ---------------------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionClick:
    """One click: ``voxel_zyx`` (continuous index of the original image), ``world_xyz`` (mm, LPS)."""

    voxel_zyx: tuple[float, float, float]
    world_xyz: tuple[float, float, float]
    positive: bool

    def to_dict(self) -> dict:
        return {"voxel_zyx": list(self.voxel_zyx), "world_xyz": list(self.world_xyz), "positive": self.positive}


@dataclass
class _Snapshot:
    """Everything a click changes, so ``undo`` can put it back exactly."""

    clicks: list
    slices: tuple | None
    mask: np.ndarray | None
    attribute_probs: dict
    iou_pred: float
    predictor: Any
    region: Any
    crop_bbox: Any
    low_res: Any


@dataclass
class _Lesion:
    lesion_id: int
    clicks: list = field(default_factory=list)
    slices: tuple | None = None               # bounding box of the mask in the image (z, y, x slices)
    mask: np.ndarray | None = None            # bool mask inside ``slices`` (lesion's own voxels only)
    attribute_probs: dict = field(default_factory=dict)
    iou_pred: float = float("nan")
    overrides: dict = field(default_factory=dict)
    predictor: CropPredictor | None = None
    region: RegionGeometry | None = None
    crop_bbox: list | None = None             # crop in region voxels
    regions: "OrderedDict" = field(default_factory=OrderedDict)  # (start, size) -> (geometry, predictor), LRU
    history: list = field(default_factory=list)
    version: int = 0
    report_cache: tuple | None = None         # (version, overrides, report)

    def snapshot(self) -> _Snapshot:
        # saving each cached crop's mask prompt lets undo continue exactly from the restored round
        prompts = OrderedDict((k, (g, p, p.mask_prompt)) for k, (g, p) in self.regions.items())
        return _Snapshot(list(self.clicks), self.slices, self.mask, dict(self.attribute_probs), self.iou_pred,
                         self.predictor, self.region, self.crop_bbox, prompts)

    def restore(self, s: _Snapshot) -> None:
        self.clicks, self.slices, self.mask = list(s.clicks), s.slices, s.mask
        self.attribute_probs, self.iou_pred = dict(s.attribute_probs), s.iou_pred
        self.predictor, self.region, self.crop_bbox = s.predictor, s.region, s.crop_bbox
        if s.low_res is not None:
            self.regions = OrderedDict((k, (g, p)) for k, (g, p, _) in s.low_res.items())
            for g, p, low_res in s.low_res.values():
                p.mask_prompt = low_res
        self.version += 1

    @property
    def n_voxels(self) -> int:
        return 0 if self.mask is None else int(self.mask.sum())


class LesionState:
    """The current state of one lesion: its mask on the original grid and, on demand, its report.

    ``mask`` is a bool (Z, Y, X) array of the original image (built on first access; ``bbox`` and
    ``mask_in_bbox`` hold the same compactly); ``report`` is the structured report (built on first
    access, since measurements cost more than a click).
    """

    def __init__(self, session: "ISRGSession", lesion: _Lesion):
        self._session = session
        self.lesion_id = lesion.lesion_id
        self.clicks = list(lesion.clicks)
        self.bbox = lesion.slices
        self.mask_in_bbox = lesion.mask
        self.attribute_probs = {k: dict(v) for k, v in lesion.attribute_probs.items()}
        self.iou_pred = lesion.iou_pred
        self.version = lesion.version
        self._mask = None
        self._report = None

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = np.zeros(self._session.image_shape, dtype=bool)
            if self.bbox is not None:
                self._mask[self.bbox] = self.mask_in_bbox
        return self._mask

    @property
    def n_voxels(self) -> int:
        return 0 if self.mask_in_bbox is None else int(self.mask_in_bbox.sum())

    @property
    def report(self):
        if self._report is None:
            self._report = self._session.report(self.lesion_id)
        return self._report

    def __repr__(self) -> str:
        return (f"LesionState(lesion_id={self.lesion_id}, clicks={len(self.clicks)}, voxels={self.n_voxels}, "
                f"iou_pred={self.iou_pred:.3f})")


# ---------------------------------------------------------------------------------------------------
# session
# ---------------------------------------------------------------------------------------------------

class ISRGSession:
    """One reader's interactive session on one image at a time (see the module docstring).

    Args:
        model: a trained model folder (``nnUNet_results/.../<Trainer>__<Plans>__3d_fullres``) or a
            :class:`LoadedModel`.
        folds: folds to load (several are averaged) or ``"all available"``; ignored for a LoadedModel.
        checkpoint: checkpoint file name in each fold folder.
        device: torch device.
        follow_steps: at most this many extra crops per prediction for a lesion that reaches crop faces
            (each new crop is preprocessed and encoded once; 0 switches following off).
        region_margin: extra region on each side of the crop, as a fraction of the crop, preprocessed
            with the first click so that ``CropPredictor`` can shift the crop without a new region.

    ``set_image`` also takes an optional organ label map (SimpleITK image or (Z, Y, X) array on the
    image grid) and organ names, for the reports' location.
    """

    def __init__(self, model: Union[str, os.PathLike, LoadedModel], folds: Folds = (0,),
                 checkpoint: str = "checkpoint_final.pth", device: str | torch.device = "cpu",
                 follow_steps: int = 3, region_margin: float = 0.0):
        self.model = model if isinstance(model, LoadedModel) else load_trained_model(model, folds, checkpoint, device)
        self.schema = self.model.schema
        # labelled training cases per attribute; None (not recorded) counts every attribute as trained
        self.attribute_support = getattr(self.model, "attribute_support", None)
        self.device = torch.device(self.model.device)
        self.follow_steps = int(follow_steps)
        self.region_margin = float(region_margin)
        self.crop_size = self.model.crop_size
        self.image: sitk.Image | None = None
        self.image_name: str | None = None
        self.dicom_datasets: list | None = None
        self.organ_map = None
        self.organ_names = None
        self._array: np.ndarray | None = None
        self._lesions: "OrderedDict[int, _Lesion]" = OrderedDict()
        self._current: int | None = None
        self._encode_calls = 0

    # ------------------------------------------------------------------ image
    def set_image(self, image: ImageInput, organ_map=None, organ_names=None) -> None:
        """Loads the image (NIfTI path, SimpleITK image or DICOM series folder) and clears all lesions."""
        img, datasets, name = read_image(image)
        if organ_map is not None:
            om = organ_map if isinstance(organ_map, sitk.Image) else None
            shape = tuple(reversed(om.GetSize())) if om is not None else np.shape(organ_map)
            if tuple(shape) != tuple(reversed(img.GetSize())):
                raise SessionError(f"{name}: organ map of shape {tuple(shape)} does not match the image grid "
                                   f"{tuple(reversed(img.GetSize()))} (z, y, x)")
        self.image, self.dicom_datasets, self.image_name = img, datasets, name
        self._array = sitk.GetArrayViewFromImage(img)
        self.organ_map, self.organ_names = organ_map, organ_names
        self._lesions = OrderedDict()
        self._current = None
        self.new_lesion()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) of the current image."""
        self._require_image()
        return tuple(int(s) for s in self._array.shape)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        self._require_image()
        return tuple(float(s) for s in reversed(self.image.GetSpacing()))

    def _require_image(self) -> None:
        if self.image is None:
            raise SessionError("no image in this session: call set_image(path | SimpleITK image | DICOM folder) first")

    # ------------------------------------------------------------------ coordinates
    def to_voxel(self, point: Sequence[float], space: str = "voxel") -> np.ndarray:
        """A click point in ``space`` -> continuous (z, y, x) index of the original image (checked inside)."""
        self._require_image()
        if space not in SPACES:
            raise SessionError(f"unknown coordinate space {space!r}; use 'voxel' (z, y, x index of the original "
                               f"image) or 'world' (x, y, z mm, LPS as SimpleITK)")
        p = np.asarray(point, dtype=float).ravel()
        if p.shape != (3,) or not np.isfinite(p).all():
            raise SessionError(f"a click point needs three finite coordinates, got {point!r}")
        if space == "world":
            zyx = np.asarray(self.image.TransformPhysicalPointToContinuousIndex([float(v) for v in p]))[::-1]
        else:
            zyx = p
        shape = np.asarray(self.image_shape)
        if np.any(zyx < -0.5) or np.any(zyx > shape - 0.5):
            where = f"world point (x, y, z) {tuple(p)} mm = voxel (z, y, x) {tuple(np.round(zyx, 2))}" \
                if space == "world" else f"voxel (z, y, x) {tuple(p)}"
            raise SessionError(f"click at {where} is outside the image {self.image_name} of shape (z, y, x) "
                               f"{tuple(shape)}")
        return zyx

    def to_world(self, zyx: Sequence[float]) -> np.ndarray:
        """Continuous (z, y, x) index -> (x, y, z) mm."""
        self._require_image()
        return np.asarray(self.image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))

    # ------------------------------------------------------------------ lesions
    @property
    def current_lesion_id(self) -> int:
        self._require_image()
        return self._current

    @property
    def lesion_ids(self) -> list[int]:
        """Ids of lesions that have clicks."""
        return [i for i, l in self._lesions.items() if l.clicks]

    def _lesion(self, lesion_id: int | None = None) -> _Lesion:
        self._require_image()
        lid = self._current if lesion_id is None else lesion_id
        try:
            return self._lesions[int(lid)]
        except (KeyError, TypeError, ValueError):
            raise SessionError(f"no lesion {lesion_id!r} in this session; lesions: {self.lesion_ids}") from None

    def new_lesion(self) -> int:
        """Starts a new lesion (the current one is kept as it is); returns its id. A current lesion
        without clicks is reused."""
        self._require_image()
        if self._current is not None and not self._lesions[self._current].clicks:
            return self._current
        if self._current is not None:
            self._drop_predictor(self._lesions[self._current])
        lid = max(self._lesions, default=0) + 1
        self._lesions[lid] = _Lesion(lid)
        self._current = lid
        return lid

    def select_lesion(self, lesion_id: int) -> LesionState:
        """Makes an existing lesion current again, to correct it with more clicks."""
        lesion = self._lesion(lesion_id)
        if self._current is not None and self._current != lesion.lesion_id:
            cur = self._lesions[self._current]
            if not cur.clicks:
                del self._lesions[self._current]
            else:
                self._drop_predictor(cur)
        self._current = lesion.lesion_id
        return LesionState(self, lesion)

    @property
    def encode_calls(self) -> int:
        """Image encodings (crop embeddings) computed so far in this session, all lesions and images."""
        return self._encode_calls

    @staticmethod
    def _drop_predictor(lesion: _Lesion) -> None:
        # A lesion that is no longer current keeps no region or embedding (memory); its undo history
        # keeps the masks, and a later click on it preprocesses again.
        lesion.predictor, lesion.region, lesion.crop_bbox = None, None, None
        lesion.regions.clear()
        for s in lesion.history:
            s.predictor, s.region, s.crop_bbox, s.low_res = None, None, None, None

    # ------------------------------------------------------------------ clicks
    def add_click(self, point: Sequence[float], positive: bool = True, space: str = "voxel") -> LesionState:
        """Adds a click to the current lesion and predicts it again.

        Args:
            point: (z, y, x) voxel index of the ORIGINAL image for ``space="voxel"``; (x, y, z) mm in
                SimpleITK's physical (LPS) space for ``space="world"``.
            positive: True for "this is lesion", False for "this is not".
        Returns:
            the lesion's new :class:`LesionState` (mask on the original grid, report on demand).
        """
        if self.image is None:
            raise SessionError("no image in this session: call set_image(path | SimpleITK image | DICOM folder) "
                               "before add_click")
        zyx = self.to_voxel(point, space)
        lesion = self._lesion()
        if not lesion.clicks and not positive:
            raise SessionError("the first click on a lesion must be positive (it places the lesion)")
        click = SessionClick(tuple(float(v) for v in zyx), tuple(float(v) for v in self.to_world(zyx)), bool(positive))
        lesion.history.append(lesion.snapshot())
        try:
            lesion.clicks.append(click)
            self._predict(lesion)
        except Exception:
            lesion.restore(lesion.history.pop())
            raise
        lesion.version += 1
        return LesionState(self, lesion)

    def _min_region_shape(self) -> tuple[int, ...]:
        # the crop plus ``region_margin`` of it on each side, room for CropPredictor's own shifts; by
        # default none, since resampling (spline order 3) costs more than re-extracting for the rarer
        # lesions that outgrow a crop
        return tuple(int(s + 2 * math.ceil(self.region_margin * s)) for s in self.crop_size)

    #: preprocessed regions (with their cached embeddings) kept per lesion, least recently used dropped
    max_cached_regions = 8

    def _use_region(self, lesion: _Lesion, center_zyx: np.ndarray) -> None:
        """Makes the region centred on ``center_zyx`` current (preprocessing it unless cached) with the
        crop centred there."""
        key = tuple(map(tuple, region_box(center_zyx, self._min_region_shape(), self.image_shape, self.spacing_zyx,
                                          self.model.plans_manager, self.model.configuration_manager)))
        if key in lesion.regions:
            lesion.regions.move_to_end(key)
            geom, predictor = lesion.regions[key]
        else:
            data, geom = preprocess_region(self._array, self.spacing_zyx, center_zyx, self._min_region_shape(),
                                           self.model.plans_manager, self.model.configuration_manager)
            # CropPredictor's own shifting only has room with a region margin; without one the border
            # voxels are there for interpolation, and following is done here, crop by crop
            predictor = CropPredictor(self.model.network, self.schema, data, self.device,
                                      follow_lesion=self.region_margin > 0,
                                      untrained_attributes=untrained_attributes(self.attribute_support))
            lesion.regions[key] = (geom, predictor)
            while len(lesion.regions) > self.max_cached_regions:
                lesion.regions.popitem(last=False)
        lesion.region, lesion.predictor = geom, predictor
        lesion.crop_bbox = centred_bbox(geom.original_to_region(center_zyx), self.crop_size, geom.shape)

    def _run_predictor(self, lesion: _Lesion, points: np.ndarray):
        geom, predictor = lesion.region, lesion.predictor
        clicks = [(tuple(p), c.positive) for p, c in zip(geom.original_to_region(points), lesion.clicks)]
        before = predictor.encode_calls
        try:
            pred = predictor.predict(clicks, bbox=lesion.crop_bbox)
        finally:
            self._encode_calls += predictor.encode_calls - before
        lesion.crop_bbox = pred.bbox
        return pred

    def _predict(self, lesion: _Lesion) -> None:
        points = np.array([c.voxel_zyx for c in lesion.clicks])
        if len(points) == 1:
            # a first click places the region and the crop around itself, so a lesion's result does not
            # depend on what was clicked before (a cached region with the same box is reused)
            self._use_region(lesion, points[0])
        elif lesion.region is None or not lesion.region.contains(points):
            # a click beyond the preprocessed region: a region around all the lesion's clicks
            self._use_region(lesion, (points.min(0) + points.max(0)) / 2)
        home = (lesion.region, lesion.predictor, lesion.crop_bbox)
        pred = self._run_predictor(lesion, points)
        home = (home[0], home[1], lesion.crop_bbox)
        first = pred
        pieces = [(lesion.region, pred)]
        seen = {(id(lesion.predictor), str(pred.bbox))}
        # follow the mask out of the crop, one crop at a time, along each direction it leaves through
        # (both ways on an axis where it leaves through both faces), ``follow_steps`` crops at most
        queue = [(lesion.region, pred, sh) for sh in self._follow_shifts(pred, lesion.region, (0, 0, 0))]
        budget = self.follow_steps
        while queue and budget > 0:
            geom, prev, shift = queue.pop(0)
            centre_r = np.array([(b0 + b1 - 1) / 2 for b0, b1 in prev.bbox]) + np.array(shift)
            self._use_region(lesion, geom.region_to_original(centre_r))
            if (id(lesion.predictor), str(lesion.crop_bbox)) in seen:
                continue
            budget -= 1
            nxt = self._run_predictor(lesion, points)
            seen.add((id(lesion.predictor), str(nxt.bbox)))
            pieces.append((lesion.region, nxt))
            queue += [(lesion.region, nxt, sh) for sh in self._follow_shifts(nxt, lesion.region, shift)]
        # the next click starts again from the crop around the clicks, with its mask prompt
        lesion.region, lesion.predictor, lesion.crop_bbox = home
        pasted = self._combine_pieces(pieces)
        if pasted is not None:
            slices, mask = pasted
            pasted = _shrink(slices, mask & ~self._claimed(slices, exclude=lesion.lesion_id))
        lesion.slices, lesion.mask = pasted if pasted is not None else (None, None)
        lesion.attribute_probs = first.attribute_probs
        lesion.iou_pred = first.iou_pred

    def _combine_pieces(self, pieces: list):
        """Masks of successive crops on the original grid: each crop decides the voxels inside it that no
        earlier crop covered (the first crop, around the clicks, has the last word where they overlap)."""
        pasted = [(geom, pred, paste_mask(geom, pred.logits, pred.bbox, self.model.configuration_manager))
                  for geom, pred in pieces]
        if len(pasted) == 1:
            return pasted[0][2]
        boxes = [_crop_box_original(geom, pred.bbox) for geom, pred, _ in pasted]
        lo = np.min([[s.start for s in b] for b in boxes], 0)
        hi = np.max([[s.stop for s in b] for b in boxes], 0)
        out = np.zeros(hi - lo, dtype=bool)
        decided = np.zeros(hi - lo, dtype=bool)
        for (geom, pred, res), box in zip(pasted, boxes):
            local = tuple(slice(b.start - l, b.stop - l) for b, l in zip(box, lo))
            if res is not None:
                sl, m = res
                tmp = np.zeros(hi - lo, dtype=bool)
                tmp[tuple(slice(a.start - l, a.stop - l) for a, l in zip(sl, lo))] = m
                out |= tmp & ~decided
            decided[local] = True
        return _shrink(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), out)

    def _follow_shifts(self, pred, geom: RegionGeometry, came_from: Sequence[int]) -> list[list[int]]:
        """Region-voxel shifts (half a crop per axis) towards the crop faces the mask touches, leaving out
        faces on the image border and the face the previous step came through (``came_from``, that step's
        shift, is already covered). An axis touched on both faces gives two shifts (one each way)."""
        crop_mask = pred.logits > 0
        border = geom.at_image_border()
        options = []
        for ax, ((lo, hi), s, m) in enumerate(zip(pred.bbox, self.crop_size, geom.shape)):
            low = lo <= 0 and not border[ax][0] and came_from[ax] <= 0 and bool(crop_mask.narrow(ax, 0, 1).any())
            high = hi >= m and not border[ax][1] and came_from[ax] >= 0 and bool(crop_mask.narrow(ax, s - 1, 1).any())
            options.append([d for d, on in ((-(s // 2), low), (s // 2, high)) if on] or [0])
        if all(o == [0] for o in options):
            return []
        return [list(c) for c in itertools.product(*options)]

    def _claimed(self, slices: tuple, exclude: int) -> np.ndarray:
        """Voxels inside ``slices`` that belong to lesions other than ``exclude``."""
        out = np.zeros(tuple(s.stop - s.start for s in slices), dtype=bool)
        for lid, other in self._lesions.items():
            if lid == exclude or other.slices is None:
                continue
            inter = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(slices, other.slices)]
            if any(s.start >= s.stop for s in inter):
                continue
            dst = tuple(slice(i.start - a.start, i.stop - a.start) for i, a in zip(inter, slices))
            src = tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, other.slices))
            out[dst] |= other.mask[src]
        return out

    def undo(self) -> LesionState:
        """Takes back the last click (or reset) of the current lesion; its previous mask comes back exactly."""
        lesion = self._lesion()
        if not lesion.history:
            raise SessionError(f"lesion {lesion.lesion_id} has nothing to undo")
        lesion.restore(lesion.history.pop())
        return LesionState(self, lesion)

    def reset(self) -> LesionState:
        """Clears the current lesion's clicks and mask (undo brings them back)."""
        lesion = self._lesion()
        if lesion.clicks:
            lesion.history.append(lesion.snapshot())
            lesion.clicks, lesion.slices, lesion.mask = [], None, None
            lesion.attribute_probs, lesion.iou_pred = {}, float("nan")
            for _, predictor in lesion.regions.values():
                predictor.reset()
            lesion.version += 1
        return LesionState(self, lesion)

    def state(self, lesion_id: int | None = None) -> LesionState:
        return LesionState(self, self._lesion(lesion_id))

    def label_map(self) -> np.ndarray:
        """All lesions of the image: (Z, Y, X) uint16, 0 background, lesion id elsewhere."""
        self._require_image()
        out = np.zeros(self.image_shape, dtype=np.uint16)
        for lid, lesion in self._lesions.items():
            if lesion.slices is not None:
                view = out[lesion.slices]
                view[lesion.mask & (view == 0)] = lid  # masks are disjoint; the guard keeps earlier ones anyway
        return out

    def label_image(self) -> sitk.Image:
        """:meth:`label_map` as a SimpleITK image with the input's geometry."""
        img = sitk.GetImageFromArray(self.label_map())
        img.CopyInformation(self.image)
        return img

    # ------------------------------------------------------------------ attributes and reports
    def set_attribute(self, lesion_id: int | None, name: str, value: str | None) -> None:
        """Reader override of one attribute (``value=None`` removes it); the model's prediction is kept."""
        lesion = self._lesion(lesion_id)
        if name not in self.schema:
            raise SessionError(f"lesion {lesion.lesion_id}: unknown attribute '{name}'; allowed attributes: "
                               f"{list(self.schema)}")
        if value is None:
            lesion.overrides.pop(name, None)
            return
        try:
            lesion.overrides[name] = normalise_class(self.schema, name, value, case=f"lesion {lesion.lesion_id}",
                                                     source="set_attribute")
        except AttributeLabelError as e:
            raise SessionError(str(e)) from None

    def report(self, lesion_id: int | None = None):
        """The structured report (:class:`nnunet_isrg.report.structured.LesionReport`) of a lesion."""
        lesion = self._lesion(lesion_id)
        if lesion.mask is None:
            raise SessionError(f"lesion {lesion.lesion_id} has no mask yet (clicks: {len(lesion.clicks)}); "
                               f"add a positive click on it first")
        key = (lesion.version, tuple(sorted(lesion.overrides.items())))
        if lesion.report_cache is not None and lesion.report_cache[0] == key:
            return lesion.report_cache[1]
        mask = np.zeros(self.image_shape, dtype=bool)
        mask[lesion.slices] = lesion.mask
        rep = build_lesion_report(self.image, mask, lesion.attribute_probs, [c.to_dict() for c in lesion.clicks],
                                  lesion_id=f"lesion_{lesion.lesion_id}", overrides=lesion.overrides,
                                  organ_map=self.organ_map, organ_names=self.organ_names, schema=self.schema,
                                  label=lesion.lesion_id, attribute_support=self.attribute_support)
        lesion.report_cache = (key, rep)
        return rep

    def reports(self) -> list:
        """Reports of every lesion with a mask, in lesion id order."""
        return [self.report(lid) for lid, l in self._lesions.items() if l.mask is not None]


def _crop_box_original(geom: RegionGeometry, bbox) -> tuple[slice, slice, slice]:
    """(z, y, x) slices of the original voxels whose centres lie inside a crop (region voxels, half open)."""
    scale, start = geom.scale, np.asarray(geom.start)
    # region voxel k spans [k - 0.5, k + 0.5); its faces sit at start + k * scale - 0.5 in original voxels
    lo = np.array([b[0] for b in bbox], float)
    hi = np.array([b[1] for b in bbox], float)
    o_lo = np.ceil(start + lo * scale - 0.5 - 1e-9)
    o_hi = np.ceil(start + hi * scale - 0.5 - 1e-9)
    shape_t = geom.image_shape_t
    sl_t = [slice(int(max(a, 0)), int(min(b, n))) for a, b, n in zip(o_lo, o_hi, shape_t)]
    return tuple(sl_t[i] for i in geom.transpose_backward)


def _shrink(slices: tuple, mask: np.ndarray):
    """(slices, mask) cut to the mask's bounding box; None if empty."""
    box = bounding_box(mask)
    if box is None:
        return None
    lo, hi = box
    return (tuple(slice(s.start + a, s.start + b) for s, a, b in zip(slices, lo, hi)),
            np.ascontiguousarray(mask[tuple(slice(a, b) for a, b in zip(lo, hi))]))
