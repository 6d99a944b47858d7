"""The token check every API request passes (the page and the OpenAPI schema stay open).

The token travels in a header only, never in a URL: URLs end up in access logs, browser histories
and Referer headers. The page takes it from its address's fragment (``/#token=T``), which the
browser never sends to a server.
"""
from __future__ import annotations

import secrets
from typing import Optional

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from nnunet_isrg.server.state import ServerStateDep

bearer_scheme = HTTPBearer(auto_error=False, description="the token given to `isrg serve --token` "
                           "(also accepted as header X-ISRG-Token; never in the URL)")


#: stated in the OpenAPI schema so that clients (and /docs' "Authorize") know to send it; the request
#: guard (request_guard.py) is what refuses a POST/PUT/PATCH/DELETE without it (or the token)
client_header_scheme = APIKeyHeader(name="X-ISRG-Client", auto_error=False, scheme_name="ClientHeader",
                                    description="any value (the viewer sends 'viewer'): needed by POST, PUT, "
                                                "PATCH and DELETE unless the token is sent; a page on another "
                                                "site cannot send it")


def declare_client_header(_: Optional[str] = Security(client_header_scheme)) -> None:
    """Only puts ``X-ISRG-Client`` into the schema; the request guard checks it."""


def require_token(request: Request, state: ServerStateDep,
                  creds: Optional[HTTPAuthorizationCredentials] = Security(bearer_scheme)) -> None:
    """Answers 401 unless the request carries the server's token (when it has one): as ``Authorization:
    Bearer T`` or header ``X-ISRG-Token``. A ``?token=`` in the URL is not read."""
    if state.token is None:
        return
    given = (creds.credentials if creds is not None else None) or request.headers.get("x-isrg-token")
    if given is None:
        raise HTTPException(401, "this server needs a token: send 'Authorization: Bearer <token>' or "
                                 "'X-ISRG-Token: <token>' (the viewer: open it as /#token=<token>)",
                            headers={"WWW-Authenticate": "Bearer"})
    # constant time: the comparison must not tell how much of a guess was right
    if not secrets.compare_digest(given.encode(), state.token.encode()):
        raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})
