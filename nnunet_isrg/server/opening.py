"""Opening an image in a session. Reading and checking a CT takes a while, so it runs in a thread of
its own that holds the session's lock: the request can return at once with ``status: "preparing"``,
and the session's later requests wait for the image."""
from __future__ import annotations

import threading
from pathlib import Path

from fastapi.responses import JSONResponse

from nnunet_isrg.inference.session import SessionError
from nnunet_isrg.server.errors import http_error
from nnunet_isrg.server.sessions import SessionEntry, SessionStore, UnknownSessionError
from nnunet_isrg.server.state import ServerState
from nnunet_isrg.server.uploads import ZIP_EXPANSION_LIMIT, unpack_zip
from nnunet_isrg.server.views import session_json


def _prepare(entry: SessionEntry, source: Path, display_name: str, zip_dest: Path | None, max_unzipped: int) -> None:
    """Runs in its own thread with ``entry.lock`` held (acquired by the request); releases it."""
    try:
        entry.message = f"reading {display_name}"
        src = unpack_zip(source, zip_dest, max_unzipped) if zip_dest else source
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


def _lock_live_entry(store: SessionStore, sid: str) -> SessionEntry:
    """Session ``sid``'s entry with its lock acquired (waits for the session's running request)."""
    entry = store.get(sid)
    entry.lock.acquire()
    # it may have been deleted while we waited for the lock
    if entry.sid not in store.ids():
        entry.lock.release()
        raise UnknownSessionError(sid)
    return entry


def start_opening(state: ServerState, sid: str, source: Path, display_name: str, wait: bool,
                  zip_dest: Path | None = None) -> JSONResponse:
    """Opens ``source`` (or the image in the zip ``source``, unpacked into ``zip_dest``) in session ``sid``.

    Answers 202 with the session's status at once, or with ``wait`` 200 and the session once the image
    is ready (422 with the reason when it could not be opened). The client sees ``display_name``, never
    the server's path.
    """
    store = state.store
    entry = _lock_live_entry(store, sid)
    entry.status, entry.message, entry.image_name = "preparing", f"opening {display_name}", None
    entry.changed()
    max_unzipped = state.max_upload * ZIP_EXPANSION_LIMIT
    t = threading.Thread(target=_prepare, args=(entry, source, display_name, zip_dest, max_unzipped), daemon=True,
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
            raise http_error(422, entry.message)
        with store.use(sid) as e:
            return JSONResponse(session_json(e))
    return JSONResponse(session_json(entry, detail=False), status_code=202)
