"""``isrg predict``: images + a trained model + clicks -> masks, structured reports, key images, DICOM.

    isrg predict -i case.nii.gz ct_dicom_folder/ -m nnUNet_results/Dataset501_X/ISRGTrainer__nnUNetPlans__3d_fullres \\
        -f 0 1 2 3 4 -c clicks.json -o out/ [--dicom]

``clicks.json`` for one image (or the same clicks for every image)::

    {"space": "voxel",                       # "voxel": (z, y, x) index of the original image;
                                             # "world": (x, y, z) mm, LPS, as SimpleITK
     "lesions": [{"clicks": [{"point": [40, 120, 98], "positive": true},
                             {"point": [44, 120, 98], "positive": false}],
                  "attributes": {"density": "Hypodense"}},        # optional reader overrides
                 {"prompts": [                                    # any prompts, applied in this order
                     {"kind": "box", "corners": [[30, 100, 80], [52, 140, 118]]},
                     {"kind": "click", "point": [41, 120, 99], "positive": false},
                     {"kind": "scribble", "points": [[40, 118, 90], [40, 122, 104]], "positive": true},
                     {"kind": "lasso", "slice_axis": "z", "slice_index": 40,
                      "polygon": [[110, 85], [110, 110], [135, 110]], "positive": false}]},
                 ...]}

A lesion's ``clicks`` (if any) come first, then its ``prompts``. Box corners and scribble points are
in ``space``; a lasso's polygon is in voxels of its slice, in the order of the two other axes.

or, for several images, a mapping from image name (file or folder name, with or without
``.nii.gz``, or the path as given) to such an object. Per image, into ``OUT_DIR/<name>/``:
``mask.nii.gz`` (original geometry, label = lesion number), ``report.json`` (all lesions),
``report.md``, ``key_lesion_<n>.png`` per lesion and, with ``--dicom``, ``dicom/seg.dcm`` +
``dicom/sr.dcm`` (for NIfTI input a CT series is written first to ``dicom/ct/`` for them to reference).
A lesion larger than the largest field of view the model sees (4 crops per axis) is cut there and
says so: a warning, ``truncated_lesions`` in ``report.json`` and ``truncated`` with the faces in its
report.

Each image's folder is written whole or not at all: its outputs go to a temporary folder beside it
that then replaces it (:func:`~nnunet_isrg.files.atomic_folder`), so a run killed midway leaves the
previous outputs as they were, and a run with fewer lesions leaves no file of the earlier one.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import SimpleITK as sitk
from tqdm import tqdm

from nnunet_isrg.attributes import AttributeLabelError
from nnunet_isrg.files import atomic_folder, atomic_path, write_json_atomic, write_text_atomic
from nnunet_isrg.prompts import PROMPT_NAMES
from nnunet_isrg.report.dicom_export import export_dicom
from nnunet_isrg.report.key_image import write_key_image
from nnunet_isrg.report.render_text import render_markdown_document, render_text

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


class ClicksFileError(ValueError):
    """The clicks file is missing, not JSON, or not in the expected form."""


def image_name(path: str | os.PathLike) -> str:
    """Output name of an input image: the file name without its image suffix, or the folder name."""
    p = Path(str(path).rstrip("/\\"))
    for suf in NIFTI_SUFFIXES:
        if p.name.endswith(suf):
            return p.name[: -len(suf)]
    return p.name


def _check_spec(spec: Any, where: str) -> dict:
    if not isinstance(spec, Mapping) or "lesions" not in spec:
        raise ClicksFileError(f"{where}: expected an object {{\"space\": \"voxel\"|\"world\", \"lesions\": [...]}}")
    space = spec.get("space", "voxel")
    if space not in ("voxel", "world"):
        raise ClicksFileError(f"{where}: \"space\" must be \"voxel\" (z, y, x index) or \"world\" (x, y, z mm), "
                              f"got {space!r}")
    lesions = spec["lesions"]
    if not isinstance(lesions, list) or not lesions:
        raise ClicksFileError(f"{where}: \"lesions\" must be a non-empty list")
    for i, lesion in enumerate(lesions):
        w = f"{where}: lesions[{i}]"
        clicks = lesion.get("clicks", []) if isinstance(lesion, Mapping) else None
        prompts = lesion.get("prompts", []) if isinstance(lesion, Mapping) else None
        if not isinstance(clicks, list) or not isinstance(prompts, list) or not (clicks or prompts):
            raise ClicksFileError(f"{w} needs a non-empty \"clicks\" or \"prompts\" list")
        for j, c in enumerate(clicks):
            _check_prompt({**c, "kind": "click"} if isinstance(c, Mapping) else c, f"{w}.clicks[{j}]")
        for j, p in enumerate(prompts):
            _check_prompt(p, f"{w}.prompts[{j}]")
        if not isinstance(lesion.get("attributes", {}), Mapping):
            raise ClicksFileError(f"{w}: \"attributes\" must map attribute -> class")
    return dict(spec)


def _numbers(v: Any, n: int | None = None) -> bool:
    return (isinstance(v, list) and (n is None or len(v) == n)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))


def _check_prompt(p: Any, w: str) -> None:
    """One prompt of a clicks file: a click, box, scribble or lasso with its fields (ClicksFileError)."""
    kind = p.get("kind") if isinstance(p, Mapping) else None
    if kind not in PROMPT_NAMES:
        raise ClicksFileError(f"{w}: \"kind\" must be one of {list(PROMPT_NAMES)}, got {kind!r}")
    if not isinstance(p.get("positive", True), bool):
        raise ClicksFileError(f"{w}: \"positive\" must be true or false")
    if kind == "click" and not _numbers(p.get("point"), 3):
        raise ClicksFileError(f"{w}: \"point\" must be three numbers, got {p.get('point')!r}")
    if kind == "box" and not (isinstance(p.get("corners"), list) and len(p["corners"]) == 2
                              and all(_numbers(c, 3) for c in p["corners"])):
        raise ClicksFileError(f"{w}: \"corners\" must be two points of three numbers, got {p.get('corners')!r}")
    if kind == "scribble" and not (isinstance(p.get("points"), list) and p["points"]
                                   and all(_numbers(c, 3) for c in p["points"])):
        raise ClicksFileError(f"{w}: \"points\" must be a non-empty list of three numbers each")
    if kind == "lasso" and not (p.get("slice_axis") in ("z", "y", "x", 0, 1, 2) and isinstance(p.get("slice_index"), int)
                                and isinstance(p.get("polygon"), list) and len(p["polygon"]) >= 3
                                and all(_numbers(c, 2) for c in p["polygon"])):
        raise ClicksFileError(f"{w}: a lasso needs \"slice_axis\" (z, y or x), an integer \"slice_index\" and a "
                              f"\"polygon\" of at least three in-plane points")



def load_clicks(path: str | os.PathLike, images: Sequence[str]) -> dict[str, dict]:
    """Reads the clicks file and returns {image path as given: spec}; every image must get clicks."""
    path = Path(path)
    if not path.is_file():
        raise ClicksFileError(f"clicks file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ClicksFileError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, Mapping) and "lesions" in data:
        spec = _check_spec(data, str(path))
        return {img: spec for img in images}
    if not isinstance(data, Mapping):
        raise ClicksFileError(f"{path}: expected a JSON object (one clicks spec, or image name -> clicks spec)")
    out = {}
    for img in images:
        candidates = [img, str(Path(img)), Path(img.rstrip("/\\")).name, image_name(img)]
        key = next((k for k in candidates if k in data), None)
        if key is None:
            raise ClicksFileError(f"{path}: no clicks for image {img} (looked for keys {candidates}; "
                                  f"the file has {sorted(data)})")
        out[img] = _check_spec(data[key], f"{path} [{key}]")
    unused = set(data) - {k for img in images for k in (img, str(Path(img)), Path(img.rstrip('/\\')).name,
                                                          image_name(img))}
    if unused:
        raise ClicksFileError(f"{path}: clicks given for images not in -i: {sorted(unused)}")
    return out


def _write_nifti_atomic(image: sitk.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def predict_image(session, image: str, spec: Mapping, out_dir: Path, dicom: bool = False) -> dict:
    """Runs the clicks of ``spec`` on ``image`` in ``session`` and writes every output into ``out_dir``,
    replacing the folder whole; returns the paths."""
    name, space, empty, truncated = _run_clicks(session, image, spec)
    with atomic_folder(out_dir) as tmp:
        paths = _write_outputs(session, image, name, space, empty, truncated, tmp, dicom)
    return _moved(paths, str(tmp), str(out_dir))


def _moved(paths: Any, old: str, new: str) -> Any:
    """The paths (a dict, list or str of them) of files written under ``old``, as they are under ``new``."""
    if isinstance(paths, Mapping):
        return {k: _moved(v, old, new) for k, v in paths.items()}
    if isinstance(paths, list):
        return [_moved(v, old, new) for v in paths]
    if isinstance(paths, str) and (paths == old or paths.startswith(old + os.sep)):
        return new + paths[len(old):]
    return paths


def _run_clicks(session, image: str, spec: Mapping) -> tuple[str, str, list, dict]:
    """Every lesion of ``spec`` clicked in ``session``; returns (name, space, empty lesions, truncated ones)."""
    session.set_image(image)
    name = image_name(image)
    space = spec.get("space", "voxel")
    empty, truncated = [], {}
    for lesion in spec["lesions"]:
        lid = session.new_lesion()
        for p in [{**c, "kind": "click"} for c in lesion.get("clicks", [])] + list(lesion.get("prompts", [])):
            session.add_prompt(p, space)
        for attr, value in lesion.get("attributes", {}).items():
            session.set_attribute(lid, attr, value)
        if session.state(lid).mask_in_bbox is None:
            # the model found nothing there (or only voxels of earlier lesions): reported, not fatal
            warnings.warn(f"{image}: lesion {lid} (prompts {lesion.get('clicks', []) + lesion.get('prompts', [])}) "
                          f"came out empty; it has no report")
            empty.append(lid)
        elif session.state(lid).truncated:
            faces = session.state(lid).truncated_faces
            warnings.warn(f"{image}: lesion {lid} goes on beyond the largest field of view the model sees (faces "
                          f"{faces}); its mask is cut there (report: truncated)")
            truncated[lid] = faces
    return name, space, empty, truncated


def _write_outputs(session, image: str, name: str, space: str, empty: list, truncated: dict, out_dir: Path,
                   dicom: bool) -> dict:
    labels = session.label_image()
    paths = {"mask": str(out_dir / "mask.nii.gz")}
    _write_nifti_atomic(labels, out_dir / "mask.nii.gz")
    reports = session.reports()
    key_images = {}
    for rep in reports:
        png = out_dir / f"key_{rep.lesion_id}.png"
        write_key_image(session.image, session.state(rep.label).mask, png, measurements=rep.measurements,
                        title=f"{name} {rep.lesion_id}")
        key_images[rep.lesion_id] = png.name
    paths["key_images"] = [str(out_dir / v) for v in key_images.values()]
    doc = {"image": str(image), "name": name, "model": str(session.model.folder),
           "folds": [str(f) for f in session.model.folds], "coordinate_space_of_input": space,
           "summaries": {rep.lesion_id: render_text(rep) for rep in reports}, "empty_lesions": empty,
           "truncated_lesions": truncated, "lesions": [rep.to_dict() for rep in reports]}
    write_json_atomic(out_dir / "report.json", doc)
    paths["report_json"] = str(out_dir / "report.json")
    markdown = render_markdown_document(reports, title=f"Structured lesion report: {name}", key_images=key_images)
    write_text_atomic(out_dir / "report.md", markdown)
    paths["report_md"] = str(out_dir / "report.md")
    if dicom and reports:
        paths["dicom"] = export_dicom(session.image, sitk.GetArrayViewFromImage(labels), reports, out_dir / "dicom",
                                      source_datasets=session.dicom_datasets)
    return paths


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-i", "--images", nargs="+", required=True,
                        help="input CT(s): NIfTI files and/or DICOM series folders")
    parser.add_argument("-m", "--model", required=True,
                        help="trained model folder: nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__3d_fullres")
    parser.add_argument("-f", "--folds", nargs="+", default=["0"],
                        help="folds to use, averaged (default 0); 'all' for fold_all, 'available' for every "
                             "fold with a checkpoint")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-c", "--clicks", required=True,
                        help="clicks JSON: {space, lesions: [{clicks: [{point, positive}], attributes}]} or "
                             "image name -> that object")
    parser.add_argument("-o", "--out", required=True, help="output folder (one subfolder per image)")
    parser.add_argument("--dicom", action="store_true",
                        help="also write DICOM SEG + SR (for NIfTI input a CT series is written for them)")
    parser.add_argument("-device", "--device", default="cpu", help="torch device (cpu, cuda, mps)")
    return parser


def _parse_folds(folds: Sequence[str]):
    if len(folds) == 1 and folds[0] in ("available", "all_available"):
        return "all available"
    return [f if f == "all" else int(f) for f in folds]


def run_predict_from_args(args: argparse.Namespace) -> dict[str, dict]:
    """Entry point of ``isrg predict``; returns {image: output paths}. Bad input (clicks file, image,
    model folder, a click outside its image) ends it with ``SystemExit`` and the message, no traceback."""
    # the session and the model loading bring torch; `isrg` loads this module for every subcommand
    from nnunet_isrg.inference.model_loading import ModelFolderError
    from nnunet_isrg.inference.session import SessionError

    try:
        return _run_predict(args)
    except (ClicksFileError, ModelFolderError, SessionError, AttributeLabelError) as e:
        raise SystemExit(f"isrg predict: error: {e}") from None


def _run_predict(args: argparse.Namespace) -> dict[str, dict]:
    from nnunet_isrg.inference.session import ISRGSession  # torch: see run_predict_from_args

    clicks = load_clicks(args.clicks, args.images)
    names = [image_name(i) for i in args.images]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClicksFileError(f"several input images share the output name(s) {dup}; rename them")
    session = ISRGSession(args.model, folds=_parse_folds(args.folds), checkpoint=args.checkpoint, device=args.device)
    out = Path(args.out)
    results = {}
    for img in tqdm(args.images, desc="isrg predict", unit="image", disable=len(args.images) < 2):
        results[img] = predict_image(session, img, clicks[img], out / image_name(img), dicom=args.dicom)
        print(f"{img}: {len(clicks[img]['lesions'])} lesion(s) -> {out / image_name(img)}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = add_predict_arguments(argparse.ArgumentParser(prog="isrg predict", description=__doc__.split("\n")[0]))
    run_predict_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()
