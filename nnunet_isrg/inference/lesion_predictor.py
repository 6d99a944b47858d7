"""Click-driven prediction of one lesion of any size in a preprocessed volume: the one path from
(volume, clicks, previous state) to a lesion mask, used by the interactive session, ``isrg predict``
and ``isrg serve`` (through the session), the fold validation, ``isrg compare`` and the benchmarks.

Coordinates are voxel indices (z, y, x) of the *preprocessed* volume (nnU-Net's target spacing and
transposed axes, normalised intensities); boxes ``[[lo, hi], ...]`` are half open.

What one prediction does (after nnInteractive's AutoZoom, Isensee et al. 2025, adapted to a
network that caches an image embedding per view):

1. **The crop at the clicks.** A crop of the network's size centred on the lesion's first prompt
   (a click, a box's centre or a positive stroke's; shifted inside the volume), kept for all its
   later prompts, is decoded with all clicks (clicks outside it are clamped to its
   faces) and the mask prompt this crop produced at the previous click. Its embedding is cached, so
   a further click on a lesion that fits it is a decode: no encoder call.
2. **Zooming out.** While the lesion (the parts of the mask connected to a positive click) touches a
   face of the view that is not the volume's border, or a click lies outside the view, the lesion
   is predicted again on a larger field of view — ``zoom_factors`` times the crop, by default 1.5,
   2, 3 and 4 — averaged down to the crop size, centred on the lesion seen so far (on a coarse
   lattice of crop / 8, so views and their cached embeddings stay put from click to click).
3. **Refining along the border.** When a zoomed view was needed, its mask is upsampled to full
   resolution and the crop-sized cells of a lattice over the lesion through which its border passes
   are predicted again at full resolution, with the same clicks and the coarse mask as mask prompt
   (:mod:`~nnunet_isrg.inference.tile_refinement`); at most ``max_tiles`` of them, those holding
   the most border, so that a click on a huge lesion stays interactive. The crop at the clicks has
   the last word where it lies.
4. **At the limit.** A lesion that still touches a face of the largest view is returned as it is and
   says so: ``truncated_faces`` names the faces (``"z-"``, ``"x+"``, in the volume's axis order).

The attribute probabilities and the IoU estimate come from the finest view that holds the whole
lesion (the crop at the clicks when it does, else the last zoomed view).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, NamedTuple, Sequence, Union

import numpy as np
import torch
import cc3d

from nnunet_isrg.attributes import balanced_probabilities
from nnunet_isrg.clicks import PADDING
from nnunet_isrg.inference.embedding_cache import EmbeddingCache
from nnunet_isrg.inference.preprocessed_volume import ArrayVolume, PreprocessedVolume
from nnunet_isrg.inference.region_preprocessing import FILL_LOGIT
from nnunet_isrg.inference.tile_refinement import LogitCanvas, border_tiles, mask_prompt_from, upsample_logits
from nnunet_isrg.inference.views import AXIS_NAMES, DEFAULT_ZOOM_FACTORS, BoxT, View, centred_bbox
from nnunet_isrg.prompts import BOX_HIGH, BOX_LOW, Box

Click = tuple[Sequence[float], bool]  # ((z, y, x) voxel of the preprocessed volume, positive?)
Stroke = tuple[np.ndarray, bool]       # ((M, 3) voxels (z, y, x) of the preprocessed volume, positive?)
#: a box's voxels as a stroke (a negative box): ((2, 3) inclusive lower and higher corner voxels, positive?),
#: filled per view, so that a large box costs no voxel list
RegionBox = tuple[np.ndarray, bool]
CONTINUE = "continue"
#: full-resolution refinement crops per prediction at most: every cell of a lesion up to twice the
#: crop (8) and most of one up to three times it; about 1.6 s of encoding for the ``tiny`` preset
DEFAULT_MAX_TILES = 16

__all__ = ["LesionPredictor", "LesionPrediction", "PromptState", "Click", "Stroke", "RegionBox", "Strokes", "CONTINUE",
           "DEFAULT_ZOOM_FACTORS", "DEFAULT_MAX_TILES", "centred_bbox"]


@dataclass(frozen=True)
class PromptState:
    """What a lesion's next click starts from: the low-res logits each view predicted at its last
    click (the network's mask prompt for that view) and the crop its first prompt placed (``home``).
    Immutable, so keeping it is enough to undo."""

    prompts: Mapping[View, torch.Tensor] = field(default_factory=dict)
    home: View | None = None

    def get(self, view: View) -> torch.Tensor | None:
        return self.prompts.get(view)


@dataclass
class LesionPrediction:
    """One prediction of a lesion (all coordinates in voxels of the preprocessed volume)."""

    logits: torch.Tensor                  # (D, H, W) float32 mask logits on ``bbox`` (CPU)
    bbox: list[list[int]]                 # the region predicted, clipped to the volume, half open
    volume_shape: tuple[int, int, int]
    attribute_probs: dict[str, dict[str, float]] = field(default_factory=dict)
    iou_pred: float = float("nan")
    n_encodes: int = 0                    # image encodings this prediction needed (0 when all cached)
    zoom: float = 1.0                     # zoom factor of the largest view used (1: the crop held it)
    field_of_view: list[list[int]] = field(default_factory=list)   # that view's box (may overhang)
    tiles: list[list[list[int]]] = field(default_factory=list)     # full-resolution refinement crops
    truncated_faces: list[str] = field(default_factory=list)       # faces the lesion goes on beyond
    state: PromptState = field(default_factory=PromptState)
    _mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def truncated(self) -> bool:
        """Whether the lesion goes on beyond the largest field of view (see ``truncated_faces``)."""
        return bool(self.truncated_faces)

    @property
    def mask(self) -> np.ndarray:
        """(Z, Y, X) bool mask on the whole preprocessed volume (built on first access)."""
        if self._mask is None:
            self._mask = np.zeros(self.volume_shape, dtype=bool)
            self._mask[tuple(slice(a, b) for a, b in self.bbox)] = (self.logits > 0).numpy()
        return self._mask


class Strokes(NamedTuple):
    """The voxel-level prompts of one prediction: scribbles and lassos as voxels, boxes as regions."""

    voxels: Sequence[Stroke] = ()
    boxes: Sequence[RegionBox] = ()

    def __bool__(self) -> bool:
        return bool(len(self.voxels) or len(self.boxes))

    def positive_extent(self) -> np.ndarray:
        """(2K, 3) the lower and higher corner of each positive stroke: where the reader says the lesion is."""
        corners = [c for v, p in self.voxels if p for c in (v.min(0), v.max(0))]
        corners += [c for b, p in self.boxes if p for c in b]
        return np.array(corners, dtype=float).reshape(-1, 3)


def _faces_reached(box: Box, view: View, faces: Sequence[str], crop_size: Sequence[int]) -> list[str]:
    """Those of ``faces`` (a view's, as :meth:`View.cut_faces` names them) that a lesion bounded by the
    3D ``box`` can still touch: the box reaches the view's first (last) voxel on that axis."""
    first, last = box.voxel_range()
    kept = []
    for face in faces:
        axis = AXIS_NAMES.index(face[0])
        lo, hi = view.box[axis]
        cell = (hi - lo) / crop_size[axis]       # volume voxels per view voxel (1 unless zoomed out)
        if (first[axis] < lo + cell) if face[1] == "-" else (last[axis] > hi - 1 - cell):
            kept.append(face)
    return kept


def _inside(box: BoxT, outer: BoxT) -> bool:
    return all(c <= a and b <= d for (a, b), (c, d) in zip(box, outer))


def lesion_part(crop_mask: torch.Tensor, view_points: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """The connected parts of a view's mask that hold a positive click: the lesion, without what the
    network marked elsewhere. The whole mask when no positive click lies in it."""
    mask = crop_mask.numpy()
    # face-connected components (scipy's default), with cc3d: a few times faster on a crop, and this
    # runs at every click whose mask touches a face of its view
    labels, n = cc3d.connected_components(mask, connectivity=6, return_N=True)
    if n <= 1:
        return mask
    idx = np.clip(np.rint(view_points[positive]).astype(int), 0, np.array(mask.shape) - 1)
    keep = set(labels[tuple(idx.T)].tolist()) - {0}
    return np.isin(labels, sorted(keep)) if keep else mask


class LesionPredictor:
    """Predicts lesions of one preprocessed volume from clicks, zooming out for lesions larger than the
    network's crop; image embeddings are cached per view (see the module docstring).

    Args:
        model: an ``ISRGModel`` (``encode_image``/``decode``, ``crop_size``) in eval mode.
        schema: attribute schema {name: [classes]} to name the attribute probabilities.
        volume: a :class:`~nnunet_isrg.inference.preprocessed_volume.PreprocessedVolume`, or a
            (C, Z, Y, X) preprocessed array held in memory.
        untrained_attributes: attributes the model has no training label for; their head's output
            is an untrained guess and is left out of ``attribute_probs``.
        attribute_class_counts: {attribute: {class: training cases}} of the model; when given,
            ``attribute_probs`` are :func:`~nnunet_isrg.attributes.balanced_probabilities` (as if
            every class had been equally common), else the network's softmax as it is.
        zoom_factors: increasing zoom factors to try (the last is the largest field of view); ``()``
            keeps every prediction to the crop at the clicks.
        max_tiles: at most this many full-resolution refinement crops per prediction (None: every
            cell the border passes through).
        cache: where embeddings are kept (default: a new :class:`EmbeddingCache` of the model).
    """

    def __init__(self, model: torch.nn.Module, schema, volume: Union[PreprocessedVolume, torch.Tensor, np.ndarray],
                 device: torch.device | str = "cpu", untrained_attributes: Sequence[str] = (),
                 zoom_factors: Sequence[float] = DEFAULT_ZOOM_FACTORS, max_tiles: int | None = DEFAULT_MAX_TILES,
                 cache: EmbeddingCache | None = None,
                 attribute_class_counts: Mapping[str, Mapping[str, int]] | None = None):
        self.model = model
        self.schema = schema
        self.untrained_attributes = frozenset(untrained_attributes)
        self.attribute_class_counts = attribute_class_counts or {}
        self.device = torch.device(device)
        self.crop_size = tuple(int(s) for s in model.crop_size)
        self.volume = volume if hasattr(volume, "zoomed") else ArrayVolume(volume)
        self.zoom_factors = tuple(sorted(float(f) for f in zoom_factors if f > 1))
        self.max_tiles = max_tiles
        self.cache = cache if cache is not None else EmbeddingCache(model.encode_image)
        self._last_state: PromptState | None = None
        # views are centred on a lattice this coarse, so a lesion that moves a little keeps its views
        self._centre_step = np.maximum(np.asarray(self.crop_size) // 8, 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)

    @property
    def encode_calls(self) -> int:
        """Image encodings run so far (all predictions of this predictor and its cache)."""
        return self.cache.encode_calls

    def reset(self) -> None:
        """Forget the last prediction's mask prompts (the next ``predict`` starts a new lesion)."""
        self._last_state = None

    # ------------------------------------------------------------------ prediction
    def predict(self, clicks: Sequence[Click], state: Union[PromptState, None, Literal["continue"]] = CONTINUE,
                box: tuple[Sequence[float], Sequence[float]] | None = None, strokes: Sequence[Stroke] = (),
                box_regions: Sequence[RegionBox] = (), bound_to_box: bool | None = None) -> LesionPrediction:
        """The lesion given all its prompts so far: clicks, a 3D box (its lower and higher corner),
        strokes (scribbles and lassos as voxels) and box regions (boxes marking voxels, e.g. a negative
        box). The lesion's first prompt places the crop (a click; a box: its centre; a positive stroke:
        the centre of its corners) and the crop stays there for the later prompts: the clicks after a
        box mark errors, often outside the lesion, and the box, the cached embedding and the mask
        prompt of the crop they would otherwise move away from say more about the lesion; the views
        zoom out until every click, box corner and positive stroke lies inside.

        The box bounds the lesion: the mask holds nothing outside a 3D box, nor on a 2D box's slice
        outside it, whatever the network drew there (it sees the box as two corner tokens and a
        coarse region map, and its mask spills over the box's faces); a 3D box's lesion is truncated
        only at faces the box reaches. The network's own outputs are kept as they are: the mask
        prompts of the next prompt, the IoU estimate and the zoom decisions. ``bound_to_box``: None
        (default) bounds unless a positive click or stroke lies where the box excludes
        (:meth:`Box.overridden_by`); the session decides that in the image's own voxels, where the
        reader drew them, and passes the answer.

        ``state``: the ``state`` of the lesion's previous prediction, None for its first prompt, or
        ``"continue"`` (default) for this predictor's last prediction (None after :meth:`reset`).
        """
        marks = Strokes([(np.asarray(v, dtype=float).reshape(-1, 3), bool(p)) for v, p in strokes if len(v)],
                        [(np.sort(np.asarray(b, dtype=float).reshape(2, 3), axis=0), bool(p)) for b, p in box_regions])
        points = np.array([c[0] for c in clicks], dtype=float).reshape(-1, 3)
        labels = np.array([int(bool(c[1])) for c in clicks], dtype=np.int64)
        if box is not None:
            corners = np.sort(np.asarray(box, dtype=float).reshape(2, 3), axis=0)
            points, labels = np.concatenate([points, corners]), np.concatenate([labels, [BOX_LOW, BOX_HIGH]])
        extent = np.concatenate([points, marks.positive_extent()])
        if not len(extent):
            raise ValueError("predict needs a prompt that places the lesion (a click, a box or a positive stroke)")
        prompts = (self._last_state if state == CONTINUE else state) or PromptState()
        anchor = points[0] if len(clicks) else (points[-2:].mean(0) if box is not None else extent[:2].mean(0))
        encodes_before = self.encode_calls
        home = prompts.home or View.around(anchor, self.crop_size, self.shape)
        ladder, part, truncated = self._zoom_ladder(home, points, labels, marks, prompts, extent)
        view, out = ladder[-1]
        if view is home:
            canvas, tiles = LogitCanvas([home.box], self.shape), []
        else:
            canvas, tiles = self._refine(view, out, part, home, ladder[0][1], points, labels, marks)
        canvas.paste(home.box, ladder[0][1]["mask_logits"][0, 0].float().cpu())
        if box is not None:
            bounding = Box(*corners)
            if bound_to_box is None:
                bound_to_box = not bounding.overridden_by(points[labels == 1], *(v for v, p in marks.voxels if p),
                                                          *(b for b, p in marks.boxes if p))
            if bound_to_box:
                bounding.bound(canvas.logits, canvas.box, FILL_LOGIT)
                if bounding.slice_axis is None:
                    truncated = _faces_reached(bounding, view, truncated, self.crop_size)
        self._last_state = PromptState({v: o["low_res_logits"] for v, o in ladder}, home)
        return LesionPrediction(
            logits=canvas.logits, bbox=[list(b) for b in canvas.box], volume_shape=self.shape,
            attribute_probs=self._attribute_probs(out), iou_pred=float(out["iou_pred"][0, 0]),
            n_encodes=self.encode_calls - encodes_before, zoom=round(view.zoom, 3),
            field_of_view=[list(b) for b in view.box], tiles=[[list(b) for b in t] for t in tiles],
            truncated_faces=truncated, state=self._last_state)

    def _zoom_ladder(self, home: View, points: np.ndarray, labels: np.ndarray, strokes: Strokes,
                     prompts: PromptState, extent: np.ndarray
                     ) -> tuple[list[tuple[View, dict[str, Any]]], np.ndarray, list[str]]:
        """The views predicted for this click, the crop at the clicks first, each next one zoomed out
        while the lesion leaves the last one (or a point of ``extent``, the clicks, box corners and
        positive strokes' corners, lies outside it); with the lesion in the last view and the faces of
        that view it goes on beyond."""
        view = home
        ladder = [(home, self._decode(home, points, labels, strokes, prompts.get(home)))]
        part, faces = self._lesion_in(home, ladder[-1][1], points, labels)
        for factor in self.zoom_factors:
            if not faces and view.contains(extent):
                break
            view = View.around(self._lesion_centre(view, part, extent), self.crop_size, self.shape, factor)
            ladder.append((view, self._decode(view, points, labels, strokes, prompts.get(view))))
            part, faces = self._lesion_in(view, ladder[-1][1], points, labels, always=True)
        return ladder, part, faces

    def _lesion_in(self, view: View, out: dict, points: np.ndarray, labels: np.ndarray, always: bool = False
                   ) -> tuple[np.ndarray, list[str]]:
        """The lesion in a view's mask (:func:`lesion_part`) and the faces of the view it reaches that are
        not the volume's border. Unless ``always``, the mask itself when it reaches none (the common
        case of a lesion inside the crop costs no connected-component labelling)."""
        mask = out["mask_logits"][0, 0].float().cpu() > 0
        faces = view.cut_faces(mask, self.shape)
        if not faces and not always:
            return mask.numpy(), faces
        part = lesion_part(mask, view.to_view(points), labels == 1)
        return part, view.cut_faces(torch.from_numpy(part), self.shape)

    def _lesion_centre(self, view: View, part: np.ndarray, extent: np.ndarray) -> np.ndarray:
        """Centre (volume voxels, snapped to the view lattice) of the lesion seen in ``view`` and the
        prompts' ``extent`` (clicks, box corners, positive strokes' corners; never empty)."""
        lo, hi = extent.min(0), extent.max(0)
        idx = np.argwhere(part)
        if len(idx):
            lo = np.minimum(lo, view.to_volume(idx.min(0) - 0.5))
            hi = np.maximum(hi, view.to_volume(idx.max(0) + 0.5))
        return np.round((lo + hi) / 2 / self._centre_step) * self._centre_step

    def _refine(self, view: View, out: dict, part: np.ndarray, home: View, home_out: dict, points: np.ndarray,
                labels: np.ndarray, strokes: Strokes) -> tuple[LogitCanvas, list[BoxT]]:
        """The zoomed view's logits at full resolution, re-predicted in the crops along the lesion's border."""
        tiles = [t for t in border_tiles(part, view, self.crop_size, self.shape, snap=self._centre_step)
                 if not _inside(t, home.box)][:self.max_tiles]  # the crop at the clicks is predicted anyway
        canvas = LogitCanvas([view.box, home.box], self.shape)
        canvas.paste(view.box, upsample_logits(view, out["mask_logits"][0, 0].float().cpu()))
        low_res = tuple(home_out["low_res_logits"].shape[2:])
        refined = []
        for box in tiles:  # all prompted from the coarse mask, so the order of the tiles does not matter
            tile = View(box, self.crop_size)
            prompt = mask_prompt_from(canvas.read(box), low_res)
            refined.append((box, self._decode(tile, points, labels, strokes, prompt)["mask_logits"][0, 0].float().cpu()))
        for box, logits in refined:
            canvas.paste(box, logits, within=view.box)
        return canvas, tiles

    @torch.no_grad()
    def _decode(self, view: View, points: np.ndarray, labels: np.ndarray, strokes: Strokes,
                mask_prompt: torch.Tensor | None) -> dict[str, Any]:
        """The network on one view: cached embedding, clicks and box corners in view coordinates
        (clamped to the view, which keeps their direction: a click beyond a face pulls the mask there,
        a box larger than the view covers it on that axis), strokes as the view's voxels they cross."""
        embedding = self.cache.get(view, lambda: self._view_image(view)[None].to(self.device))
        corners = labels >= BOX_LOW
        if corners.any():
            lo, hi = view.to_view(points[corners])
            if np.any(hi < -0.5) or np.any(lo > np.asarray(self.crop_size) - 0.5):
                labels = np.where(corners, PADDING, labels)   # the box does not reach this view
        pts = np.clip(view.to_view(points), 0, np.asarray(self.crop_size) - 1).astype(np.float32)
        pts_t = torch.from_numpy(pts)[None].to(self.device)
        labels_t = torch.from_numpy(labels.astype(np.int64))[None].to(self.device)
        prompt = mask_prompt.to(self.device) if mask_prompt is not None else None
        if not strokes:
            return self.model.decode(embedding, pts_t, labels_t, prompt)
        return self.model.decode(embedding, pts_t, labels_t, prompt, self._stroke_maps(view, strokes))

    def _stroke_maps(self, view: View, strokes: Strokes) -> torch.Tensor:
        """(1, 2, *crop) positive / negative voxels of the view that the strokes and box regions cross
        (a voxel of the volume marks the view voxel its centre falls in)."""
        maps = np.zeros((1, 2, *self.crop_size), dtype=np.float32)
        size = np.asarray(self.crop_size)
        for voxels, positive in strokes.voxels:
            idx = np.rint(view.to_view(voxels)).astype(int)
            idx = idx[np.all((idx >= 0) & (idx < size), axis=1)]
            maps[(0, 0 if positive else 1, *idx.T)] = 1
        for corners, positive in strokes.boxes:
            lo, hi = np.rint(view.to_view(corners)).astype(int)
            if np.all(hi >= 0) and np.all(lo < size):
                lo, hi = np.maximum(lo, 0), np.minimum(hi, size - 1)
                maps[(0, 0 if positive else 1, *(slice(a, b + 1) for a, b in zip(lo, hi)))] = 1
        return torch.from_numpy(maps).to(self.device)

    def _view_image(self, view: View) -> torch.Tensor:
        """(C, *crop_size) image of a view: the crop itself, or its box averaged down."""
        return self.volume.crop(view.box) if view.is_crop else self.volume.zoomed(view.box, self.crop_size)

    def _attribute_probs(self, out: dict) -> dict[str, dict[str, float]]:
        probs = {name: dict(zip(self.schema[name], torch.softmax(logits[0].float(), 0).tolist()))
                 for name, logits in out["attribute_logits"].items() if name not in self.untrained_attributes}
        return {name: balanced_probabilities(p, self.attribute_class_counts.get(name)) for name, p in probs.items()}
