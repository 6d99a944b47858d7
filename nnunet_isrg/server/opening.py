"""Opening an image in a session.

Before a voxel is read, the request unpacks a zip upload, reads the image's header and charges the
session's memory budget with what the image will hold (413/503 when it does not fit, the session
left as it was). Reading and checking the image takes a while, so it then runs in a thread of its
own that holds the session's lock: the request can return at once with ``status: "preparing"``, and
the session's later requests wait for the image. Uploaded files are deleted once the image is read
(or refused); the client only ever sees the image's own name, never a server path.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from nnunet_isrg.inference.session import SessionError
from nnunet_isrg.server.errors import http_error, plain_numbers
from nnunet_isrg.server.memory import MemoryBudget, image_footprint
from nnunet_isrg.server.sessions import SessionEntry, SessionStore, UnknownSessionError
from nnunet_isrg.server.state import ServerState
from nnunet_isrg.server.uploads import ZIP_EXPANSION_LIMIT, unpack_zip
from nnunet_isrg.server.views import session_json


def _client_message(text: str, display_name: str, paths: tuple[Path | None, ...]) -> str:
    """``text`` with each server path (longest first, so a folder does not cut a file inside it) replaced
    by the name the client knows."""
    for p in sorted((p for p in paths if p is not None), key=lambda p: -len(str(p))):
        text = text.replace(str(p), display_name)
    return plain_numbers(text)


def _remove(paths: tuple[Path | None, ...]) -> None:
    for p in paths:
        if p is None:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _failed(entry: SessionEntry, message: str) -> HTTPException:
    """Records a failed open on the entry (lock held) and returns the 422 answering it."""
    entry.status, entry.message, entry.image_name = "error", message, None
    entry.changed()
    return http_error(422, message)


def _charged_image(state: ServerState, entry: SessionEntry, source: Path, display_name: str,
                   zip_dest: Path | None) -> Path:
    """The image to read (unpacked into ``zip_dest`` when ``source`` is a zip upload, which then goes),
    with the session charged for it; 422 for an unreadable zip or header, 413/503 over the budget."""
    paths = (source, zip_dest)
    try:
        image = unpack_zip(source, zip_dest, state.max_upload * ZIP_EXPANSION_LIMIT, display_name) if zip_dest \
            else source
        footprint = image_footprint(image)
    except SessionError as e:
        raise _failed(entry, _client_message(str(e), display_name, paths)) from None
    except RuntimeError as e:  # SimpleITK found no reader for the header
        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise _failed(entry, f"{display_name}: not a readable image ({_client_message(why, display_name, paths)});"
                             f" give a NIfTI/MHA/NRRD file or a DICOM series") from None
    finally:
        if zip_dest is not None:
            source.unlink(missing_ok=True)  # unpacked (or refused): the zip itself is not needed any more
    if footprint is not None:  # None: a folder without a DICOM series, which the session's reader refuses
        state.budget.reserve(entry.sid, footprint, display_name)
    return image


def _prepare(entry: SessionEntry, image: Path, display_name: str, budget: MemoryBudget,
             uploaded: tuple[Path | None, ...]) -> None:
    """Runs in its own thread with ``entry.lock`` held (acquired by the request); releases it."""
    try:
        entry.message = f"reading {display_name}"
        entry.session.set_image(str(image))
        # messages of the session name the image; the client knows it by this name, not the server path
        entry.session.image_name = entry.image_name = display_name
        entry.status, entry.message = "ready", f"{display_name} is ready: click on a lesion"
    except SessionError as e:
        entry.status, entry.message = "error", _client_message(str(e), display_name, (image, *uploaded))
    except Exception as e:  # noqa: BLE001 (reported to the client; the session stays usable)
        why = _client_message(f"{type(e).__name__}: {e}", display_name, (image, *uploaded))
        entry.status, entry.message = "error", f"{display_name}: {why}"
    finally:
        _remove(uploaded)  # the image is in memory (or refused): the uploaded files go
        if entry.status != "ready":
            budget.release(entry.sid)  # the session holds no image
        entry.changed()
        entry.touch()
        entry.prepare_thread = None
        entry.lock.release()


def _lock_live_entry(store: SessionStore, sid: str) -> SessionEntry:
    """Session ``sid``'s entry with its lock acquired (waits for the session's running request)."""
    entry = store.get(sid)
    entry.lock.acquire()
    # it may have been deleted while we waited for the lock
    if entry.sid not in store.ids():
        entry.lock.release()
        raise UnknownSessionError(sid)
    return entry


def _start_preparing(state: ServerState, entry: SessionEntry, source: Path, display_name: str,
                     zip_dest: Path | None, uploaded: tuple[Path | None, ...]) -> threading.Thread:
    """Checks and charges the image, then hands the entry's lock to the thread that reads it (returned)."""
    image = _charged_image(state, entry, source, display_name, zip_dest)
    # the former image (and all derived from it) goes before the new one is read: one image per session
    entry.replace_session(state.store.new_session())
    entry.status, entry.message, entry.image_name = "preparing", f"opening {display_name}", None
    t = threading.Thread(target=_prepare, args=(entry, image, display_name, state.budget, uploaded), daemon=True,
                         name=f"isrg-prepare-{entry.sid[:8]}")
    entry.prepare_thread = t
    t.start()
    return t


def start_opening(state: ServerState, sid: str, source: Path, display_name: str, wait: bool,
                  zip_dest: Path | None = None, uploaded: bool = False) -> JSONResponse:
    """Opens ``source`` (or the image in the zip ``source``, unpacked into ``zip_dest``) in session ``sid``;
    ``uploaded``: ``source`` (and ``zip_dest``) are the client's upload, deleted once read or refused.

    Answers 202 with the session's status at once, or with ``wait`` 200 and the session once the image
    is ready (422 with the reason when it could not be opened); 413/503 when the image does not fit the
    memory budget (the session keeps what it had).
    """
    store = state.store
    uploaded_paths = (source, zip_dest) if uploaded else ()
    entry = _lock_live_entry(store, sid)
    try:
        preparing = _start_preparing(state, entry, source, display_name, zip_dest, uploaded_paths)
    except BaseException:
        entry.lock.release()  # the preparing thread did not start: the lock is still the request's
        _remove(uploaded_paths)
        raise
    if wait:
        preparing.join()
        if entry.status == "error":
            raise http_error(422, entry.message)
        with store.use(sid) as e:
            return JSONResponse(session_json(e))
    return JSONResponse(session_json(entry, detail=False), status_code=202)
