"""What every request passes before it reaches an endpoint, so that other web pages cannot use the
server through the reader's browser, even one that runs without a token (the default on loopback):

- its ``Host`` is one of the server's own names (else 421): a page on another site that renames
  itself to 127.0.0.1 (DNS rebinding) still sends its own name, so it can neither read the API's
  answers nor drive it;
- a state-changing request (POST, PUT, PATCH, DELETE) carries a header a browser sends cross-site
  only after asking the server, which never allows another origin (else 403): ``X-ISRG-Client``
  (the viewer sends ``X-ISRG-Client: viewer``), ``X-ISRG-Token`` or ``Authorization: Bearer``. A
  form post or a "simple" fetch (``text/plain``) from another site carries none of them;
- its URL holds no null byte (else 400): no file name or identifier can contain one.
"""
from __future__ import annotations

import socket
from typing import Iterable
from urllib.parse import unquote_plus

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

#: names every server answers to, whatever address it is bound to
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
#: methods that change nothing; all others must carry one of :data:`CLIENT_HEADERS`
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: headers a cross-site form or simple request cannot carry (any value), ``authorization`` as Bearer only
CLIENT_HEADERS = ("x-isrg-client", "x-isrg-token")
#: bind addresses that listen on every interface
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def host_name(value: str) -> str:
    """A Host header or a host as written -> the name alone: lower case, no port, IPv6 in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    if value.count(":") > 1:  # a bare IPv6 address
        return f"[{value}]"
    return value.split(":", 1)[0].rstrip(".")


def allowed_host_names(bound_host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The names the server answers to: loopback names, the bound host and ``extra``; for a server bound
    to every interface also this machine's name. None (no check) when ``extra`` holds ``*``."""
    extra = [e for e in extra if e.strip()]
    if any(e.strip() == "*" for e in extra):
        return None
    names = {host_name(n) for n in (*LOOPBACK_NAMES, *extra)}
    if bound_host.strip() in _WILDCARD_HOSTS:
        names |= {host_name(socket.gethostname()), host_name(socket.getfqdn())}
    else:
        names.add(host_name(bound_host))
    return frozenset(names)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _has_client_header(scope: Scope) -> bool:
    names = {key for key, _ in scope["headers"]}
    if any(h.encode() in names for h in CLIENT_HEADERS):
        return True
    auth = _header(scope, b"authorization")
    return auth is not None and auth.lower().startswith("bearer ")


class RequestGuard:
    """ASGI middleware refusing what the module docstring lists, with ``{"detail": message}``.

    Args:
        allowed_hosts: the names :func:`allowed_host_names` gives; None accepts any Host.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str] | None):
        self.app = app
        self.allowed_hosts = allowed_hosts

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) for a request that is refused, None for one that may go on."""
        host = _header(scope, b"host")
        if self.allowed_hosts is not None:
            if not host:
                return 400, "the request has no Host header"
            if host_name(host) not in self.allowed_hosts:
                return 421, (f"Host '{host_name(host)}' is not a name of this server (it answers to "
                             f"{sorted(self.allowed_hosts)}); if clients reach it under that name, start it with "
                             f"isrg serve --allowed-host {host_name(host)}")
        if "\x00" in scope["path"] or "\x00" in unquote_plus(scope.get("query_string", b"").decode("latin-1")):
            return 400, "a null byte in the URL is refused: no path, name or identifier can contain one"
        if scope["method"] not in SAFE_METHODS and not _has_client_header(scope):
            return 403, (f"{scope['method']} refused: a request that changes something must carry the header "
                         f"'X-ISRG-Client' (any value; the viewer sends 'viewer'), 'X-ISRG-Token' or "
                         f"'Authorization: Bearer', which a page on another site cannot send")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused is not None:
                await JSONResponse({"detail": refused[1]}, status_code=refused[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)
