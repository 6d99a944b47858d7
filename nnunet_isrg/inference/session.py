"""The interactive session: click on a lesion, get its mask and structured report, correct, export.

    session = ISRGSession("nnUNet_results/Dataset501_X/ISRGTrainer__nnUNetPlans__3d_fullres", folds=(0,))
    session.set_image("case.nii.gz")                 # or a SimpleITK image, or a DICOM series folder
    state = session.add_click((40, 120, 98))          # voxel (z, y, x) of the ORIGINAL image
    state = session.add_click((41, 130, 98), positive=False)
    session.undo()
    session.add_box((30, 100, 80), (52, 140, 118))      # a 3D box (corners on one slice: a 2D box)
    session.add_scribble([(40, 118, 90), (40, 122, 104)], positive=False)
    session.add_lasso(0, 40, [(110, 85), (110, 110), (135, 110), (135, 85)])   # axial slice 40, (y, x)
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

How it runs. The image is read once; nnU-Net's preprocessing for the model's plans (transpose,
normalisation, resampling to the 3d_fullres spacing) is computed only for the boxes a prediction
reads (:class:`~nnunet_isrg.inference.preprocessed_volume.ImageVolume`), on nnU-Net's whole-image
grid. Every click goes through the one :class:`~nnunet_isrg.inference.lesion_predictor.LesionPredictor`
the validation, ``isrg compare`` and the benchmarks use: the crop at the lesion's first click (its
image embedding cached, so a further click on a lesion that fits it only decodes), zooming out up
to ``zoom_factors[-1]`` (4x the crop per axis by default) for a lesion that reaches a face of the
crop, and refinement of the zoomed-out mask at full resolution along its border. A lesion larger
than the largest view is returned cut and says so: ``LesionState.truncated_faces`` and the report's
``truncated``. The predicted logits go back to the original grid as nnU-Net's export resamples them.
Lesions never overlap: voxels already claimed by another lesion stay that lesion's.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_isrg.attributes import AttributeLabelError, normalise_class, untrained_attributes
from nnunet_isrg.inference.embedding_cache import DEFAULT_MAX_BYTES, EmbeddingCache
from nnunet_isrg.inference.lesion_predictor import (DEFAULT_MAX_TILES, DEFAULT_ZOOM_FACTORS, LesionPrediction,
                                                    LesionPredictor, PromptState)
from nnunet_isrg.inference.model_loading import Folds, LoadedModel, load_trained_model
from nnunet_isrg.inference.preprocessed_volume import ImageVolume
from nnunet_isrg.inference.region_preprocessing import bounding_box, paste_mask
from nnunet_isrg.prompts import AXES, PROMPT_NAMES, Box, PromptError, lasso_mask, scribble_voxels
from nnunet_isrg.report.dicom_export import read_dicom_series
from nnunet_isrg.report.structured import build_lesion_report

ImageInput = Union[str, os.PathLike, sitk.Image]
SPACES = ("voxel", "world")
#: clicks (and resets) per lesion that ``undo`` can take back; older ones are forgotten, so a lesion's
#: history holds at most this many masks (each the size of the lesion's bounding box, about 1 MiB for a
#: 10 cm lesion on a 0.8 mm grid) and prompt states
DEFAULT_UNDO_DEPTH = 32


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
            bad = _nifti_non_finite_voxels(path)
            if bad:
                raise SessionError(f"{name}: {bad} voxel(s) are NaN or infinite; the CT must hold finite HU values")
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


def _nifti_non_finite_voxels(path: Path) -> int:
    """NaN and infinite voxels of a floating-point NIfTI file, read as written: SimpleITK's NIfTI
    reader turns them into 0 (an image of 0 HU where the file has no value), so they are counted with
    nibabel. 0 for other formats and integer NIfTI, which cannot hold them."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return 0
    import nibabel

    nifti = nibabel.load(str(path))
    if nifti.get_data_dtype().kind not in "fc":
        return 0
    data = np.asanyarray(nifti.dataobj)
    return int(data.size - np.count_nonzero(np.isfinite(data)))


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


@dataclass(frozen=True)
class SessionBox:
    """A box: its lower and higher corner (z, y, x), continuous indices of the original image."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"kind": "box", "positive": True, "corners_voxel_zyx": [list(self.lo), list(self.hi)]}


@dataclass(frozen=True)
class SessionStroke:
    """A scribble or a lasso: ``voxels`` (M, 3) int (z, y, x) of the original image it covers; or a
    negative box (``kind`` "box"): ``voxels`` its two inclusive corners, so that a large box costs
    no voxel list. ``drawn``: what the reader drew (points, or slice and polygon) for the report."""

    kind: str
    voxels: np.ndarray = field(compare=False, repr=False)
    positive: bool = True
    drawn: dict = field(default_factory=dict, compare=False)
    # the same on the network's grid (voxels, or a box's two corners), mapped once when it is drawn:
    # every later prediction of its lesion reads it
    on_grid: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def n_voxels(self) -> int:
        if self.kind == "box":
            return int(np.prod(self.voxels[1] - self.voxels[0] + 1))
        return int(len(self.voxels))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "positive": self.positive, **self.drawn, "n_voxels": self.n_voxels}


@dataclass(frozen=True)
class _Outcome:
    """What a lesion's last prediction left: everything a click changes besides the clicks, so that
    keeping it is enough to undo the click."""

    slices: tuple | None = None               # bounding box of the mask in the image (z, y, x slices)
    mask: np.ndarray | None = None            # bool mask inside ``slices`` (lesion's own voxels only)
    attribute_probs: dict = field(default_factory=dict)
    iou_pred: float = float("nan")
    prompts: PromptState | None = None        # the predictor's state after that click (mask prompts)
    zoom: float = 1.0
    truncated_faces: tuple[str, ...] = ()     # faces of the largest view the lesion goes on beyond (z, y, x)
    region: tuple | None = None               # (z, y, x) slices of the image the prediction looked at


@dataclass
class _Lesion:
    lesion_id: int
    clicks: list = field(default_factory=list)
    box: SessionBox | None = None
    strokes: list = field(default_factory=list)    # SessionStroke: scribbles, lassos, negative boxes
    outcome: _Outcome = field(default_factory=_Outcome)
    overrides: dict = field(default_factory=dict)
    history: list = field(default_factory=list)   # (clicks, outcome) before each click or reset, oldest first
    version: int = 0
    report_cache: tuple | None = None         # (version, overrides, report)

    @property
    def slices(self) -> tuple | None:
        return self.outcome.slices

    @property
    def mask(self) -> np.ndarray | None:
        return self.outcome.mask

    @property
    def has_prompts(self) -> bool:
        return bool(self.clicks or self.box is not None or self.strokes)

    def prompt_dicts(self) -> list[dict]:
        """The prompts besides clicks, for the report."""
        return ([self.box.to_dict()] if self.box is not None else []) + [s.to_dict() for s in self.strokes]

    def snapshot(self) -> tuple:
        return list(self.clicks), self.box, list(self.strokes), self.outcome

    def remember(self, depth: int) -> None:
        """Keeps the present state for ``undo``, forgetting what lies more than ``depth`` steps back."""
        self.history.append(self.snapshot())
        del self.history[:-depth]

    def restore(self, snapshot: tuple) -> None:
        clicks, self.box, strokes, self.outcome = snapshot
        self.clicks, self.strokes = list(clicks), list(strokes)
        self.version += 1

    @property
    def n_voxels(self) -> int:
        return 0 if self.mask is None else int(self.mask.sum())


class LesionState:
    """The current state of one lesion: its mask on the original grid and, on demand, its report.

    ``mask`` is a bool (Z, Y, X) array of the original image (built on first access; ``bbox`` and
    ``mask_in_bbox`` hold the same compactly); ``report`` is the structured report (built on first
    access, since measurements cost more than a click). ``region``: the (z, y, x) slices of the image
    the prediction looked at (the mask is empty outside them). ``zoom`` is the zoom factor of the largest
    view the prediction needed (1: the crop at the clicks held the lesion); ``truncated_faces`` the
    faces of the largest view the lesion goes on beyond (``"z-"``, ``"x+"``... in the image's (z, y,
    x) axes; empty when the lesion is whole), ``truncated`` whether there are any.
    """

    def __init__(self, session: "ISRGSession", lesion: _Lesion):
        self._session = session
        self.lesion_id = lesion.lesion_id
        self.clicks = list(lesion.clicks)
        self.prompts = lesion.prompt_dicts()   # box, scribbles, lassos (as the report lists them)
        self.bbox = lesion.slices
        self.mask_in_bbox = lesion.mask
        self.attribute_probs = {k: dict(v) for k, v in lesion.outcome.attribute_probs.items()}
        self.iou_pred = lesion.outcome.iou_pred
        self.zoom = lesion.outcome.zoom
        self.truncated_faces = list(lesion.outcome.truncated_faces)
        self.region = lesion.outcome.region
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
    def truncated(self) -> bool:
        return bool(self.truncated_faces)

    @property
    def report(self):
        if self._report is None:
            self._report = self._session.report(self.lesion_id)
        return self._report

    def __repr__(self) -> str:
        return (f"LesionState(lesion_id={self.lesion_id}, clicks={len(self.clicks)}, voxels={self.n_voxels}, "
                f"iou_pred={self.iou_pred:.3f}, zoom={self.zoom:g}, truncated_faces={self.truncated_faces})")


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
        zoom_factors: the zoom factors a lesion larger than the crop is seen at, in increasing order
            (the last is the largest field of view, 4x the crop per axis by default); ``()`` keeps
            every prediction to the crop at the clicks.
        max_tiles: at most this many full-resolution refinement crops along a zoomed-out lesion's
            border per click (None: all of them).
        undo_depth: clicks and resets per lesion that :meth:`undo` can take back (older ones are
            forgotten, which bounds the memory a long correction holds).
        embedding_cache_bytes: the most memory the image embeddings of the current image may hold
            (least recently used views are dropped beyond it).

    ``set_image`` also takes an optional organ label map (SimpleITK image or (Z, Y, X) array on the
    image grid) and organ names, for the reports' location.
    """

    def __init__(self, model: Union[str, os.PathLike, LoadedModel], folds: Folds = (0,),
                 checkpoint: str = "checkpoint_final.pth", device: str | torch.device = "cpu",
                 zoom_factors: Sequence[float] = DEFAULT_ZOOM_FACTORS, max_tiles: int | None = DEFAULT_MAX_TILES,
                 undo_depth: int = DEFAULT_UNDO_DEPTH, embedding_cache_bytes: int = DEFAULT_MAX_BYTES):
        if int(undo_depth) < 1:
            raise SessionError(f"undo_depth must be at least 1, got {undo_depth!r}")
        self.model = model if isinstance(model, LoadedModel) else load_trained_model(model, folds, checkpoint, device)
        self.schema = self.model.schema
        # labelled training cases per attribute; None (not recorded) counts every attribute as trained
        self.attribute_support = getattr(self.model, "attribute_support", None)
        self.device = torch.device(self.model.device)
        self.zoom_factors = tuple(zoom_factors)
        self.max_tiles = max_tiles
        self.undo_depth = int(undo_depth)
        self.embedding_cache_bytes = int(embedding_cache_bytes)
        self.crop_size = self.model.crop_size
        self.image: sitk.Image | None = None
        self.image_name: str | None = None
        self.dicom_datasets: list | None = None
        self.organ_map = None
        self.organ_names = None
        self._array: np.ndarray | None = None
        self._lesions: "OrderedDict[int, _Lesion]" = OrderedDict()
        self._current: int | None = None
        self._predictor: LesionPredictor | None = None   # of the current image, with its embedding cache
        self._encode_calls_before = 0                     # encodings of earlier images

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
        if self._predictor is not None:
            self._encode_calls_before += self._predictor.encode_calls
        volume = ImageVolume(self._array, self.spacing_zyx, self.model.plans_manager, self.model.configuration_manager)
        self._predictor = LesionPredictor(self.model.network, self.schema, volume, self.device,
                                          untrained_attributes=untrained_attributes(self.attribute_support),
                                          zoom_factors=self.zoom_factors, max_tiles=self.max_tiles,
                                          cache=EmbeddingCache(self.model.network.encode_image,
                                                               self.embedding_cache_bytes),
                                          attribute_class_counts=getattr(self.model, "attribute_class_counts", None))
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
    def to_voxel(self, point: Sequence[float], space: str = "voxel", what: str = "click") -> np.ndarray:
        """A point in ``space`` -> continuous (z, y, x) index of the original image (checked inside);
        ``what`` names the point in errors ("click", "box corner", "scribble point")."""
        self._require_image()
        if space not in SPACES:
            raise SessionError(f"unknown coordinate space {space!r}; use 'voxel' (z, y, x index of the original "
                               f"image) or 'world' (x, y, z mm, LPS as SimpleITK)")
        p = np.asarray(point, dtype=float).ravel()
        if p.shape != (3,) or not np.isfinite(p).all():
            raise SessionError(f"a {what} needs three finite coordinates, got {point!r}")
        if space == "world":
            zyx = np.asarray(self.image.TransformPhysicalPointToContinuousIndex([float(v) for v in p]))[::-1]
        else:
            zyx = p
        shape = np.asarray(self.image_shape)
        if np.any(zyx < -0.5) or np.any(zyx > shape - 0.5):
            where = f"world point (x, y, z) {tuple(p)} mm = voxel (z, y, x) {tuple(np.round(zyx, 2))}" \
                if space == "world" else f"voxel (z, y, x) {tuple(p)}"
            raise SessionError(f"{what} at {where} is outside the image {self.image_name} of shape (z, y, x) "
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
        """Ids of lesions that have prompts (clicks, a box, scribbles or lassos)."""
        return [i for i, l in self._lesions.items() if l.has_prompts]

    def _lesion(self, lesion_id: int | None = None) -> _Lesion:
        self._require_image()
        lid = self._current if lesion_id is None else lesion_id
        try:
            return self._lesions[int(lid)]
        except (KeyError, TypeError, ValueError):
            raise SessionError(f"no lesion {lesion_id!r} in this session; lesions: {self.lesion_ids}") from None

    def new_lesion(self) -> int:
        """Starts a new lesion (the current one is kept as it is); returns its id. A current lesion
        without prompts is reused."""
        self._require_image()
        if self._current is not None and not self._lesions[self._current].has_prompts:
            return self._current
        lid = max(self._lesions, default=0) + 1
        self._lesions[lid] = _Lesion(lid)
        self._current = lid
        return lid

    def select_lesion(self, lesion_id: int) -> LesionState:
        """Makes an existing lesion current again, to correct it with more clicks."""
        lesion = self._lesion(lesion_id)
        if self._current is not None and self._current != lesion.lesion_id:
            cur = self._lesions[self._current]
            if not cur.has_prompts:
                del self._lesions[self._current]
        self._current = lesion.lesion_id
        return LesionState(self, lesion)

    @property
    def encode_calls(self) -> int:
        """Image encodings (view embeddings) computed so far in this session, all lesions and images."""
        return self._encode_calls_before + (self._predictor.encode_calls if self._predictor is not None else 0)

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
        if not lesion.has_prompts and not positive:
            raise SessionError("the first click on a lesion must be positive (it places the lesion)")
        click = SessionClick(tuple(float(v) for v in zyx), tuple(float(v) for v in self.to_world(zyx)), bool(positive))
        return self._with_prompt(lesion, lambda: lesion.clicks.append(click))

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float], positive: bool = True,
                space: str = "voxel") -> LesionState:
        """A box around the current lesion (two opposite corners, in ``space`` as :meth:`add_click`'s
        point; the voxels holding them are inside). Corners on one slice make a 2D box on that slice.
        A positive box tells the model where the lesion lies (one per lesion: a new one replaces it);
        a negative box marks its voxels as not lesion, like a negative scribble."""
        box = Box.from_corners(self.to_voxel(corner_a, space, "box corner"), self.to_voxel(corner_b, space, "box corner"))
        lesion = self._lesion()
        self._check_kind("boxes" if positive else "scribbles")
        if positive:
            return self._with_prompt(lesion, lambda: setattr(lesion, "box", SessionBox(box.lo, box.hi)))
        if not lesion.has_prompts:
            raise SessionError("the first prompt on a lesion must be positive (it places the lesion)")
        corners = self._rasterised(lambda: box.voxel_corners(self.image_shape))
        stroke = self._on_grid(SessionStroke("box", corners, False, {"corners_voxel_zyx": [list(box.lo), list(box.hi)]}))
        return self._with_prompt(lesion, lambda: lesion.strokes.append(stroke))

    def add_scribble(self, points: Sequence[Sequence[float]] | np.ndarray, positive: bool = True,
                     space: str = "voxel") -> LesionState:
        """A scribble on the current lesion: a polyline through ``points`` (each in ``space`` as
        :meth:`add_click`'s point), or a bool (Z, Y, X) mask of the image's voxels."""
        self._require_image()
        arr = np.asarray(points)
        if arr.dtype == bool:
            if arr.shape != self.image_shape:
                raise SessionError(f"a scribble mask must have the image's shape (z, y, x) {self.image_shape}, "
                                   f"got {arr.shape}")
            voxels, drawn = np.argwhere(arr), {}
        else:
            arr = np.asarray(points, dtype=float)
            if arr.ndim != 2 or arr.shape[1] != 3 or not len(arr):
                raise SessionError(f"a scribble needs (N, 3) points ({'(z, y, x) voxels' if space == 'voxel' else '(x, y, z) mm'}) "
                                   f"or a bool mask of the image's shape, got an array of shape {arr.shape}")
            pts = np.array([self.to_voxel(p, space, "scribble point") for p in arr])
            voxels = self._rasterised(lambda: scribble_voxels(pts, self.image_shape))
            drawn = {"points_voxel_zyx": pts.tolist()}
        if not len(voxels):
            raise SessionError("the scribble covers no voxel of the image")
        return self._add_stroke(SessionStroke("scribble", voxels, bool(positive), drawn))

    def add_lasso(self, slice_axis: int | str, slice_index: int, polygon: Sequence[Sequence[float]],
                  positive: bool = True) -> LesionState:
        """A lasso on one slice: ``slice_axis`` 0/"z" (axial), 1/"y" (coronal) or 2/"x" (sagittal) of the
        image's voxel grid, ``slice_index`` on that axis, ``polygon`` (K, 2) in-plane voxel coordinates
        in the order of the two other axes (axial: (y, x)). The voxels inside and on the outline count."""
        if isinstance(slice_axis, str) and len(slice_axis) == 1 and slice_axis in AXES:
            axis = AXES.index(slice_axis)
        elif isinstance(slice_axis, (int, np.integer)) and not isinstance(slice_axis, bool) and 0 <= slice_axis < 3:
            axis = int(slice_axis)
        else:
            raise SessionError(f"slice_axis must be 0 or 'z' (axial), 1 or 'y' (coronal), 2 or 'x' (sagittal), "
                               f"got {slice_axis!r}")
        mask = self._rasterised(lambda: lasso_mask(axis, int(slice_index), polygon, self.image_shape))
        drawn = {"slice_axis": AXES[axis], "slice_index": int(slice_index),
                 "polygon": np.asarray(polygon, dtype=float).tolist()}
        return self._add_stroke(SessionStroke("lasso", np.argwhere(mask), bool(positive), drawn))

    def add_prompt(self, prompt: Mapping, space: str = "voxel") -> LesionState:
        """One prompt as a mapping (as ``isrg predict``'s prompts file and the HTTP API give it):
        ``kind`` "click" (``point``), "box" (``corners``), "scribble" (``points``) or "lasso"
        (``slice_axis``, ``slice_index``, ``polygon``), and ``positive`` (default true)."""
        kind, positive = prompt.get("kind"), prompt.get("positive", True)
        if kind == "click":
            return self.add_click(prompt["point"], positive=positive, space=space)
        if kind == "box":
            return self.add_box(*prompt["corners"], positive=positive, space=space)
        if kind == "scribble":
            return self.add_scribble(prompt["points"], positive=positive, space=space)
        if kind == "lasso":
            return self.add_lasso(prompt["slice_axis"], prompt["slice_index"], prompt["polygon"], positive=positive)
        raise SessionError(f"unknown prompt kind {kind!r}; allowed: {', '.join(PROMPT_NAMES)}")

    def _rasterised(self, draw):
        self._require_image()
        try:
            return draw()
        except PromptError as e:
            raise SessionError(str(e)) from None

    def _on_grid(self, stroke: SessionStroke) -> SessionStroke:
        """The stroke with its voxels (a box: its corners) on the network's grid: every grid voxel inside
        a drawn voxel, so that on thick slices a stroke covers each finer grid slice."""
        grid = self._predictor.volume.grid
        on_grid = (grid.original_box_to_region(*stroke.voxels) if stroke.kind == "box"
                   else grid.original_voxels_to_region(stroke.voxels))
        return replace(stroke, on_grid=on_grid)

    def _add_stroke(self, stroke: SessionStroke) -> LesionState:
        lesion = self._lesion()
        self._check_kind("lassos" if stroke.kind == "lasso" else "scribbles")
        if not lesion.has_prompts and not stroke.positive:
            raise SessionError("the first prompt on a lesion must be positive (it places the lesion)")
        stroke = self._on_grid(stroke)
        return self._with_prompt(lesion, lambda: lesion.strokes.append(stroke))

    def _check_kind(self, kind: str) -> None:
        kinds = getattr(self.model, "prompt_kinds", ("clicks", "boxes", "scribbles", "lassos"))
        if kind not in kinds:
            raise SessionError(f"this model was trained with {', '.join(kinds)} only, not {kind} (its checkpoint "
                               f"predates them, or its trainer's share of them was 0); give "
                               f"{' or '.join(kinds)}, or retrain it with {kind} in the prompt mix")

    def _with_prompt(self, lesion: _Lesion, add) -> LesionState:
        """Adds a prompt (``add()`` changes the lesion's prompts) and predicts again; undone if that fails."""
        lesion.remember(self.undo_depth)
        try:
            add()
            lesion.outcome = self._predict(lesion)
        except Exception:
            lesion.restore(lesion.history.pop())
            raise
        lesion.version += 1
        return LesionState(self, lesion)

    def _predict(self, lesion: _Lesion) -> _Outcome:
        """The lesion's prediction from all its clicks, on the original grid, minus other lesions' voxels."""
        grid = self._predictor.volume.grid
        points = grid.original_to_region(np.array([c.voxel_zyx for c in lesion.clicks]).reshape(-1, 3))
        clicks = [(tuple(p), c.positive) for p, c in zip(points, lesion.clicks)]
        box = None if lesion.box is None else self._region_box(Box(lesion.box.lo, lesion.box.hi))
        strokes = [(s.on_grid, s.positive) for s in lesion.strokes if s.kind != "box"]
        regions = [(s.on_grid, s.positive) for s in lesion.strokes if s.kind == "box"]
        # a lesion's first prompt starts without mask prompts; later ones from the lesion's own last one
        first = len(clicks) + (box is not None) + len(lesion.strokes) == 1
        previous = None if first else lesion.outcome.prompts
        # the box bounds the lesion in the image's own voxels, where the reader drew it and the prompts
        # that may override it: on another grid its faces and slice fall between the network's voxels
        drawn = None if lesion.box is None else Box(lesion.box.lo, lesion.box.hi)
        bounded = drawn is not None and not drawn.overridden_by(
            [c.voxel_zyx for c in lesion.clicks if c.positive],
            *(s.voxels for s in lesion.strokes if s.positive and s.kind != "box"))
        pred: LesionPrediction = self._predictor.predict(clicks, state=previous, box=box, strokes=strokes,
                                                         box_regions=regions, bound_to_box=bounded)
        pasted = paste_mask(grid, pred.logits, pred.bbox, self.model.configuration_manager)
        if pasted is not None:
            slices, mask = pasted
            if bounded:
                drawn.bound(mask, [(s.start, s.stop) for s in slices], False)
            pasted = _shrink(slices, mask & ~self._claimed(slices, exclude=lesion.lesion_id))
        slices, mask = pasted if pasted is not None else (None, None)
        # faces are named after the predictor's (transposed) axes; the session speaks the image's (z, y, x)
        names = "zyx"
        faces = tuple(names[grid.transpose_forward[names.index(f[0])]] + f[1] for f in pred.truncated_faces)
        return _Outcome(slices, mask, pred.attribute_probs, pred.iou_pred, pred.state, pred.zoom, faces,
                        grid.original_slices(pred.bbox))

    def _region_box(self, box: Box) -> np.ndarray:
        """(2, 3) inclusive corners on the network's grid of a box of the original image: every grid voxel
        inside it; a 2D box (drawn on one slice) keeps one grid voxel across its slice, as in training."""
        grid = self._predictor.volume.grid
        corners = grid.original_box_to_region(*box.voxel_corners(self.image_shape))
        if box.slice_axis is not None:
            axis = list(grid.transpose_forward).index(box.slice_axis)
            # the grid slice holding the drawn slice's centre, as for a click on it
            corners[:, axis] = np.floor(grid.original_to_region(np.asarray(box.lo))[axis] + 0.5)
        return corners

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
        """Takes back the last click (or reset) of the current lesion (up to ``undo_depth`` of them).

        Its previous mask comes back exactly, less any voxels another lesion has claimed since (a
        lesion reset, then a second lesion drawn over its place): lesions never overlap."""
        lesion = self._lesion()
        if not lesion.history:
            raise SessionError(f"lesion {lesion.lesion_id} has nothing to undo"
                               + (f" (the last {self.undo_depth} steps are kept)" if lesion.has_prompts else ""))
        lesion.restore(lesion.history.pop())
        if lesion.slices is not None:
            claimed = self._claimed(lesion.slices, exclude=lesion.lesion_id) & lesion.mask
            if claimed.any():
                kept = _shrink(lesion.slices, lesion.mask & ~claimed)
                slices, mask = kept if kept is not None else (None, None)
                lesion.outcome = replace(lesion.outcome, slices=slices, mask=mask)
        return LesionState(self, lesion)

    def reset(self) -> LesionState:
        """Clears the current lesion's prompts and mask (undo brings them back)."""
        lesion = self._lesion()
        if lesion.has_prompts:
            lesion.remember(self.undo_depth)
            lesion.clicks, lesion.box, lesion.strokes, lesion.outcome = [], None, [], _Outcome()
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
        rep = build_lesion_report(self.image, mask, lesion.outcome.attribute_probs,
                                  [c.to_dict() for c in lesion.clicks], lesion_id=f"lesion_{lesion.lesion_id}",
                                  overrides=lesion.overrides, organ_map=self.organ_map, organ_names=self.organ_names,
                                  schema=self.schema, label=lesion.lesion_id, attribute_support=self.attribute_support,
                                  truncated_faces=list(lesion.outcome.truncated_faces),
                                  prompts=lesion.prompt_dicts())
        lesion.report_cache = (key, rep)
        return rep

    def reports(self) -> list:
        """Reports of every lesion with a mask, in lesion id order."""
        return [self.report(lid) for lid, l in self._lesions.items() if l.mask is not None]


def _shrink(slices: tuple, mask: np.ndarray):
    """(slices, mask) cut to the mask's bounding box; None if empty."""
    box = bounding_box(mask)
    if box is None:
        return None
    lo, hi = box
    return (tuple(slice(s.start + a, s.start + b) for s, a, b in zip(slices, lo, hi)),
            np.ascontiguousarray(mask[tuple(slice(a, b) for a, b in zip(lo, hi))]))
