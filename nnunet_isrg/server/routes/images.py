"""A session's image: open one from a data folder or an upload, read its geometry, render slices."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal, Optional

import SimpleITK as sitk
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from nnunet_isrg.server.access import ready_session
from nnunet_isrg.server.data_files import UPLOAD_SUFFIXES, resolve_data_path
from nnunet_isrg.server.opening import start_opening
from nnunet_isrg.server.slices import WINDOW_NAMES, render_slice_png, resolve_window
from nnunet_isrg.server.state import ServerStateDep
from nnunet_isrg.server.uploads import checked_upload_suffix, receive_upload
from nnunet_isrg.server.views import image_json

router = APIRouter()


class OpenRequest(BaseModel):
    # strict: a number is not a path and a string or a boolean is not a folder index
    model_config = ConfigDict(strict=True)

    path: StrictStr = Field(..., description="path relative to one of the server's --data folders "
                                       "(a NIfTI/MHA/NRRD file or a DICOM series folder)",
                      examples=["imagesTr/case_0000_0000.nii.gz"])
    data_dir: Optional[StrictInt] = Field(None, description="index of the data folder (GET /files); "
                                                      "default: the first folder that holds the path")


@router.post("/sessions/{sid}/open", status_code=202,
             summary="Open an image by a path inside a data folder (returns at once with status 'preparing' "
                     "unless wait=true)")
def open_image(sid: str, req: OpenRequest, state: ServerStateDep,
               wait: bool = Query(False, description="return when ready")) -> JSONResponse:
    state.store.get(sid)
    path, rel = resolve_data_path(state.data_roots, req.path, req.data_dir)
    return start_opening(state, sid, path, rel, wait)


@router.post("/sessions/{sid}/upload", status_code=202,
             summary="Upload an image as the request body (NIfTI/MHA/NRRD, or a .zip of a DICOM series)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_image(sid: str, request: Request, state: ServerStateDep,
                       filename: str = Query(..., description="original file name; its ending picks the "
                                                              f"reader: one of {list(UPLOAD_SUFFIXES)}"),
                       wait: bool = Query(False, description="return when ready")) -> JSONResponse:
    entry = state.store.get(sid)
    suffix = checked_upload_suffix(filename)
    path = await receive_upload(request, entry.workdir, suffix, state.max_upload)
    zip_dest = Path(tempfile.mkdtemp(prefix="unzip-", dir=entry.workdir)) if suffix == ".zip" else None
    # start_opening waits for the session's lock and unpacks zips: not on the event loop
    return await run_in_threadpool(start_opening, state, sid, path, Path(filename).name, wait, zip_dest,
                                   uploaded=True)


@router.get("/sessions/{sid}/image", summary="Image info: shape (z, y, x), spacing, planes, window presets")
def get_image(sid: str, state: ServerStateDep):
    with ready_session(state.store, sid) as (entry, _):
        return image_json(entry)


@router.get("/sessions/{sid}/slice/{plane}/{index}", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the slice as PNG"}},
            summary="A slice as PNG, windowed, optionally with the lesions overlaid (current lesion in red)")
def get_slice(sid: str, plane: Literal["axial", "coronal", "sagittal"], index: int, state: ServerStateDep,
              window: str = Query("soft", description=f"one of {list(WINDOW_NAMES)}"),
              level: Optional[float] = Query(None, description="HU (needed for custom)"),
              width: Optional[float] = Query(None, description="HU (needed for custom)"),
              overlay: bool = Query(False, description="overlay the lesion masks")) -> Response:
    w, l = resolve_window(window, level, width)
    with ready_session(state.store, sid) as (entry, session):
        image = session.image  # held here so the array view below stays valid if another image opens
        volume = sitk.GetArrayViewFromImage(image)
        labels = entry.label_map() if overlay else None
        current = session.current_lesion_id
    # rendered outside the lock: the session's next request need not wait for the PNG
    png = render_slice_png(volume, plane, index, w, l, labels, current)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
