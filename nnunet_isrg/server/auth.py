"""The token check every API request passes (the page and the OpenAPI schema stay open)."""
from __future__ import annotations

import secrets
from typing import Optional

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nnunet_isrg.server.state import ServerStateDep

bearer_scheme = HTTPBearer(auto_error=False, description="the token given to `isrg serve --token` "
                           "(also accepted as header X-ISRG-Token or query parameter token)")


def require_token(request: Request, state: ServerStateDep,
                  creds: Optional[HTTPAuthorizationCredentials] = Security(bearer_scheme)) -> None:
    """Answers 401 unless the request carries the server's token (when it has one): as ``Authorization:
    Bearer T``, header ``X-ISRG-Token`` or query ``token=T`` (the page's way, from its own URL)."""
    if state.token is None:
        return
    given = (creds.credentials if creds is not None else None) or request.headers.get("x-isrg-token") \
        or request.query_params.get("token")
    if given is None:
        raise HTTPException(401, "this server needs a token: send 'Authorization: Bearer <token>' "
                                 "(or ?token=<token>)", headers={"WWW-Authenticate": "Bearer"})
    # constant time: the comparison must not tell how much of a guess was right
    if not secrets.compare_digest(given.encode(), state.token.encode()):
        raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})
