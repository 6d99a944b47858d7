"""Running the app under uvicorn, the same way for ``isrg serve`` and for tests: connection limits (a
deadline for request headers, keep-alive, header size) and an access log that never shows a token."""
from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn
from fastapi import FastAPI

from nnunet_isrg.server.connections import HEADER_TIMEOUT_S, protocol_with_header_timeout

#: seconds an idle keep-alive connection stays open after a response (uvicorn's default)
KEEP_ALIVE_S = 5
#: most bytes of a request line plus headers (h11's own default, stated here so the README can quote it)
MAX_HEADER_BYTES = 16 * 1024

#: a query parameter whose name ends in "token" and its value, in a logged URL
_TOKEN_IN_URL = re.compile(r"(?i)([?&][^=&\s]*token=)[^&\s\"]*")


class RedactTokens(logging.Filter):
    """Rewrites ``?token=...`` in log lines to ``?token=[redacted]``. The API does not take a token in a
    URL, but an old bookmark may still carry one, and uvicorn's access log writes every URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_URL.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                                for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _TOKEN_IN_URL.sub(r"\1[redacted]", record.msg)
        return True


def redact_tokens_in_access_log() -> None:
    """Adds :class:`RedactTokens` to uvicorn's access logger, once (uvicorn's logging setup keeps a
    logger's filters)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "info",
                   header_timeout_s: float = HEADER_TIMEOUT_S) -> uvicorn.Config:
    """uvicorn's settings for ``app``: the h11 protocol with a header deadline of ``header_timeout_s``."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            http=protocol_with_header_timeout(header_timeout_s), timeout_keep_alive=KEEP_ALIVE_S,
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    redact_tokens_in_access_log()  # after Config: its logging setup replaces the logger's handlers
    return config


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 30.0,
                        header_timeout_s: float = HEADER_TIMEOUT_S, log_level: str = "warning") -> Iterator[str]:
    """Runs ``app`` with uvicorn in a daemon thread (tests, notebooks) and yields its base URL
    (``http://host:port``); ``port=0`` picks a free port. The server stops when the block ends.
    ``log_level="info"`` writes uvicorn's access log."""
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level, header_timeout_s))
    thread = threading.Thread(target=server.run, daemon=True, name="isrg-uvicorn")
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    try:
        yield f"http://{shown}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
