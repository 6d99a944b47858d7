"""Sessions, one per reader or browser tab: create, poll, close."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from nnunet_isrg.server.state import ServerStateDep
from nnunet_isrg.server.views import session_json

router = APIRouter()


@router.post("/sessions", status_code=201, summary="Create a session (one per reader/tab)")
def create_session(state: ServerStateDep):
    entry = state.store.create()
    return session_json(entry)


@router.get("/sessions/{sid}", summary="Session status (poll while 'preparing'), image info and lesions")
def get_session(sid: str, state: ServerStateDep):
    entry = state.store.get(sid)
    # never wait here: this is what a page polls while an image is prepared or a click computed
    if not entry.lock.acquire(blocking=False):
        return {**session_json(entry, detail=False), "busy": True}
    try:
        return {**session_json(entry), "busy": False}
    finally:
        entry.lock.release()


@router.delete("/sessions/{sid}", status_code=204, summary="Close a session and delete its files")
def delete_session(sid: str, state: ServerStateDep) -> Response:
    store = state.store
    store.get(sid)
    # wait for the session's running request (or image preparation) before its files go
    with store.use(sid):
        pass
    store.delete(sid)
    return Response(status_code=204)
