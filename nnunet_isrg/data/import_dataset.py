"""Turns a folder of CT image / lesion mask pairs into an nnU-Net raw dataset with the ``isrg`` block.

Layout read (default, e.g. ``../shared/realdata/ibsi-sts``)::

    source_dir/STS_001/CT_image.nii.gz   + source_dir/STS_001/CT_mask.nii.gz
    source_dir/STS_002/CT_image.nii.gz   + ...

Images are found with ``image_glob`` (relative to ``source_dir``); the mask of each image is
``mask_name`` resolved relative to the image's folder, where ``{stem}`` stands for the image file
name without its extension and ``{case}`` for the source case name, so flat layouts work too
(``image_glob="images/*.nii.gz", mask_name="../masks/{stem}.nii.gz"``). The source case name is
the image's folder path under ``source_dir`` when the glob's file name is fixed
(``*/CT_image.nii.gz`` -> ``STS_001``), else the image file stem; the case id is that name with
every character outside ``[A-Za-z0-9_-]`` replaced by ``_`` and ``case_prefix`` put in front.

Written::

    out_root/DatasetNNN_Name/imagesTr/{case}_0000.nii.gz   the image, voxels and header unchanged
                             labelsTr/{case}.nii.gz        uint8, 1 = lesion (every non-zero mask voxel), 0 = rest
                             dataset.json                  with isrg: {attributes: schema, lesion_labels: [1]}
                             attributesTr.json             only with an attributes CSV

Masks with values other than 0/1 (several lesion labels, 255, probabilities) are binarised: any
non-zero voxel is lesion. The label is given exactly the image's header once its geometry agrees
within ``tolerance`` (so nnU-Net sees identical grids); pairs that disagree (size, spacing, origin,
direction) are refused. Everything is written into a hidden temporary folder in ``out_root`` that
is renamed to its final name at the end, so a failed import leaves nothing half-written.

Attributes CSV: a header with ``case`` and any of the schema's attributes (default: shape, invasion,
density, heterogeneity, surface) plus optional ``lesion_type``; ``case`` is the source case name or
the case id; empty cells are unknown. Class strings are checked against the schema
(case-insensitive, "surrounding" accepted for "adjacent").
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_isrg.attributes import (
    ATTRIBUTES_FILENAME,
    DEFAULT_SCHEMA,
    METADATA_KEYS,
    AttributeLabelError,
    normalise_class,
    validate_schema,
    validate_table,
)
from nnunet_isrg.files import write_json_atomic
from nnunet_isrg.data.verify import (
    GEOMETRY_TOLERANCE,
    DatasetVerificationError,
    geometry_differences,
    read_geometry,
    read_raw_voxels,
)

from nnunet_isrg.data.lidc import lidc_import_options

FILE_ENDING = ".nii.gz"
#: nnU-Net's name for the cross-validation folds
SPLITS_FILENAME = "splits_final.json"
_KNOWN_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class DatasetImportError(ValueError):
    """Input that cannot be imported; the message names the file(s) and the problem."""


@dataclass(frozen=True)
class Pair:
    source_name: str
    case_id: str
    image: Path
    mask: Path


def _stem(path: Path) -> str:
    name = path.name
    for ending in _KNOWN_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


def sanitise_case_id(name: str, prefix: str = "") -> str:
    """nnU-Net-safe case id: ``[A-Za-z0-9_-]`` only (path separators and spaces become ``_``)."""
    case = _UNSAFE.sub("_", f"{prefix}{name}").strip("_")
    if not case:
        raise DatasetImportError(f"case name {name!r} has no usable character for a case id")
    return case


def find_pairs(source_dir: str | os.PathLike, image_glob: str = "*/CT_image.nii.gz",
               mask_name: str = "CT_mask.nii.gz", case_prefix: str = "",
               cases: Sequence[str] | None = None) -> list[Pair]:
    """The image/mask pairs under ``source_dir``, sorted by case id (see the module docstring for names).

    ``cases`` restricts the import to these source case names (or case ids).
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise DatasetImportError(f"{source_dir}: source folder not found")
    fixed_name = not any(ch in Path(image_glob).name for ch in "*?[")
    images = sorted(p for p in source_dir.glob(image_glob) if p.is_file())
    if not images:
        raise DatasetImportError(f"{source_dir}: no image matches '{image_glob}'")
    pairs: dict[str, Pair] = {}
    for image in images:
        rel = image.parent.relative_to(source_dir)
        name = "_".join(rel.parts) if fixed_name else _stem(image)
        if not name:
            name = _stem(image)
        case_id = sanitise_case_id(name, case_prefix)
        mask = (image.parent / mask_name.format(stem=_stem(image), case=name)).resolve()
        if mask == image.resolve():
            raise DatasetImportError(f"{image}: mask pattern '{mask_name}' resolves to the image itself")
        if case_id in pairs:
            raise DatasetImportError(f"{image} and {pairs[case_id].image} both give case id '{case_id}'; "
                                     f"rename one or change image_glob")
        pairs[case_id] = Pair(name, case_id, image, mask)
    if cases is not None:
        wanted = set(cases)
        unknown = wanted - {p.source_name for p in pairs.values()} - set(pairs)
        if unknown:
            raise DatasetImportError(f"{source_dir}: requested case(s) {sorted(unknown)} not found; "
                                     f"available: {sorted(p.source_name for p in pairs.values())[:10]}")
        pairs = {k: p for k, p in pairs.items() if p.source_name in wanted or k in wanted}
    missing = [p for p in pairs.values() if not p.mask.is_file()]
    if missing:
        raise DatasetImportError(f"no mask for {len(missing)} image(s): {missing[0].image} expects {missing[0].mask} "
                                 f"(mask_name='{mask_name}')")
    return [pairs[k] for k in sorted(pairs)]


def read_attributes_csv(path: str | os.PathLike, pairs: Sequence[Pair],
                        schema: Mapping[str, list] = DEFAULT_SCHEMA) -> dict[str, dict[str, str]]:
    """``{case_id: {attribute: class}}`` from the CSV, class strings in the schema's spelling.

    Errors name the CSV, the row (1-based, header = row 1), the case, the attribute and the allowed values.
    """
    path = Path(path)
    by_name = {p.source_name: p.case_id for p in pairs}
    by_name.update({p.case_id: p.case_id for p in pairs})
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise AttributeLabelError(f"{path}: attributes CSV not found") from None
    except UnicodeDecodeError as e:
        raise AttributeLabelError(f"{path}: not UTF-8 text ({e})") from None
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text.strip() else ",", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    header = [h.strip() for h in (reader.fieldnames or [])]
    allowed_columns = ["case", *schema, *METADATA_KEYS]
    if "case" not in header:
        raise AttributeLabelError(f"{path}: the header needs a 'case' column; allowed columns: {allowed_columns}, "
                                  f"got {header}")
    extra = [h for h in header if h not in allowed_columns]
    if extra:
        raise AttributeLabelError(f"{path}: unknown column(s) {extra}; allowed columns: {allowed_columns}")
    out: dict[str, dict[str, str]] = {}
    rows_of: dict[str, int] = {}
    for row_number, raw_row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw_row.items() if k is not None}
        if None in raw_row:
            raise AttributeLabelError(f"{path}, row {row_number}: more cells than header columns {header}")
        name = row.get("case", "")
        if not name:
            if any(row.values()):
                raise AttributeLabelError(f"{path}, row {row_number}: empty 'case' cell")
            continue  # blank line
        if name not in by_name:
            raise AttributeLabelError(f"{path}, row {row_number}: unknown case '{name}'; allowed cases (source "
                                      f"names or case ids): {sorted(p.source_name for p in pairs)[:10]}"
                                      + (" ..." if len(pairs) > 10 else ""))
        case_id = by_name[name]
        if case_id in rows_of:
            raise AttributeLabelError(f"{path}, row {row_number}: case '{name}' already given in row {rows_of[case_id]}")
        rows_of[case_id] = row_number
        entry: dict[str, str] = {}
        for column, value in row.items():
            if column == "case" or not value:
                continue  # an empty cell is unknown, never guessed
            if column in METADATA_KEYS:
                entry[column] = value
            else:
                entry[column] = normalise_class(schema, column, value, case=name, source=f"{path}, row {row_number}")
        out[case_id] = entry
    return out


def _binary_label(pair: Pair, image_geometry, tolerance: float) -> tuple[sitk.Image, int, list]:
    """The label image (uint8 0/1, the image's exact header) and its lesion voxel count; raises on mismatch."""
    mask_geometry = read_geometry(pair.mask)
    diff = geometry_differences(image_geometry, mask_geometry, tolerance)
    if diff:
        raise DatasetImportError(f"case '{pair.source_name}': image {pair.image} and mask {pair.mask} have different "
                                 f"geometry: {'; '.join(diff)}. Resample the mask onto the image grid first.")
    if mask_geometry.n_components != 1:
        raise DatasetImportError(f"{pair.mask}: mask has {mask_geometry.n_components} components per voxel; "
                                 f"expected a scalar label map")
    mask = sitk.ReadImage(str(pair.mask))
    arr = sitk.GetArrayViewFromImage(mask)
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(read_raw_voxels(pair.mask)).any():
        raise DatasetImportError(f"{pair.mask}: mask contains NaN voxels")
    values = np.unique(arr)
    binary = (arr != 0).astype(np.uint8)
    label = sitk.GetImageFromArray(binary)
    label.SetSpacing(image_geometry.spacing)
    label.SetOrigin(image_geometry.origin)
    label.SetDirection(image_geometry.direction)
    return label, int(binary.sum()), [v.item() for v in values if v not in (0, 1)]


def _write_image(src: Path, dst: Path) -> None:
    """Copies a NIfTI byte for byte (no re-encoding, header unchanged); other formats go through SimpleITK."""
    if src.name.lower().endswith(FILE_ENDING):
        shutil.copyfile(src, dst)
    else:
        img = sitk.ReadImage(str(src))
        sitk.WriteImage(img, str(dst), useCompression=True)


def import_image_mask_pairs(source_dir: str | os.PathLike, out_root: str | os.PathLike, dataset_id: int,
                            name: str, image_glob: str = "*/CT_image.nii.gz", mask_name: str = "CT_mask.nii.gz",
                            attributes_csv: str | os.PathLike | None = None, case_prefix: str = "",
                            label_name: str = "lesion", cases: Sequence[str] | None = None,
                            schema: Mapping[str, list] | None = None, overwrite: bool = False,
                            tolerance: float = GEOMETRY_TOLERANCE, progress: bool = True,
                            attribute_table: Mapping[str, Mapping[str, str]] | None = None,
                            splits: Sequence[Mapping[str, Sequence[str]]] | None = None) -> Path:
    """Writes ``out_root/Dataset{dataset_id:03d}_{name}`` (see the module docstring) and returns its path.

    ``attribute_table`` (``{case_id: {attribute: class}}``) is an alternative to ``attributes_csv``;
    ``splits`` (nnU-Net's ``[{"train": [...], "val": [...]}, ...]``) is written as
    ``splits_final.json`` beside ``dataset.json``; ``isrg plan`` carries it to the preprocessed folder.

    Refuses (before writing anything) an existing dataset with the same id unless ``overwrite``, and
    pairs whose image and mask geometry differ by more than ``tolerance`` (relative for spacing, in
    voxels for the origin, absolute for direction cosines), naming both files and the property.
    """
    if not (isinstance(dataset_id, (int, np.integer)) and 1 <= int(dataset_id) <= 999):
        raise DatasetImportError(f"dataset id must be an integer 1..999, got {dataset_id!r}")
    if not name or _UNSAFE.search(name):
        raise DatasetImportError(f"dataset name {name!r} must be non-empty and use only letters, digits, '_' and '-'")
    schema = validate_schema(schema, "schema") if schema is not None else OrderedDict(DEFAULT_SCHEMA)
    out_root = Path(out_root)
    dataset_name = f"Dataset{int(dataset_id):03d}_{name}"
    final = out_root / dataset_name
    clashing = sorted(p for p in out_root.glob(f"Dataset{int(dataset_id):03d}_*") if p.name != dataset_name) \
        if out_root.is_dir() else []
    if clashing:
        raise DatasetImportError(f"{clashing[0]}: another dataset already uses id {int(dataset_id):03d}; nnU-Net needs "
                                 f"unique ids, choose another id or remove it")
    if final.exists() and not overwrite:
        raise DatasetImportError(f"{final}: already exists; pass overwrite=True (--overwrite) to replace it")

    pairs = find_pairs(source_dir, image_glob, mask_name, case_prefix, cases)
    if attributes_csv is not None and attribute_table is not None:
        raise DatasetImportError("give the attributes as a CSV or as a table, not both")
    table = read_attributes_csv(attributes_csv, pairs, schema) if attributes_csv is not None else None
    if attribute_table is not None:
        table = validate_table(attribute_table, schema, [p.case_id for p in pairs], source="attribute table")
    if splits is not None:
        _check_splits(splits, [p.case_id for p in pairs])

    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset_name}.", suffix=".importing", dir=out_root))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        iterator = pairs
        if progress:
            from tqdm import tqdm
            iterator = tqdm(pairs, desc=f"importing {dataset_name}", unit="case")
        provenance = {}
        notes = []
        for pair in iterator:
            image_geometry = read_geometry(pair.image)
            if image_geometry.n_components != 1 or len(image_geometry.size) != 3:
                raise DatasetImportError(f"{pair.image}: expected a 3D scalar CT image, got size {image_geometry.size} "
                                         f"with {image_geometry.n_components} component(s)")
            label, n_lesion, other_values = _binary_label(pair, image_geometry, tolerance)
            voxels = read_raw_voxels(pair.image)
            if np.issubdtype(voxels.dtype, np.floating) and np.isnan(voxels).any():
                raise DatasetImportError(f"{pair.image}: image contains {int(np.isnan(voxels).sum())} NaN voxel(s); "
                                         f"replace them (e.g. with -1024 HU) before importing")
            del voxels
            if other_values:
                notes.append(f"{pair.mask}: values {other_values[:5]} set to 1 (lesion)")
            if n_lesion == 0:
                notes.append(f"{pair.mask}: empty mask (no lesion voxel)")
            _write_image(pair.image, tmp / "imagesTr" / f"{pair.case_id}_0000{FILE_ENDING}")
            sitk.WriteImage(label, str(tmp / "labelsTr" / f"{pair.case_id}{FILE_ENDING}"), useCompression=True)
            provenance[pair.case_id] = {"image": str(pair.image), "mask": str(pair.mask), "lesion_voxels": n_lesion}

        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(str(tmp), {0: "CT"}, {"background": 0, label_name: 1}, len(pairs), FILE_ENDING,
                              dataset_name=dataset_name,
                              description=f"imported by nnunet-isrg from {Path(source_dir).resolve()} "
                                          f"(images '{image_glob}', masks '{mask_name}'; mask != 0 -> {label_name})",
                              license="see the source data set",
                              converted_by="nnunet_isrg.data.import_dataset",
                              isrg={"attributes": dict(schema), "lesion_labels": [1]})
        write_json_atomic(tmp / "import_provenance.json", {"cases": provenance, "notes": notes})
        if table is not None:
            write_json_atomic(tmp / ATTRIBUTES_FILENAME, table)
        if splits is not None:
            write_json_atomic(tmp / SPLITS_FILENAME, [{"train": list(s["train"]), "val": list(s["val"])} for s in splits])
        for note in notes:
            print(f"isrg import: note: {note}", file=sys.stderr)

        if final.exists():  # overwrite: swap in the new folder, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".{dataset_name}.", suffix=".old", dir=out_root))
            os.replace(final, old / dataset_name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _check_splits(splits: Sequence[Mapping[str, Sequence[str]]], case_ids: Sequence[str]) -> None:
    """Every fold names only known cases, and its training and validation cases are apart."""
    known = set(case_ids)
    for i, fold in enumerate(splits):
        train, val = set(fold.get("train", ())), set(fold.get("val", ()))
        unknown = (train | val) - known
        if unknown:
            raise DatasetImportError(f"splits, fold {i}: unknown case(s) {sorted(unknown)[:5]}")
        if train & val:
            raise DatasetImportError(f"splits, fold {i}: case(s) {sorted(train & val)[:5]} in training and validation")


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder with the image/mask pairs (e.g. ../shared/realdata/ibsi-sts)")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1..999)")
    parser.add_argument("-n", "--name", required=True, help="dataset name, e.g. STS (gives DatasetNNN_STS)")
    parser.add_argument("-o", "--out", default=None, help="where to write the dataset (default: $nnUNet_raw)")
    parser.add_argument("--image-glob", default="*/CT_image.nii.gz", help="images, relative to SOURCE")
    parser.add_argument("--mask-name", default="CT_mask.nii.gz",
                        help="mask path relative to each image's folder; {stem} = image name without extension, "
                             "{case} = source case name")
    parser.add_argument("--attributes", default=None,
                        help="CSV with columns case, shape, invasion, density, heterogeneity, surface[, lesion_type]")
    parser.add_argument("--case-prefix", default="", help="prefix put in front of every case id")
    parser.add_argument("--label-name", default="lesion", help="name of label 1 in dataset.json")
    parser.add_argument("--cases", nargs="+", default=None, help="import only these source cases")
    parser.add_argument("--tolerance", type=float, default=GEOMETRY_TOLERANCE,
                        help="geometry tolerance: relative for spacing, in voxels for origin, absolute for direction")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    parser.add_argument("--lidc", action="store_true",
                        help="SOURCE is the LIDC-IDRI nodule folder (<case>/image.nii.gz + mask.nii.gz, nodules.csv): "
                             "the report schema is the radiologists' characteristics, attributesTr.json their binned "
                             "ratings and splits_final.json groups the nodules by patient")


def run_import_from_args(args: argparse.Namespace) -> int:
    out = args.out or os.environ.get("nnUNet_raw")
    if not out:
        print("isrg import: error: give --out or set nnUNet_raw", file=sys.stderr)
        return 2
    try:
        if args.lidc:
            options = lidc_import_options(args.source, args.cases)
        else:
            options = dict(image_glob=args.image_glob, mask_name=args.mask_name, attributes_csv=args.attributes,
                           label_name=args.label_name, cases=args.cases)
        path = import_image_mask_pairs(args.source, out, args.dataset_id, args.name, case_prefix=args.case_prefix,
                                       overwrite=args.overwrite, tolerance=args.tolerance, **options)
    except (DatasetImportError, AttributeLabelError, DatasetVerificationError, FileNotFoundError, ValueError) as e:
        print(f"isrg import: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
