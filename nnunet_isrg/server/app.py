"""HTTP API and browser viewer on top of :class:`ISRGSession` (FastAPI).

    app = create_app("nnUNet_results/Dataset501_X/ISRGTrainer__nnUNetPlans__3d_fullres",
                     data_dirs=["/data/ct"], token=None)
    uvicorn.run(app, host="127.0.0.1", port=8765)        # or: isrg serve --model ... --data ...

The page is served at ``/``, the OpenAPI schema at ``/openapi.json`` and ``/docs``. A typical API
cycle: ``POST /sessions`` -> ``POST /sessions/{sid}/open`` (a path inside a ``--data`` folder) or
``POST /sessions/{sid}/upload`` (the file as the request body) -> poll ``GET /sessions/{sid}`` until
``status`` is ``ready`` (or pass ``wait=true``) -> ``POST /sessions/{sid}/clicks`` -> ``GET
/sessions/{sid}/lesions/{id}/report`` -> ``PUT .../attributes/{name}`` -> ``GET
/sessions/{sid}/export/...``.

Coordinates are those of :class:`ISRGSession`: ``voxel`` = (z, y, x) index of the image as opened,
``world`` = (x, y, z) mm in SimpleITK's LPS space. Errors are JSON ``{"detail": "message"}``: 404
unknown session or lesion, 422 a request the session refuses (click outside the image, unknown
attribute value, bad window), 409 nothing to work on yet (no image, no mask), 413 upload too
large, 400/403 a path that is absolute or leaves the data folders, 401 missing/wrong token.

Threads. Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool; a
session's lock serialises its own requests while other sessions run in parallel on the one shared,
read-only network. Opening an image runs in a thread of its own holding the session's lock, so the
request returns at once with ``status: "preparing"`` and later requests of that session wait for it.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator, Literal, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from nnunet_isrg.inference.session import ISRGSession, SessionError
from nnunet_isrg.server.sessions import SessionEntry, SessionStore, TooManySessionsError, UnknownSessionError
from nnunet_isrg.server.slices import (PLANES, SliceError, WINDOW_NAMES, lesion_colour, plane_geometry,
                                       render_slice_png, resolve_window, window_presets)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: file name endings an upload or a data-folder file may have (a .zip holds a DICOM series or one image)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".nhdr")
UPLOAD_SUFFIXES = IMAGE_SUFFIXES + (".zip",)
#: a zip may unpack to at most this many times the upload limit (zip bombs)
ZIP_EXPANSION_LIMIT = 4
#: at most this many entries in GET /files
MAX_LISTED_FILES = 2000


# ---------------------------------------------------------------------------------------------------
# request bodies
# ---------------------------------------------------------------------------------------------------

class OpenRequest(BaseModel):
    path: str = Field(..., description="path relative to one of the server's --data folders "
                                       "(a NIfTI/MHA/NRRD file or a DICOM series folder)",
                      examples=["imagesTr/case_0000_0000.nii.gz"])
    data_dir: Optional[int] = Field(None, description="index of the data folder (GET /files); "
                                                      "default: the first folder that holds the path")


class ClickRequest(BaseModel):
    point: list[float] = Field(..., min_length=3, max_length=3,
                               description="voxel: (z, y, x) index of the image; world: (x, y, z) mm, LPS")
    positive: bool = Field(True, description="true = this is lesion, false = this is not")
    space: Literal["voxel", "world"] = "voxel"


class AttributeOverride(BaseModel):
    value: Optional[str] = Field(..., description="a class of the attribute (GET /info: schema), or null to "
                                                  "remove the reader's override and report the model's class")


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------

def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _http(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _suffix(name: str) -> str:
    low = name.lower()
    for s in UPLOAD_SUFFIXES:
        if low.endswith(s):
            return s
    return ""


def _safe_stem(name: str | None) -> str:
    stem = Path(name or "image").name
    for s in IMAGE_SUFFIXES:
        if stem.lower().endswith(s):
            stem = stem[: -len(s)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


def _unpack_zip(path: Path, dest: Path, max_bytes: int) -> Path:
    """Extracts an uploaded zip safely (no member outside ``dest``, bounded total size) and returns the
    image inside: the only image file, else the folder with the most files (a DICOM series)."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise SessionError(f"{path.name}: not a readable zip file") from None
    dest = dest.resolve()
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise SessionError(f"{path.name}: unpacks to {total / 2**20:.0f} MiB, more than the allowed "
                               f"{max_bytes / 2**20:.0f} MiB")
        for m in members:
            target = (dest / m.filename).resolve()
            if PurePosixPath(m.filename).is_absolute() or not target.is_relative_to(dest):
                raise SessionError(f"{path.name}: member '{m.filename}' would unpack outside its folder; refused")
        zf.extractall(dest)
    images = [p for p in dest.rglob("*") if p.is_file() and _suffix(p.name) in IMAGE_SUFFIXES]
    if len(images) == 1:
        return images[0]
    folders: dict[Path, int] = {}
    for p in dest.rglob("*"):
        if p.is_file():
            folders[p.parent] = folders.get(p.parent, 0) + 1
    if not folders:
        raise SessionError(f"{path.name}: the zip holds no files")
    return max(folders, key=folders.get)


# ---------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------

def create_app(model_folder, data_dirs: Sequence[str | os.PathLike] = (), token: str | None = None,
               max_upload_mb: float = 1024.0, session_ttl_s: float = 3600.0, folds=(0,), device: str = "cpu",
               checkpoint: str = "checkpoint_final.pth", max_sessions: int = 64,
               torch_threads: int | None = None) -> FastAPI:
    """The FastAPI app: API + page. Loads the model once; every session shares it.

    Args:
        model_folder: a trained ISRG model folder, or an already loaded
            :class:`~nnunet_isrg.inference.model_loading.LoadedModel`.
        data_dirs: folders whose files (and only those) may be opened by path.
        token: if given, every API request needs it (``Authorization: Bearer T``, header
            ``X-ISRG-Token`` or query ``token=T``); the page and the OpenAPI schema stay open.
        max_upload_mb: upload size limit (MiB); larger uploads get 413.
        session_ttl_s: a session idle this long is dropped.
        folds, device, checkpoint: passed to ``load_trained_model``.
        torch_threads: ``torch.set_num_threads`` for the process, if given.
    """
    import torch

    from nnunet_isrg.inference.model_loading import LoadedModel, load_trained_model

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    model = model_folder if isinstance(model_folder, LoadedModel) else load_trained_model(
        model_folder, folds, checkpoint, device)
    data_roots: list[Path] = []
    for d in data_dirs:
        p = Path(d).expanduser().resolve()
        if not p.is_dir():
            raise FileNotFoundError(f"data folder {d} does not exist or is not a folder")
        data_roots.append(p)
    max_upload = int(max_upload_mb * 2**20)
    store = SessionStore(lambda: ISRGSession(model), ttl_s=session_ttl_s, max_sessions=max_sessions)
    schema = {k: list(v) for k, v in model.schema.items()}

    app = FastAPI(
        title="nnunet-isrg viewer API",
        version="1",
        description="\n\n".join((__doc__ or "").split("\n\n")[2:]),
    )
    app.state.store = store
    app.state.model = model
    app.state.data_roots = data_roots
    app.state.max_upload = max_upload
    app.router.add_event_handler("shutdown", store.close)

    # ---------------------------------------------------------------- auth
    bearer = HTTPBearer(auto_error=False, description="the token given to `isrg serve --token` "
                        "(also accepted as header X-ISRG-Token or query parameter token)")

    def require_token(request: Request, creds: Optional[HTTPAuthorizationCredentials] = Security(bearer)) -> None:
        if token is None:
            return
        given = (creds.credentials if creds is not None else None) or request.headers.get("x-isrg-token") \
            or request.query_params.get("token")
        if given is None:
            raise HTTPException(401, "this server needs a token: send 'Authorization: Bearer <token>' "
                                     "(or ?token=<token>)", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})


    api = APIRouter(dependencies=[Depends(require_token)])

    # ---------------------------------------------------------------- errors
    @app.exception_handler(UnknownSessionError)
    def _unknown(_: Request, e: UnknownSessionError):
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(SessionError)
    def _session_error(_: Request, e: SessionError):
        # numpy 2 scalar reprs ("np.float64(3.0)") read as noise to a person: keep the numbers
        return JSONResponse({"detail": re.sub(r"np\.\w+\(([^()]*)\)", r"\1", str(e))}, status_code=422)

    @app.exception_handler(SliceError)
    def _slice_error(_: Request, e: SliceError):
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.exception_handler(Exception)
    def _internal(_: Request, e: Exception):
        # one session's unexpected failure is answered here; the other sessions are not touched
        return JSONResponse({"detail": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    @app.exception_handler(TooManySessionsError)
    def _too_many(_: Request, e: TooManySessionsError):
        return JSONResponse({"detail": str(e)}, status_code=503)

    # ---------------------------------------------------------------- session helpers
    def ready(entry: SessionEntry) -> ISRGSession:
        if entry.status == "ready":
            return entry.session
        if entry.status == "error":
            raise _http(409, f"the last image could not be opened ({entry.message}); open another one")
        raise _http(409, "no image is open in this session: open one with POST /sessions/{sid}/open (a path in "
                         "a data folder) or POST /sessions/{sid}/upload")

    def lesion_of(session: ISRGSession, lid: int) -> int:
        if lid not in session.lesion_ids and lid != session.current_lesion_id:
            raise _http(404, f"no lesion {lid} in this session; lesions: {session.lesion_ids}")
        return lid

    def lesion_dict(session: ISRGSession, lid: int) -> dict:
        st = session.state(lid)
        voxel_ml = float(np.prod(session.spacing_zyx)) / 1000.0
        model_attrs = {name: {"value": max(p, key=p.get), "probability": p[max(p, key=p.get)]}
                       for name, p in st.attribute_probs.items() if p}
        return _clean({
            "lesion_id": st.lesion_id, "current": st.lesion_id == session.current_lesion_id,
            "colour": "#%02x%02x%02x" % lesion_colour(st.lesion_id, session.current_lesion_id),
            "n_clicks": len(st.clicks), "clicks": [c.to_dict() for c in st.clicks],
            "n_voxels": st.n_voxels, "volume_ml": st.n_voxels * voxel_ml,
            "bbox_zyx": [[s.start, s.stop] for s in st.bbox] if st.bbox is not None else None,
            "iou_pred": st.iou_pred, "model_attributes": model_attrs,
        })

    def lesions_list(session: ISRGSession) -> list[dict]:
        ids = list(session.lesion_ids)
        if session.current_lesion_id not in ids:
            ids.append(session.current_lesion_id)
        return [lesion_dict(session, lid) for lid in ids]

    def image_info(entry: SessionEntry) -> dict:
        s: ISRGSession = entry.session
        arr = sitk.GetArrayViewFromImage(s.image)
        return _clean({
            "name": entry.image_name, "shape_zyx": list(s.image_shape), "spacing_zyx": list(s.spacing_zyx),
            "origin_xyz": list(s.image.GetOrigin()), "direction": list(s.image.GetDirection()),
            "hu_range": [float(arr.min()), float(arr.max())], "planes": plane_geometry(s.image_shape, s.spacing_zyx),
            "windows": window_presets(), "dicom": s.dicom_datasets is not None,
        })

    def session_dict(entry: SessionEntry, detail: bool = True) -> dict:
        out = {"session_id": entry.sid, "status": entry.status, "message": entry.message,
               "revision": entry.revision, "image": None, "current_lesion": None, "lesions": None}
        if detail and entry.status == "ready":
            out.update(image=image_info(entry), current_lesion=entry.session.current_lesion_id,
                       lesions=lesions_list(entry.session))
        return out

    def prepare(entry: SessionEntry, source: Path | str, display_name: str, zip_dest: Path | None) -> None:
        """Runs in its own thread with ``entry.lock`` held (acquired by the request); releases it."""
        try:
            entry.message = f"reading {display_name}"
            src = _unpack_zip(Path(source), zip_dest, max_upload * ZIP_EXPANSION_LIMIT) if zip_dest else source
            entry.message = f"checking {display_name}"
            entry.session.set_image(str(src))
            # messages of the session name the image; the client knows it by this name, not the server path
            entry.session.image_name = entry.image_name = display_name
            entry.status, entry.message = "ready", f"{display_name} is ready: click on a lesion"
        except SessionError as e:
            entry.status, entry.message = "error", str(e).replace(str(source), display_name)
        except Exception as e:  # noqa: BLE001 (reported to the client; the session stays usable)
            entry.status, entry.message = "error", f"{display_name}: {type(e).__name__}: {e}"
        finally:
            entry.changed()
            entry.touch()
            entry.prepare_thread = None
            entry.lock.release()

    def start_prepare(sid: str, source: Path, display_name: str, wait: bool, zip_dest: Path | None = None):
        entry = store.get(sid)
        entry.lock.acquire()
        if store_entry_gone(entry):
            entry.lock.release()
            raise UnknownSessionError(sid)
        entry.status, entry.message, entry.image_name = "preparing", f"opening {display_name}", None
        entry.changed()
        t = threading.Thread(target=prepare, args=(entry, source, display_name, zip_dest), daemon=True,
                             name=f"isrg-prepare-{sid[:8]}")
        entry.prepare_thread = t
        try:
            t.start()
        except Exception:
            entry.lock.release()
            raise
        if wait:
            t.join()
            if entry.status == "error":
                raise _http(422, entry.message)
            with store.use(sid) as e:
                return JSONResponse(session_dict(e))
        return JSONResponse(session_dict(entry, detail=False), status_code=202)

    def store_entry_gone(entry: SessionEntry) -> bool:
        return entry.sid not in store.ids()

    def resolve_data_path(rel: str, data_dir: int | None) -> tuple[Path, str]:
        if not data_roots:
            raise _http(403, "this server has no data folders (isrg serve --data DIR); upload the image instead")
        if not rel or not rel.strip():
            raise _http(400, "empty path; give a path relative to a data folder (see GET /files)")
        if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or rel.startswith(("\\", "~")) \
                or PureWindowsPath(rel).drive:
            raise _http(400, f"absolute path '{rel}' refused: give a path relative to one of the data folders "
                             f"(see GET /files)")
        if ".." in PurePosixPath(rel.replace("\\", "/")).parts:
            raise _http(403, f"path '{rel}' refused: '..' (leaving the data folder) is not allowed")
        if data_dir is not None and not 0 <= data_dir < len(data_roots):
            raise _http(404, f"no data folder {data_dir}; there are {len(data_roots)} (0..{len(data_roots) - 1})")
        roots = [data_roots[data_dir]] if data_dir is not None else data_roots
        for root in roots:
            target = (root / rel).resolve()  # follows symbolic links: a link leaving the folder is caught below
            if not target.is_relative_to(root):
                raise _http(403, f"path '{rel}' resolves outside the data folder '{root.name}' (a symbolic link "
                                 f"leaving it?); only files inside the --data folders can be opened")
            if target.exists():
                return target, rel
        raise _http(404, f"'{rel}' not found in the data folder(s) {[r.name for r in roots]} (see GET /files)")

    # ---------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ---------------------------------------------------------------- server
    @api.get("/info", summary="Server information: attribute schema, window presets, upload limit, data folders")
    def info():
        return _clean({"schema": schema, "windows": window_presets(), "window_names": list(WINDOW_NAMES),
                       "planes": list(PLANES), "max_upload_mb": max_upload / 2**20,
                       "upload_suffixes": list(UPLOAD_SUFFIXES), "session_ttl_s": store.ttl_s,
                       "data_dirs": [{"index": i, "name": r.name} for i, r in enumerate(data_roots)],
                       "folds": [str(f) for f in model.folds], "crop_size": list(model.crop_size),
                       "token_required": token is not None})

    @api.get("/files", summary="Images that can be opened by path (files and DICOM folders in the data folders)")
    def files():
        out = []
        for i, root in enumerate(data_roots):
            for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked folders
                dirnames.sort()
                d = Path(dirpath)
                if any(f.lower().endswith(".dcm") for f in filenames):
                    out.append({"data_dir": i, "path": d.relative_to(root).as_posix(), "kind": "dicom"})
                for f in sorted(filenames):
                    p = d / f
                    if _suffix(f) in IMAGE_SUFFIXES and p.resolve().is_relative_to(root):
                        out.append({"data_dir": i, "path": p.relative_to(root).as_posix(), "kind": "image"})
                if len(out) >= MAX_LISTED_FILES:
                    return {"files": out[:MAX_LISTED_FILES], "truncated": True}
        return {"files": out, "truncated": False}

    # ---------------------------------------------------------------- sessions
    @api.post("/sessions", status_code=201, summary="Create a session (one per reader/tab)")
    def create_session():
        entry = store.create()
        return session_dict(entry)

    @api.get("/sessions/{sid}", summary="Session status (poll while 'preparing'), image info and lesions")
    def get_session(sid: str):
        entry = store.get(sid)
        # never wait here: this is what a page polls while an image is prepared or a click computed
        if not entry.lock.acquire(blocking=False):
            return {**session_dict(entry, detail=False), "busy": True}
        try:
            return {**session_dict(entry), "busy": False}
        finally:
            entry.lock.release()

    @api.delete("/sessions/{sid}", status_code=204, summary="Close a session and delete its files")
    def delete_session(sid: str):
        store.get(sid)
        with store.use(sid):
            pass
        store.delete(sid)
        return Response(status_code=204)

    @api.post("/sessions/{sid}/open", status_code=202,
              summary="Open an image by a path inside a data folder (returns at once with status 'preparing' "
                      "unless wait=true)")
    def open_image(sid: str, req: OpenRequest, wait: bool = Query(False, description="return when ready")):
        store.get(sid)
        path, rel = resolve_data_path(req.path, req.data_dir)
        return start_prepare(sid, path, rel, wait)

    @api.post("/sessions/{sid}/upload", status_code=202,
              summary="Upload an image as the request body (NIfTI/MHA/NRRD, or a .zip of a DICOM series)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload_image(sid: str, request: Request,
                           filename: str = Query(..., description="original file name; its ending picks the "
                                                                  f"reader: one of {list(UPLOAD_SUFFIXES)}"),
                           wait: bool = Query(False, description="return when ready")):
        entry = store.get(sid)
        suffix = _suffix(filename)
        if not suffix:
            raise _http(415, f"'{filename}': unsupported file type; upload one of {list(UPLOAD_SUFFIXES)} "
                             f"(a DICOM series as a .zip)")
        limit_msg = f"upload too large: the limit is {max_upload / 2**20:.0f} MiB (isrg serve --max-upload-mb)"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload:
            raise HTTPException(413, limit_msg, headers={"Connection": "close"})
        fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=entry.workdir)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_upload:
                        raise HTTPException(413, limit_msg, headers={"Connection": "close"})
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        if size == 0:
            os.unlink(tmp)
            raise _http(400, "empty upload: send the file's bytes as the request body")
        zip_dest = Path(tempfile.mkdtemp(prefix="unzip-", dir=entry.workdir)) if suffix == ".zip" else None
        return await run_in_threadpool(start_prepare, sid, Path(tmp), Path(filename).name, wait, zip_dest)

    @api.get("/sessions/{sid}/image", summary="Image info: shape (z, y, x), spacing, planes, window presets")
    def get_image(sid: str):
        with store.use(sid) as entry:
            ready(entry)
            return image_info(entry)

    @api.get("/sessions/{sid}/slice/{plane}/{index}", response_class=Response,
             responses={200: {"content": {"image/png": {}}, "description": "the slice as PNG"}},
             summary="A slice as PNG, windowed, optionally with the lesions overlaid (current lesion in red)")
    def get_slice(sid: str, plane: Literal["axial", "coronal", "sagittal"], index: int,
                  window: str = Query("soft", description=f"one of {list(WINDOW_NAMES)}"),
                  level: Optional[float] = Query(None, description="HU (needed for custom)"),
                  width: Optional[float] = Query(None, description="HU (needed for custom)"),
                  overlay: bool = Query(False, description="overlay the lesion masks")):
        w, l = resolve_window(window, level, width)
        with store.use(sid) as entry:
            session = ready(entry)
            image = session.image  # held here so the array view below stays valid if another image opens
            volume = sitk.GetArrayViewFromImage(image)
            labels = entry.label_map() if overlay else None
            current = session.current_lesion_id
        png = render_slice_png(volume, plane, index, w, l, labels, current)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    # ---------------------------------------------------------------- clicks and lesions
    @api.post("/sessions/{sid}/clicks", summary="Add a positive or negative click to the current lesion")
    def add_click(sid: str, req: ClickRequest):
        with store.use(sid) as entry:
            session = ready(entry)
            st = session.add_click(req.point, positive=req.positive, space=req.space)
            entry.changed()
            return {"revision": entry.revision, "lesion": lesion_dict(session, st.lesion_id)}

    @api.post("/sessions/{sid}/undo", summary="Take back the current lesion's last click (or reset)")
    def undo(sid: str):
        with store.use(sid) as entry:
            session = ready(entry)
            st = session.undo()
            entry.changed()
            return {"revision": entry.revision, "lesion": lesion_dict(session, st.lesion_id)}

    @api.post("/sessions/{sid}/reset", summary="Clear the current lesion's clicks and mask (undo restores)")
    def reset(sid: str):
        with store.use(sid) as entry:
            session = ready(entry)
            st = session.reset()
            entry.changed()
            return {"revision": entry.revision, "lesion": lesion_dict(session, st.lesion_id)}

    @api.post("/sessions/{sid}/lesions", status_code=201, summary="Start a new lesion (the others are kept)")
    def new_lesion(sid: str):
        with store.use(sid) as entry:
            session = ready(entry)
            lid = session.new_lesion()
            entry.changed()
            return {"revision": entry.revision, "lesion": lesion_dict(session, lid)}

    @api.get("/sessions/{sid}/lesions", summary="All lesions of the session (the current one included)")
    def list_lesions(sid: str):
        with store.use(sid) as entry:
            session = ready(entry)
            return {"revision": entry.revision, "current_lesion": session.current_lesion_id,
                    "lesions": lesions_list(session)}

    @api.post("/sessions/{sid}/lesions/{lid}/select", summary="Make an earlier lesion current, to correct it")
    def select_lesion(sid: str, lid: int):
        with store.use(sid) as entry:
            session = ready(entry)
            lesion_of(session, lid)
            session.select_lesion(lid)
            entry.changed()
            return {"revision": entry.revision, "lesion": lesion_dict(session, lid)}

    def report_payload(session: ISRGSession, lid: int) -> dict:
        from nnunet_isrg.report.render_text import render_markdown, render_text

        st = session.state(lid)
        if st.n_voxels == 0:
            raise _http(409, f"lesion {lid} has no mask yet (clicks: {len(st.clicks)}); add a positive click on it")
        rep = session.report(lid)
        return _clean({"lesion_id": lid, "report": rep.to_dict(), "text": render_text(rep),
                       "markdown": render_markdown(rep)})

    @api.get("/sessions/{sid}/lesions/{lid}/report",
             summary="A lesion's structured report (JSON: attributes with probability and source, "
                     "measurements, location, clicks, evidence) with its text and Markdown renderings")
    def get_report(sid: str, lid: int):
        with store.use(sid) as entry:
            session = ready(entry)
            return report_payload(session, lesion_of(session, lid))

    @api.put("/sessions/{sid}/lesions/{lid}/attributes/{name}",
             summary="Reader override of one attribute (value null removes it); returns the new report")
    def override_attribute(sid: str, lid: int, name: str, req: AttributeOverride):
        with store.use(sid) as entry:
            session = ready(entry)
            lesion_of(session, lid)
            session.set_attribute(lid, name, req.value)
            return report_payload(session, lid)

    # ---------------------------------------------------------------- exports
    def _attachment(data: bytes, filename: str, media_type: str) -> Response:
        return Response(data, media_type=media_type,
                        headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                 "Cache-Control": "no-store"})

    def _nifti_bytes(entry: SessionEntry, img: sitk.Image) -> bytes:
        fd, tmp = tempfile.mkstemp(suffix=".nii.gz", dir=entry.workdir)
        os.close(fd)
        try:
            sitk.WriteImage(img, tmp, useCompression=True)
            return Path(tmp).read_bytes()
        finally:
            os.unlink(tmp)

    def _reports(session: ISRGSession) -> list:
        reps = session.reports()
        if not reps:
            raise _http(409, "no lesion has a mask yet: click on a lesion first")
        return reps

    @api.get("/sessions/{sid}/export/labels.nii.gz", summary="All lesions as one label map (NIfTI, label = lesion id)")
    def export_labels(sid: str):
        with store.use(sid) as entry:
            session = ready(entry)
            img = sitk.GetImageFromArray(entry.label_map())
            img.CopyInformation(session.image)
            return _attachment(_nifti_bytes(entry, img), f"{_safe_stem(entry.image_name)}_lesions.nii.gz",
                               "application/gzip")

    @api.get("/sessions/{sid}/export/lesions/{lid}/mask.nii.gz", summary="One lesion's mask (NIfTI, 0/1)")
    def export_mask(sid: str, lid: int):
        with store.use(sid) as entry:
            session = ready(entry)
            lesion_of(session, lid)
            img = sitk.GetImageFromArray(session.state(lid).mask.astype(np.uint8))
            img.CopyInformation(session.image)
            return _attachment(_nifti_bytes(entry, img), f"{_safe_stem(entry.image_name)}_lesion{lid}.nii.gz",
                               "application/gzip")

    @api.get("/sessions/{sid}/export/report.json", summary="Reports of all lesions (JSON, versioned schema)")
    def export_report_json(sid: str):
        with store.use(sid) as entry:
            session = ready(entry)
            doc = {"image": entry.image_name, "lesions": [r.to_dict() for r in _reports(session)]}
            return _attachment(json.dumps(_clean(doc), indent=2).encode(), f"{_safe_stem(entry.image_name)}_report.json",
                               "application/json")

    @api.get("/sessions/{sid}/export/report.md", summary="Reports of all lesions (Markdown)")
    def export_report_md(sid: str):
        from nnunet_isrg.report.render_text import render_markdown_document

        with store.use(sid) as entry:
            session = ready(entry)
            md = render_markdown_document(_reports(session), title=f"Structured lesion report: {entry.image_name}")
            return _attachment(md.encode(), f"{_safe_stem(entry.image_name)}_report.md", "text/markdown")

    @api.get("/sessions/{sid}/export/lesions/{lid}/key_image.png",
             summary="Key image of a lesion (axial slice of its RECIST long axis, contour and axes)")
    def export_key_image(sid: str, lid: int):
        from nnunet_isrg.report.key_image import write_key_image

        with store.use(sid) as entry:
            session = ready(entry)
            lesion_of(session, lid)
            st = session.state(lid)
            if st.n_voxels == 0:
                raise _http(409, f"lesion {lid} has no mask yet; add a positive click on it")
            fd, tmp = tempfile.mkstemp(suffix=".png", dir=entry.workdir)
            os.close(fd)
            try:
                write_key_image(session.image, st.mask, tmp, measurements=session.report(lid).measurements,
                                title=f"{entry.image_name}: lesion {lid}")
                data = Path(tmp).read_bytes()
            finally:
                os.unlink(tmp)
            return _attachment(data, f"{_safe_stem(entry.image_name)}_lesion{lid}_key.png", "image/png")

    @api.get("/sessions/{sid}/export/dicom.zip",
             summary="DICOM SEG + Comprehensive 3D SR (TID 1500) of all lesions, zipped (with a CT series "
                     "when the image was not DICOM)")
    def export_dicom_zip(sid: str):
        from nnunet_isrg.report.dicom_export import export_dicom

        with store.use(sid) as entry:
            session = ready(entry)
            reps = _reports(session)
            out_dir = Path(tempfile.mkdtemp(prefix="dicom-", dir=entry.workdir))
            try:
                export_dicom(session.image, entry.label_map(), reps, out_dir, source_datasets=session.dicom_datasets)
                zpath = out_dir.with_suffix(".zip")
                with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
                    for p in sorted(out_dir.rglob("*")):
                        if p.is_file():
                            zf.write(p, p.relative_to(out_dir).as_posix())
                data = zpath.read_bytes()
                zpath.unlink()
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)
            return _attachment(data, f"{_safe_stem(entry.image_name)}_dicom.zip", "application/zip")

    app.include_router(api)
    return app


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                        startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Runs ``app`` with uvicorn in a daemon thread (tests, notebooks) and yields its base URL
    (``http://host:port``); ``port=0`` picks a free port. The server stops when the block ends."""
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name="isrg-uvicorn")
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
