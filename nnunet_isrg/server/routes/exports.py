"""Downloads of a session's results: label maps and masks (NIfTI), reports (JSON, Markdown), key
images (PNG) and DICOM SEG + SR (zip). Each is an attachment named after the image."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
from fastapi import APIRouter
from fastapi.responses import Response

from nnunet_isrg.files import json_safe
from nnunet_isrg.inference.session import ISRGSession
from nnunet_isrg.report.dicom_export import export_dicom
from nnunet_isrg.report.key_image import write_key_image
from nnunet_isrg.report.render_text import render_markdown_document
from nnunet_isrg.server.access import known_lesion, ready_session
from nnunet_isrg.server.data_files import IMAGE_SUFFIXES
from nnunet_isrg.server.errors import http_error
from nnunet_isrg.server.sessions import SessionEntry
from nnunet_isrg.server.state import ServerStateDep

router = APIRouter()


def _download_stem(image_name: str | None) -> str:
    """The image's name without its ending, reduced to characters safe in any file name."""
    stem = Path(image_name or "image").name
    for s in IMAGE_SUFFIXES:
        if stem.lower().endswith(s):
            stem = stem[: -len(s)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


def _attachment(data: bytes, filename: str, media_type: str) -> Response:
    return Response(data, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "Cache-Control": "no-store"})


def _file_bytes(entry: SessionEntry, filename: str, write: Callable[[Path], object]) -> bytes:
    """The bytes of the file ``write(path)`` creates, for writers that only write to disk (SimpleITK,
    matplotlib, the DICOM writers). The file lives in a folder of its own inside the session's folder,
    removed afterwards, so concurrent exports never meet."""
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=entry.workdir))
    try:
        path = folder / filename
        write(path)
        return path.read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _nifti_bytes(entry: SessionEntry, array: np.ndarray, like: sitk.Image) -> bytes:
    """``array`` as a compressed NIfTI file with the geometry of ``like``."""
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(like)
    return _file_bytes(entry, "export.nii.gz", lambda path: sitk.WriteImage(img, str(path), useCompression=True))


def _reports(session: ISRGSession) -> list:
    """The reports of the lesions that have a mask; 409 when none has."""
    reps = session.reports()
    if not reps:
        raise http_error(409, "no lesion has a mask yet: click on a lesion first")
    return reps


@router.get("/sessions/{sid}/export/labels.nii.gz", summary="All lesions as one label map (NIfTI, label = lesion id)")
def export_labels(sid: str, state: ServerStateDep) -> Response:
    with ready_session(state.store, sid) as (entry, session):
        data = _nifti_bytes(entry, entry.label_map(), session.image)
        return _attachment(data, f"{_download_stem(entry.image_name)}_lesions.nii.gz", "application/gzip")


@router.get("/sessions/{sid}/export/lesions/{lid}/mask.nii.gz", summary="One lesion's mask (NIfTI, 0/1)")
def export_mask(sid: str, lid: int, state: ServerStateDep) -> Response:
    with ready_session(state.store, sid) as (entry, session):
        mask = session.state(known_lesion(session, lid)).mask.astype(np.uint8)
        data = _nifti_bytes(entry, mask, session.image)
        return _attachment(data, f"{_download_stem(entry.image_name)}_lesion{lid}.nii.gz", "application/gzip")


@router.get("/sessions/{sid}/export/report.json", summary="Reports of all lesions (JSON, versioned schema)")
def export_report_json(sid: str, state: ServerStateDep) -> Response:
    with ready_session(state.store, sid) as (entry, session):
        doc = {"image": entry.image_name, "lesions": [r.to_dict() for r in _reports(session)]}
        return _attachment(json.dumps(json_safe(doc), indent=2).encode(),
                           f"{_download_stem(entry.image_name)}_report.json", "application/json")


@router.get("/sessions/{sid}/export/report.md", summary="Reports of all lesions (Markdown)")
def export_report_md(sid: str, state: ServerStateDep) -> Response:
    with ready_session(state.store, sid) as (entry, session):
        md = render_markdown_document(_reports(session), title=f"Structured lesion report: {entry.image_name}")
        return _attachment(md.encode(), f"{_download_stem(entry.image_name)}_report.md", "text/markdown")


@router.get("/sessions/{sid}/export/lesions/{lid}/key_image.png",
            summary="Key image of a lesion (axial slice of its RECIST long axis, contour and axes)")
def export_key_image(sid: str, lid: int, state: ServerStateDep) -> Response:
    with ready_session(state.store, sid) as (entry, session):
        st = session.state(known_lesion(session, lid))
        if st.n_voxels == 0:
            raise http_error(409, f"lesion {lid} has no mask yet; add a positive click on it")
        measurements = session.report(lid).measurements
        data = _file_bytes(entry, "key.png", lambda path: write_key_image(
            session.image, st.mask, path, measurements=measurements, title=f"{entry.image_name}: lesion {lid}"))
        return _attachment(data, f"{_download_stem(entry.image_name)}_lesion{lid}_key.png", "image/png")


def _write_dicom_zip(session: ISRGSession, label_map: np.ndarray, reports: list, zip_path: Path) -> None:
    """DICOM SEG + SR (and a CT series) into a folder beside ``zip_path``, then zipped into ``zip_path``."""
    out_dir = zip_path.with_suffix("")
    export_dicom(session.image, label_map, reports, out_dir, source_datasets=session.dicom_datasets)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(out_dir.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(out_dir).as_posix())


@router.get("/sessions/{sid}/export/dicom.zip",
            summary="DICOM SEG + Comprehensive 3D SR (TID 1500) of all lesions, zipped (with a CT series "
                    "when the image was not DICOM)")
def export_dicom_zip(sid: str, state: ServerStateDep) -> Response:
    with ready_session(state.store, sid) as (entry, session):
        reps = _reports(session)
        # one at a time in the server: its peak (28 B/voxel) is above what the memory budget charges
        with state.dicom_export_slot:
            data = _file_bytes(entry, "dicom.zip",
                               lambda path: _write_dicom_zip(session, entry.label_map(), reps, path))
        return _attachment(data, f"{_download_stem(entry.image_name)}_dicom.zip", "application/zip")
