"""Checks the ISRG side of a raw nnU-Net dataset, and carries the attribute labels to the preprocessed folder.

What :func:`verify_raw_dataset` checks (every error names the file, and where it applies the case, the
attribute and the allowed values):

- ``dataset.json`` exists and parses; its ``isrg`` block (``attributes`` schema, ``lesion_labels``)
  is well formed and the lesion labels are foreground labels of ``dataset.json["labels"]``;
- ``attributesTr.json`` (optional: absent means every attribute is unknown, reported as a warning)
  parses, is ``{case_id: {attribute: class string}}``, uses only class strings of the schema
  (case-insensitive; "surrounding" is accepted for "adjacent") and only case ids that have a file in
  ``labelsTr/`` (case id = label file name minus ``dataset.json["file_ending"]``). Cases without any
  attribute are listed as a warning: their attribute loss is masked, never guessed;
- optionally the geometry of every case: each image channel and the label have the same size,
  spacing, origin and direction (header only, no pixels read), and optionally the pixels: no NaN in
  the images, label values among ``dataset.json["labels"]``.

nnU-Net's ``nnUNetv2_plan_and_preprocess`` copies ``dataset.json`` (and with it the schema) but not
``attributesTr.json``; :func:`copy_attributes_to_preprocessed` / :func:`find_attribute_table` put a
validated copy into ``nnUNet_preprocessed/DatasetXXX/`` (the dataset folder, beside ``dataset.json``),
which the trainer does by itself when the file is missing there.

All geometry here is SimpleITK's: size, spacing and origin in x,y,z order, spacing/origin in mm.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_isrg.attributes import (
    ATTRIBUTES_FILENAME,
    METADATA_KEYS,
    AttributeLabelError,
    lesion_labels_from_dataset_json,
    schema_from_dataset_json,
    validate_table,
)
from nnunet_isrg.files import write_json_atomic

DATASET_JSON = "dataset.json"
#: the schema as it was when the table was copied into the preprocessed folder
SCHEMA_FILENAME = "isrg_schema.json"
#: label of a case/attribute without a label in the class counts
UNKNOWN = "unknown"
#: default tolerance of the geometry comparison: relative for spacing, in voxels for the origin,
#: absolute for the direction cosines (NIfTI stores float32, so exact equality is too strict)
GEOMETRY_TOLERANCE = 1e-3


class DatasetVerificationError(ValueError):
    """A raw dataset that nnU-Net or the ISRG trainer cannot use; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Geometry:
    """Header of one image as SimpleITK reads it (x,y,z order; spacing and origin in mm)."""
    path: str
    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple
    n_components: int = 1


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Reads only the header of an image file; raises naming the file if it cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DatasetVerificationError(f"{path}: unreadable image ({str(e).strip().splitlines()[-1]})") from None
    return Geometry(str(path), tuple(int(s) for s in reader.GetSize()), tuple(reader.GetSpacing()),
                    tuple(reader.GetOrigin()), tuple(reader.GetDirection()),
                    int(reader.GetNumberOfComponents()))


def geometry_differences(a: Geometry, b: Geometry, tolerance: float = GEOMETRY_TOLERANCE) -> list[str]:
    """Human-readable differences between two headers, empty if they describe the same voxel grid.

    ``tolerance`` is relative for spacing, in units of the smallest voxel size for the origin and
    absolute for the direction cosines.
    """
    out = []
    if len(a.size) != len(b.size) or a.size != b.size:
        out.append(f"size (x,y,z) {a.size} vs {b.size}")
        if len(a.size) != len(b.size):
            return out
    if not np.allclose(a.spacing, b.spacing, rtol=tolerance, atol=0):
        out.append(f"spacing (x,y,z mm) {_fmt(a.spacing)} vs {_fmt(b.spacing)}")
    origin_tol = tolerance * float(min(min(a.spacing), min(b.spacing)))
    if not np.allclose(a.origin, b.origin, rtol=0, atol=origin_tol):
        out.append(f"origin (x,y,z mm) {_fmt(a.origin)} vs {_fmt(b.origin)}")
    if not np.allclose(a.direction, b.direction, rtol=0, atol=tolerance):
        out.append(f"direction {_fmt(a.direction)} vs {_fmt(b.direction)}")
    return out


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


# ------------------------------------------------------------------------------------------ dataset.json

def load_dataset_json(dataset_dir: str | os.PathLike) -> dict:
    path = Path(dataset_dir) / DATASET_JSON
    if not Path(dataset_dir).is_dir():
        raise DatasetVerificationError(f"{dataset_dir}: dataset folder not found")
    if not path.is_file():
        raise DatasetVerificationError(f"{path}: dataset.json not found; every nnU-Net raw dataset needs one")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetVerificationError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise DatasetVerificationError(f"{path}: must be a JSON object, got {type(data).__name__}")
    missing = [k for k in ("labels", "channel_names", "file_ending") if k not in data]
    if missing:
        raise DatasetVerificationError(f"{path}: missing required keys {missing} (nnU-Net needs labels, "
                                       f"channel_names, numTraining, file_ending)")
    return data


def _check_isrg_block(dataset_json: Mapping, source: str) -> tuple["OrderedDict[str, list[str]]", list[int], list[str]]:
    """Schema and lesion labels of the dataset; also the warnings about the block."""
    warnings: list[str] = []
    block = dataset_json.get("isrg")
    if block is None:
        warnings.append(f"{source}: no 'isrg' block; using the paper's default schema and every foreground label as lesion")
    elif not isinstance(block, Mapping):
        raise AttributeLabelError(f"{source}: 'isrg' must be an object with optional keys 'attributes' "
                                  f"{{name: [class strings]}} and 'lesion_labels' [int], got {block!r}")
    try:
        schema = schema_from_dataset_json(dataset_json)
    except AttributeLabelError as e:
        raise AttributeLabelError(f"{source}: {e}") from None

    foreground: set[int] = set()
    for name, value in dataset_json["labels"].items():
        values = value if isinstance(value, (list, tuple)) else [value]
        try:
            foreground.update(int(v) for v in values if int(v) != 0)
        except (TypeError, ValueError):
            raise DatasetVerificationError(f"{source}: label '{name}' must be an integer (or a list of integers "
                                           f"for a region), got {value!r}") from None
    if isinstance(block, Mapping) and "lesion_labels" in block:
        raw = block["lesion_labels"]
        if (not isinstance(raw, list) or not raw
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)):
            raise AttributeLabelError(f"{source}: isrg.lesion_labels must be a non-empty list of integer label "
                                      f"values; allowed values: {sorted(foreground)}; got {raw!r}")
        bad = [v for v in raw if v not in foreground]
        if bad:
            raise AttributeLabelError(f"{source}: isrg.lesion_labels {bad} are not foreground labels of "
                                      f"dataset.json['labels']; allowed values: {sorted(foreground)}")
    lesion_labels = lesion_labels_from_dataset_json(dataset_json)
    if not lesion_labels:
        raise DatasetVerificationError(f"{source}: dataset.json['labels'] has no foreground label, so there is no lesion")
    if isinstance(block, Mapping):
        extra = sorted(set(block) - {"attributes", "lesion_labels"})
        if extra:
            warnings.append(f"{source}: isrg block has keys {extra} that verification does not check")
    return schema, lesion_labels, warnings


def case_files(dataset_dir: str | os.PathLike, dataset_json: Mapping) -> "OrderedDict[str, dict]":
    """``{case_id: {"images": [paths], "label": path}}`` of the training cases, ids taken from ``labelsTr/``.

    With a ``dataset`` key in dataset.json (nnU-Net's explicit file lists) its keys are the case ids.
    """
    dataset_dir = Path(dataset_dir)
    if "dataset" in dataset_json:
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
        files = get_filenames_of_train_images_and_targets(str(dataset_dir), json.loads(json.dumps(dataset_json)))
        return OrderedDict((k, {"images": [Path(p) for p in v["images"]], "label": Path(v["label"])})
                           for k, v in sorted(files.items()))
    ending = str(dataset_json["file_ending"])
    labels_dir = dataset_dir / "labelsTr"
    if not labels_dir.is_dir():
        raise DatasetVerificationError(f"{labels_dir}: labelsTr folder not found")
    n_channels = len(dataset_json["channel_names"])
    out: "OrderedDict[str, dict]" = OrderedDict()
    for p in sorted(labels_dir.iterdir()):
        if p.name.endswith(ending) and not p.name.startswith("."):
            case = p.name[: -len(ending)]
            out[case] = {"images": [dataset_dir / "imagesTr" / f"{case}_{c:04d}{ending}" for c in range(n_channels)],
                         "label": p}
    return out


# ------------------------------------------------------------------------------------- attribute table

def _reject_duplicate_keys(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key '{k}'")
        seen[k] = v
    return seen


def load_attribute_table(path: str | os.PathLike, schema: Mapping,
                         case_ids: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
    """Reads and validates ``attributesTr.json``; class strings come back in the schema's spelling.

    Unlike :func:`nnunet_isrg.attributes.read_attribute_table` a malformed file also reports where it
    breaks, duplicate case ids are errors (JSON would silently keep the last), and the message says
    what the file should look like.
    """
    path = Path(path)
    expected = (f"expected {{case_id: {{attribute: class string}}}} with attributes "
                f"{dict(schema)} and optional metadata {list(METADATA_KEYS)}")
    try:
        with open(path) as f:
            table = json.load(f, object_pairs_hook=_reject_duplicate_keys)
    except FileNotFoundError:
        raise AttributeLabelError(f"{path}: attribute table not found") from None
    except json.JSONDecodeError as e:
        raise AttributeLabelError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}; "
                                  f"{expected}") from None
    except UnicodeDecodeError as e:
        raise AttributeLabelError(f"{path}: not UTF-8 text ({e})") from None
    except ValueError as e:  # duplicate key
        raise AttributeLabelError(f"{path}: {e}; each case id and attribute may appear only once") from None
    if not isinstance(table, dict):
        raise AttributeLabelError(f"{path}: must be a JSON object, got {type(table).__name__}; {expected}")
    known = set(case_ids) if case_ids is not None else None
    for case, entry in table.items():
        if known is not None and case not in known:
            close = difflib.get_close_matches(case, known, n=1)
            raise AttributeLabelError(f"{path}: unknown case id '{case}': no file for it in labelsTr"
                                      + (f" (did you mean '{close[0]}'?)" if close else "")
                                      + f"; allowed case ids: {_preview(sorted(known))}")
        if not isinstance(entry, dict):
            raise AttributeLabelError(f"{path}: case '{case}' must be an object {{attribute: class string}}, "
                                      f"got {type(entry).__name__} {entry!r}; {expected}")
        for key in METADATA_KEYS:
            if key in entry and entry[key] is not None and not isinstance(entry[key], str):
                raise AttributeLabelError(f"{path}: case '{case}', metadata '{key}' must be a string, "
                                          f"got {entry[key]!r}")
    return validate_table(table, schema, case_ids, source=str(path))


# ------------------------------------------------------------------------------------------ the report

@dataclass
class VerificationReport:
    """What :func:`verify_raw_dataset` found. ``class_counts[attribute][class]`` counts labelled cases,
    ``class_counts[attribute]["unknown"]`` the cases without a label for that attribute."""
    dataset_dir: str
    n_cases: int
    n_labelled: int
    class_counts: "OrderedDict[str, OrderedDict[str, int]]"
    lesion_types: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    schema: "OrderedDict[str, list[str]]" = field(default_factory=OrderedDict)
    lesion_labels: list[int] = field(default_factory=list)
    has_attribute_table: bool = False
    geometry_checked: bool = False
    pixels_checked: bool = False
    case_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_table(self) -> str:
        """Markdown table: per attribute, the number of cases of each class and unknown."""
        lines = [f"Dataset: {self.dataset_dir}",
                 f"cases: {self.n_cases}, with at least one attribute label: {self.n_labelled}, "
                 f"lesion labels: {self.lesion_labels}",
                 "", "| attribute | class | cases |", "|---|---|---|"]
        for attribute, counts in self.class_counts.items():
            for i, (cls, n) in enumerate(counts.items()):
                lines.append(f"| {attribute if i == 0 else ''} | {cls} | {n} |")
        if self.lesion_types:
            lines += ["", "| lesion type | cases |", "|---|---|"]
            lines += [f"| {t} | {n} |" for t, n in sorted(self.lesion_types.items())]
        checks = ["schema", "attributes"] + (["geometry"] if self.geometry_checked else []) + \
                 (["pixels (NaN, label values)"] if self.pixels_checked else [])
        lines += ["", f"checked: {', '.join(checks)}"]
        if self.warnings:
            lines += ["", f"{len(self.warnings)} warning(s):"] + [f"- {w}" for w in self.warnings]
        return "\n".join(lines)


def verify_raw_dataset(dataset_dir: str | os.PathLike, check_geometry: bool = True,
                       check_pixels: bool = False, tolerance: float = GEOMETRY_TOLERANCE,
                       progress: bool = False) -> VerificationReport:
    """Checks a raw nnU-Net dataset's ISRG side (see the module docstring).

    Raises :class:`~nnunet_isrg.attributes.AttributeLabelError` for schema/attribute problems and
    :class:`DatasetVerificationError` for dataset.json, file and geometry problems; warnings (no
    attribute table, cases without attributes, ...) go into the report.
    ``check_pixels`` reads every image and label (slow): NaN in images, label values not in dataset.json.
    """
    dataset_dir = Path(dataset_dir)
    dataset_json = load_dataset_json(dataset_dir)
    source = str(dataset_dir / DATASET_JSON)
    schema, lesion_labels, warnings = _check_isrg_block(dataset_json, source)
    cases = case_files(dataset_dir, dataset_json)
    if not cases:
        raise DatasetVerificationError(f"{dataset_dir / 'labelsTr'}: no label files ending in "
                                       f"'{dataset_json['file_ending']}' (dataset.json file_ending)")
    case_ids = list(cases)
    if "numTraining" in dataset_json and int(dataset_json["numTraining"]) != len(cases):
        warnings.append(f"{source}: numTraining is {dataset_json['numTraining']} but labelsTr has {len(cases)} "
                        f"cases; nnU-Net's verify_dataset_integrity will refuse this")

    table_path = dataset_dir / ATTRIBUTES_FILENAME
    if table_path.is_file():
        table = load_attribute_table(table_path, schema, case_ids)
    else:
        table = {}
        warnings.append(f"{table_path}: not found; every attribute of every case is unknown "
                        f"(masked out of the attribute loss)")

    counts: "OrderedDict[str, OrderedDict[str, int]]" = OrderedDict()
    for name, classes in schema.items():
        c = Counter(table[k][name] for k in case_ids if k in table and name in table[k])
        counts[name] = OrderedDict([(cls, c.get(cls, 0)) for cls in classes] +
                                   [(UNKNOWN, len(case_ids) - sum(c.values()))])
    labelled = [k for k in case_ids if any(a in schema for a in table.get(k, {}))]
    unlabelled = [k for k in case_ids if k not in labelled]
    if table and unlabelled:
        warnings.append(f"{table_path}: {len(unlabelled)} case(s) without any attribute label (their attribute "
                        f"loss is masked): {_preview(unlabelled)}")
    partial = [k for k in labelled if len([a for a in table[k] if a in schema]) < len(schema)]
    if partial:
        warnings.append(f"{table_path}: {len(partial)} case(s) with some attributes unknown: {_preview(partial)}")
    lesion_types = dict(Counter(e["lesion_type"] for e in table.values() if e.get("lesion_type")))

    if check_geometry or check_pixels:
        _check_case_files(dataset_dir, dataset_json, cases, check_geometry, check_pixels, tolerance, warnings,
                          progress)

    return VerificationReport(str(dataset_dir), len(case_ids), len(labelled), counts, lesion_types, warnings,
                              schema, lesion_labels, table_path.is_file(), check_geometry, check_pixels, case_ids)


def _preview(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _check_case_files(dataset_dir: Path, dataset_json: Mapping, cases: Mapping[str, dict], check_geometry: bool,
                      check_pixels: bool, tolerance: float, warnings: list[str], progress: bool) -> None:
    ending = str(dataset_json["file_ending"])
    images_dir = dataset_dir / "imagesTr"
    if "dataset" not in dataset_json and images_dir.is_dir():
        # an image case without a label is something nnU-Net refuses; say so before it does
        n_channel_suffix = len(ending) + 5
        image_cases = {p.name[:-n_channel_suffix] for p in images_dir.iterdir()
                       if p.name.endswith(ending) and not p.name.startswith(".")}
        orphans = sorted(image_cases - set(cases))
        if orphans:
            raise DatasetVerificationError(f"{images_dir}: image case(s) without a label file in labelsTr: "
                                           f"{_preview(orphans)}")
    label_values = set()
    for value in dataset_json["labels"].values():
        label_values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    if "ignore" in dataset_json["labels"]:
        label_values.add(int(dataset_json["labels"]["ignore"]))

    iterator = cases.items()
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=len(cases), desc="verifying cases", unit="case")
    for case, files in iterator:
        for image in files["images"]:
            if not Path(image).is_file():
                raise DatasetVerificationError(f"{image}: image of case '{case}' not found (expected one file per "
                                               f"channel of dataset.json channel_names: {dict(dataset_json['channel_names'])})")
        if check_geometry:
            label_geometry = read_geometry(files["label"])
            if label_geometry.n_components != 1:
                raise DatasetVerificationError(f"{files['label']}: label of case '{case}' has "
                                               f"{label_geometry.n_components} components per voxel; expected a scalar label map")
            for image in files["images"]:
                diff = geometry_differences(read_geometry(image), label_geometry, tolerance)
                if diff:
                    raise DatasetVerificationError(f"case '{case}': image {image} and label {files['label']} differ in "
                                                   f"{'; '.join(diff)}")
        if check_pixels:
            _check_pixels(case, files, label_values, warnings)


def read_raw_voxels(path: Path) -> np.ndarray:
    """Voxel values as stored. SimpleITK's NIfTI reader turns NaN into 0 (seen with SimpleITK 2.5.7),
    which would hide exactly what we look for, so NIfTI goes through nibabel (an nnU-Net dependency)."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel

        return np.asanyarray(nibabel.load(str(path)).dataobj)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _check_pixels(case: str, files: Mapping, label_values: set[int], warnings: list[str]) -> None:
    for image in files["images"]:
        arr = read_raw_voxels(Path(image))
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
            raise DatasetVerificationError(f"{image}: image of case '{case}' contains {int(np.isnan(arr).sum())} "
                                           f"NaN voxel(s); replace them (e.g. with the minimum HU) before planning")
    seg_img = sitk.ReadImage(str(files["label"]))
    seg = sitk.GetArrayViewFromImage(seg_img)
    if np.issubdtype(seg.dtype, np.floating) and np.isnan(seg).any():
        raise DatasetVerificationError(f"{files['label']}: label of case '{case}' contains NaN voxels")
    present = set(np.unique(seg).tolist())
    bad = sorted(present - label_values)
    if bad:
        raise DatasetVerificationError(f"{files['label']}: label of case '{case}' contains values {bad}; "
                                       f"allowed values (dataset.json labels): {sorted(label_values)}")
    if present <= {0}:
        warnings.append(f"{files['label']}: case '{case}' has no foreground voxel (no lesion to click on)")


# ------------------------------------------------------------------------------ the preprocessed folder

def copy_attributes_to_preprocessed(raw_dataset_dir: str | os.PathLike,
                                    preprocessed_dataset_dir: str | os.PathLike) -> Path:
    """Validated copy of the raw ``attributesTr.json`` (and the schema) into ``nnUNet_preprocessed/DatasetXXX/``.

    The table is checked against the raw dataset's schema and ``labelsTr`` cases and written with
    the schema's spelling of every class; the schema and lesion labels go to ``isrg_schema.json``
    beside it. Writes are atomic (temporary file, then rename) and a file whose content would not
    change is left alone, so calling this again, or from several DDP workers, is harmless.
    Returns the path of the copied table.
    """
    raw_dataset_dir, pre = Path(raw_dataset_dir), Path(preprocessed_dataset_dir)
    dataset_json = load_dataset_json(raw_dataset_dir)
    schema, lesion_labels, _ = _check_isrg_block(dataset_json, str(raw_dataset_dir / DATASET_JSON))
    table = load_attribute_table(raw_dataset_dir / ATTRIBUTES_FILENAME, schema,
                                 list(case_files(raw_dataset_dir, dataset_json)))
    if not pre.is_dir():
        raise DatasetVerificationError(f"{pre}: preprocessed dataset folder not found; run "
                                       f"nnUNetv2_plan_and_preprocess (or nnUNetv2_extract_fingerprint) first")
    _write_if_changed(pre / SCHEMA_FILENAME, {"attributes": schema, "lesion_labels": lesion_labels,
                                              "source": str((raw_dataset_dir / ATTRIBUTES_FILENAME).resolve())})
    target = pre / ATTRIBUTES_FILENAME
    _write_if_changed(target, table)
    return target


#: nnU-Net's cross-validation folds, read by the trainers from the preprocessed dataset folder
SPLITS_FILENAME = "splits_final.json"


def copy_splits_to_preprocessed(raw_dataset_dir: str | os.PathLike,
                                preprocessed_dataset_dir: str | os.PathLike) -> Path | None:
    """The raw dataset's ``splits_final.json`` (e.g. the LIDC import's patient-grouped folds) copied
    into ``nnUNet_preprocessed/DatasetXXX/``, where nnU-Net's trainers read their folds.

    Checked first: a list of ``{"train": [...], "val": [...]}`` folds over the raw dataset's
    ``labelsTr`` cases, no case in both parts of a fold. A different file already in the
    preprocessed folder is replaced (saying so on stdout: models trained on its folds no longer
    match); an identical one is left alone. Returns the copy's path, or None when the raw dataset
    has no splits file.
    """
    raw_dataset_dir, pre = Path(raw_dataset_dir), Path(preprocessed_dataset_dir)
    source = raw_dataset_dir / SPLITS_FILENAME
    if not source.is_file():
        return None
    try:
        splits = json.loads(source.read_text())
    except json.JSONDecodeError as e:
        raise DatasetVerificationError(f"{source}: not valid JSON ({e})") from None
    cases = set(case_files(raw_dataset_dir, load_dataset_json(raw_dataset_dir)))
    if not isinstance(splits, list) or not splits:
        raise DatasetVerificationError(f"{source}: expected a list of folds {{\"train\": [...], \"val\": [...]}}")
    for i, fold in enumerate(splits):
        if not isinstance(fold, Mapping) or not {"train", "val"} <= set(fold):
            raise DatasetVerificationError(f"{source}, fold {i}: expected the keys 'train' and 'val'")
        train, val = set(fold["train"]), set(fold["val"])
        unknown = sorted((train | val) - cases)
        if unknown:
            raise DatasetVerificationError(f"{source}, fold {i}: case(s) {_preview(unknown)} not in "
                                           f"{raw_dataset_dir / 'labelsTr'}")
        if train & val:
            raise DatasetVerificationError(f"{source}, fold {i}: case(s) {_preview(sorted(train & val))} in both "
                                           f"training and validation")
    if not pre.is_dir():
        raise DatasetVerificationError(f"{pre}: preprocessed dataset folder not found; plan and preprocess first")
    target = pre / SPLITS_FILENAME
    if target.is_file():
        try:
            old = json.loads(target.read_text())
        except json.JSONDecodeError:
            old = None
        if old is not None and old != splits:
            print(f"{target}: replaced by the raw dataset's {SPLITS_FILENAME} (folds trained on the old splits no "
                  f"longer match them)")
    _write_if_changed(target, splits)
    return target


def _write_if_changed(path: Path, obj) -> None:
    if path.is_file():
        try:
            with open(path) as f:
                if json.load(f) == json.loads(json.dumps(obj)):
                    return
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # a broken copy gets replaced
    write_json_atomic(path, obj)


def find_attribute_table(preprocessed_dataset_dir: str | os.PathLike,
                         raw_dataset_dir: str | os.PathLike | None = None) -> Path | None:
    """The ``attributesTr.json`` the trainer should read, copying it from the raw dataset when needed.

    ``raw_dataset_dir`` defaults to ``$nnUNet_raw/<name of the preprocessed folder>``. The copy in the
    preprocessed folder is (re)made when it is missing or older than the raw table. Returns ``None``
    when there is no table anywhere (every attribute unknown).
    """
    pre = Path(preprocessed_dataset_dir)
    target = pre / ATTRIBUTES_FILENAME
    if raw_dataset_dir is None and os.environ.get("nnUNet_raw"):
        raw_dataset_dir = Path(os.environ["nnUNet_raw"]) / pre.name
    raw_table = Path(raw_dataset_dir) / ATTRIBUTES_FILENAME if raw_dataset_dir is not None else None
    if raw_table is not None and raw_table.is_file():
        if not target.is_file() or raw_table.stat().st_mtime > target.stat().st_mtime:
            copy_attributes_to_preprocessed(raw_dataset_dir, pre)
        return target
    return target if target.is_file() else None


# ------------------------------------------------------------------------------------------------ CLI

def resolve_raw_dataset(dataset: str | int | os.PathLike) -> Path:
    """A raw dataset folder from a path, an id (``501``) or a name (``Dataset501_X``) under ``$nnUNet_raw``."""
    as_path = Path(str(dataset)).expanduser()
    if as_path.is_dir():
        return as_path
    if os.sep in str(dataset):
        raise DatasetVerificationError(f"{dataset}: dataset folder not found")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise DatasetVerificationError(f"{dataset}: not a folder, and nnUNet_raw is not set, so a dataset id or "
                                       f"name cannot be resolved; pass the dataset folder or export nnUNet_raw")
    try:
        name = maybe_convert_to_dataset_name(str(dataset))
    except (RuntimeError, ValueError) as e:
        raise DatasetVerificationError(f"{dataset}: {e}") from None
    path = Path(raw) / name
    if not path.is_dir():
        raise DatasetVerificationError(f"{path}: dataset '{name}' not found under nnUNet_raw={raw}")
    return path


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset id (501), name (Dataset501_X) under $nnUNet_raw, or a folder")
    parser.add_argument("--no-geometry", action="store_true",
                        help="skip the image/label geometry check (size, spacing, origin, direction)")
    parser.add_argument("--pixels", action="store_true",
                        help="also read every image and label: NaN voxels, label values not in dataset.json (slow)")
    parser.add_argument("--tolerance", type=float, default=GEOMETRY_TOLERANCE,
                        help="geometry tolerance: relative for spacing, in voxels for origin, absolute for direction")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON to this file")
    parser.add_argument("--copy-to-preprocessed", action="store_true",
                        help="copy the validated attributesTr.json into $nnUNet_preprocessed/DatasetXXX/ "
                             "(the trainer also does this by itself when the file is missing there)")


def run_verify_from_args(args: argparse.Namespace) -> int:
    try:
        dataset_dir = resolve_raw_dataset(args.dataset)
        report = verify_raw_dataset(dataset_dir, check_geometry=not args.no_geometry, check_pixels=args.pixels,
                                    tolerance=args.tolerance, progress=True)
        print(report.summary_table())
        if args.json_out:
            write_json_atomic(args.json_out, report.to_dict())
        if args.copy_to_preprocessed:
            pre_root = os.environ.get("nnUNet_preprocessed")
            if not pre_root:
                raise DatasetVerificationError("--copy-to-preprocessed needs nnUNet_preprocessed to be set")
            if not report.has_attribute_table:
                raise DatasetVerificationError(f"{dataset_dir / ATTRIBUTES_FILENAME}: nothing to copy")
            target = copy_attributes_to_preprocessed(dataset_dir, Path(pre_root) / dataset_dir.name)
            print(f"copied attribute labels to {target}")
    except (AttributeLabelError, DatasetVerificationError) as e:
        print(f"isrg verify: error: {e}", file=sys.stderr)
        return 1
    print("OK")
    return 0
