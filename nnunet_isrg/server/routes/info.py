"""What the server offers: its settings and attribute schema (``/info``), and the images in its data
folders (``/files``)."""
from __future__ import annotations

from fastapi import APIRouter

from nnunet_isrg.files import json_safe
from nnunet_isrg.server.data_files import UPLOAD_SUFFIXES, list_data_files
from nnunet_isrg.server.memory import WORKING_BYTES_PER_VOXEL, WORKING_FACTOR
from nnunet_isrg.server.slices import PLANES, WINDOW_NAMES, window_presets
from nnunet_isrg.server.state import ServerStateDep

router = APIRouter()


@router.get("/info", summary="Server information: attribute schema, window presets, upload limit, memory "
                             "budget, data folders")
def info(state: ServerStateDep):
    budget = state.budget
    memory = {"session_bytes": budget.per_session_bytes, "total_bytes": budget.total_bytes,
              "used_bytes": budget.used_bytes, "bytes_per_voxel": WORKING_BYTES_PER_VOXEL * WORKING_FACTOR,
              "embedding_cache_bytes": budget.session_cache_bytes}
    return json_safe({"schema": state.schema, "windows": window_presets(), "window_names": list(WINDOW_NAMES),
                      "planes": list(PLANES), "max_upload_mb": state.max_upload / 2**20,
                      "upload_suffixes": list(UPLOAD_SUFFIXES), "session_ttl_s": state.store.ttl_s,
                      "max_sessions": state.store.max_sessions, "memory": memory,
                      "data_dirs": [{"index": i, "name": r.name} for i, r in enumerate(state.data_roots)],
                      "folds": [str(f) for f in state.model.folds], "crop_size": list(state.model.crop_size),
                      "token_required": state.token is not None})


@router.get("/files", summary="Images that can be opened by path (files and DICOM folders in the data folders)")
def files(state: ServerStateDep):
    return list_data_files(state.data_roots)
