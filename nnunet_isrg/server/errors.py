"""How failures become HTTP answers: every error is JSON ``{"detail": "message"}`` (a request that does
not match the schema: ``{"detail": [{"loc", "msg", "type"}]}``), with numbers written as numbers.

404 unknown session, 422 a request the session (or the slice renderer) refuses or one that does not
match the schema, 413 an image larger than a session's memory budget, 503 no room for another
session or for another image in the server's memory budget, 500 anything unexpected;
:func:`http_error` is for the statuses an endpoint decides itself (400, 403, 404, 409, 415).
"""
from __future__ import annotations

import re

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from nnunet_isrg.inference.session import SessionError
from nnunet_isrg.server.memory import MemoryBudgetError
from nnunet_isrg.server.sessions import TooManySessionsError, UnknownSessionError
from nnunet_isrg.server.slices import SliceError

#: numpy 2 scalar reprs ("np.float64(3.0)", "np.int64(7)") in a message
_NUMPY_REPR = re.compile(r"np\.\w+\(([^()]*)\)")


def plain_numbers(message: str) -> str:
    """``message`` with numpy scalar reprs reduced to their numbers: they read as noise to a person."""
    return _NUMPY_REPR.sub(r"\1", message)


def http_error(status: int, message: str) -> HTTPException:
    """The exception that answers ``status`` with ``{"detail": message}``."""
    return HTTPException(status_code=status, detail=message)


def _detail(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": plain_numbers(message)}, status_code=status, headers=headers)


def _http_exception(_: Request, e: StarletteHTTPException) -> Response:
    # FastAPI's own and the router's (unknown path 404, wrong method 405)
    if e.status_code in (204, 304):
        return Response(status_code=e.status_code, headers=e.headers)
    return _detail(str(e.detail), e.status_code, e.headers)


def _unknown_session(_: Request, e: UnknownSessionError) -> JSONResponse:
    return _detail(str(e), 404)


def _refused_by_session(_: Request, e: SessionError) -> JSONResponse:
    return _detail(str(e), 422)


def _refused_by_slices(_: Request, e: SliceError) -> JSONResponse:
    return _detail(str(e), 422)


def _over_budget(_: Request, e: MemoryBudgetError) -> JSONResponse:
    return _detail(str(e), e.status)


def _not_matching_schema(_: Request, e: RequestValidationError) -> JSONResponse:
    # where and what only: the offending input is left out (it may be large, or hold NaN, which JSON lacks)
    errors = [{"loc": list(err.get("loc", ())), "msg": plain_numbers(str(err.get("msg", ""))),
               "type": err.get("type", "")} for err in e.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def _unexpected(_: Request, e: Exception) -> JSONResponse:
    # one session's unexpected failure is answered here; the other sessions are not touched
    return _detail(f"internal error: {type(e).__name__}: {e}", 500)


def _too_many_sessions(_: Request, e: TooManySessionsError) -> JSONResponse:
    return _detail(str(e), 503)


def add_error_handlers(app: FastAPI) -> None:
    """Registers the answers above on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _not_matching_schema)
    app.add_exception_handler(UnknownSessionError, _unknown_session)
    app.add_exception_handler(SessionError, _refused_by_session)
    app.add_exception_handler(SliceError, _refused_by_slices)
    app.add_exception_handler(MemoryBudgetError, _over_budget)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(TooManySessionsError, _too_many_sessions)
