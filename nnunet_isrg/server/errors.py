"""How failures become HTTP answers: every error is JSON ``{"detail": "message"}``.

404 unknown session, 422 a request the session (or the slice renderer) refuses, 503 no room for
another session, 500 anything unexpected; :func:`http_error` is for the statuses an endpoint
decides itself (400, 403, 404, 409, 415).
"""
from __future__ import annotations

import re

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from nnunet_isrg.inference.session import SessionError
from nnunet_isrg.server.sessions import TooManySessionsError, UnknownSessionError
from nnunet_isrg.server.slices import SliceError

#: numpy 2 scalar reprs ("np.float64(3.0)") in a message
_NUMPY_REPR = re.compile(r"np\.\w+\(([^()]*)\)")


def http_error(status: int, message: str) -> HTTPException:
    """The exception that answers ``status`` with ``{"detail": message}``."""
    return HTTPException(status_code=status, detail=message)


def _detail(message: str, status: int) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _unknown_session(_: Request, e: UnknownSessionError) -> JSONResponse:
    return _detail(str(e), 404)


def _refused_by_session(_: Request, e: SessionError) -> JSONResponse:
    # numpy scalar reprs read as noise to a person: keep the numbers
    return _detail(_NUMPY_REPR.sub(r"\1", str(e)), 422)


def _refused_by_slices(_: Request, e: SliceError) -> JSONResponse:
    return _detail(str(e), 422)


def _unexpected(_: Request, e: Exception) -> JSONResponse:
    # one session's unexpected failure is answered here; the other sessions are not touched
    return _detail(f"internal error: {type(e).__name__}: {e}", 500)


def _too_many_sessions(_: Request, e: TooManySessionsError) -> JSONResponse:
    return _detail(str(e), 503)


def add_error_handlers(app: FastAPI) -> None:
    """Registers the answers above on ``app``."""
    app.add_exception_handler(UnknownSessionError, _unknown_session)
    app.add_exception_handler(SessionError, _refused_by_session)
    app.add_exception_handler(SliceError, _refused_by_slices)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(TooManySessionsError, _too_many_sessions)
