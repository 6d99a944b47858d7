"""HTTP API and browser viewer on top of :class:`ISRGSession` (FastAPI).

    app = create_app("nnUNet_results/Dataset501_X/ISRGTrainer__nnUNetPlans__3d_fullres",
                     data_dirs=["/data/ct"], token=None)
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", 8765)).run()   # or: isrg serve --model ... --data ...

(``uvicorn_config`` from :mod:`nnunet_isrg.server.running` adds the header deadline and the token-free
access log; ``serve_in_background`` runs it in a thread.)

The page is served at ``/``, the OpenAPI schema at ``/openapi.json`` and ``/docs``. A typical API
cycle: ``POST /sessions`` -> ``POST /sessions/{sid}/open`` (a path inside a ``--data`` folder) or
``POST /sessions/{sid}/upload`` (the file as the request body) -> poll ``GET /sessions/{sid}`` until
``status`` is ``ready`` (or pass ``wait=true``) -> ``POST /sessions/{sid}/clicks`` -> ``GET
/sessions/{sid}/lesions/{id}/report`` -> ``PUT .../attributes/{name}`` -> ``GET
/sessions/{sid}/export/...``.

Coordinates are those of :class:`ISRGSession`: ``voxel`` = (z, y, x) index of the image as opened,
``world`` = (x, y, z) mm in SimpleITK's LPS space; JSON bodies are typed strictly (``"yes"`` is not a
boolean, a boolean is not a coordinate). Errors are JSON ``{"detail": "message"}``: 404 unknown
session or lesion, 422 a request the session refuses (click outside the image, unknown attribute
value, bad window) or one that does not match the schema, 409 nothing to work on yet (no image, no
mask), 413 upload too large or image larger than a session's memory budget, 503 no room for another
session or image, 400/403 a path that is absolute, holds a null byte or leaves the data folders,
401 missing/wrong token, 421 a Host that is not the server's, 403 a POST/PUT/PATCH/DELETE without
the header ``X-ISRG-Client`` (any value), ``X-ISRG-Token`` or ``Authorization: Bearer`` (a page on
another site cannot send one).

Threads. Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool (the async
ones hand their work to it); a session's lock serialises its own requests while other sessions run in
parallel on the one shared, read-only network. A click whose client disconnected while it waited for
the lock is dropped, not applied. Opening an image runs in a thread of its own holding the session's lock, so the
request returns at once with ``status: "preparing"`` and later requests of that session wait for it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from nnunet_isrg.inference.model_loading import Folds, LoadedModel, load_trained_model
from nnunet_isrg.inference.session import ISRGSession
from nnunet_isrg.server.auth import declare_client_header, require_token
from nnunet_isrg.server.errors import add_error_handlers
from nnunet_isrg.server.memory import (DEFAULT_SESSION_BYTES, DEFAULT_SESSION_CACHE_BYTES, DEFAULT_TOTAL_BYTES,
                                      MemoryBudget)
from nnunet_isrg.server.request_guard import RequestGuard, allowed_host_names
from nnunet_isrg.server.routes import exports, images, info, lesions, page, sessions
from nnunet_isrg.server.running import serve_in_background
from nnunet_isrg.server.sessions import SessionStore
from nnunet_isrg.server.state import ServerState

__all__ = ["API_ROUTERS", "create_app", "serve_in_background"]

#: the API's routers in the order of the OpenAPI schema; all need the token (when there is one)
API_ROUTERS = (info.router, sessions.router, images.router, lesions.router, exports.router)


def _data_roots(data_dirs: Sequence[str | os.PathLike]) -> list[Path]:
    roots = []
    for d in data_dirs:
        p = Path(d).expanduser().resolve()
        if not p.is_dir():
            raise FileNotFoundError(f"data folder {d} does not exist or is not a folder")
        roots.append(p)
    return roots


def create_app(model_folder: str | os.PathLike | LoadedModel, data_dirs: Sequence[str | os.PathLike] = (),
               token: str | None = None, max_upload_mb: float = 1024.0, session_ttl_s: float = 3600.0,
               folds: Folds = (0,), device: str = "cpu", checkpoint: str = "checkpoint_final.pth",
               max_sessions: int = 64, torch_threads: int | None = None,
               session_memory_bytes: int = DEFAULT_SESSION_BYTES, total_memory_bytes: int = DEFAULT_TOTAL_BYTES,
               host: str = "127.0.0.1", allowed_hosts: Sequence[str] = (),
               embedding_cache_bytes: int = DEFAULT_SESSION_CACHE_BYTES) -> FastAPI:
    """The FastAPI app: API + page. Loads the model once; every session shares it.

    Args:
        model_folder: a trained ISRG model folder, or an already loaded
            :class:`~nnunet_isrg.inference.model_loading.LoadedModel`.
        data_dirs: folders whose files (and only those) may be opened by path.
        token: if given, every API request needs it (``Authorization: Bearer T`` or header
            ``X-ISRG-Token``; never in the URL); the page and the OpenAPI schema stay open.
        max_upload_mb: upload size limit (MiB); larger uploads get 413.
        session_ttl_s: a session idle this long is dropped.
        folds, device, checkpoint: passed to ``load_trained_model``.
        max_sessions: most sessions open at once; one more gets 503.
        torch_threads: ``torch.set_num_threads`` for the process, if given.
        session_memory_bytes, total_memory_bytes: the memory budget (bytes) of one session and of all
            sessions: the image, estimated from its header before it is read (see
            :mod:`~nnunet_isrg.server.memory`), plus the session's embedding cache; over it: 413 (one
            session) or 503 (all).
        embedding_cache_bytes: the most each session's cached image embeddings may hold; charged to
            every session with an image.
        host: the address the server is bound to; requests must name it (or localhost, 127.0.0.1,
            [::1], or one of ``allowed_hosts``; ``*`` there accepts any) in their Host header.

    The shared state is ``app.state.server`` (a :class:`~nnunet_isrg.server.state.ServerState`);
    ``app.state.store``, ``.model``, ``.data_roots`` and ``.max_upload`` name its parts.
    """
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    # first: it checks its figures
    budget = MemoryBudget(session_memory_bytes, total_memory_bytes, session_cache_bytes=embedding_cache_bytes)
    model = model_folder if isinstance(model_folder, LoadedModel) else load_trained_model(
        model_folder, folds, checkpoint, device)
    data_roots = _data_roots(data_dirs)  # before the store: it starts a thread and a folder
    store = SessionStore(lambda: ISRGSession(model, embedding_cache_bytes=embedding_cache_bytes), ttl_s=session_ttl_s, max_sessions=max_sessions,
                         on_drop=budget.release)
    state = ServerState(store=store, model=model, data_roots=data_roots, max_upload=int(max_upload_mb * 2**20),
                        token=token, budget=budget)

    app = FastAPI(
        title="nnunet-isrg viewer API",
        version="1",
        description="\n\n".join((__doc__ or "").split("\n\n")[2:]),
    )
    app.state.server = state
    app.state.store, app.state.model = state.store, state.model
    app.state.data_roots, app.state.max_upload = state.data_roots, state.max_upload
    app.router.add_event_handler("startup", store.open)
    app.router.add_event_handler("shutdown", store.close)
    add_error_handlers(app)
    app.add_middleware(RequestGuard, allowed_hosts=allowed_host_names(host, allowed_hosts))
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    for router in API_ROUTERS:
        app.include_router(router, dependencies=[Depends(declare_client_header), Depends(require_token)])
    return app
