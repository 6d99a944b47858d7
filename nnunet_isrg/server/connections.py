"""HTTP connections under uvicorn with a deadline for a request's headers.

uvicorn's h11 protocol has no such deadline: its keep-alive timer only runs between requests and is
cancelled by the first byte of the next one, so a client that sends part of a request line or of the
headers and then nothing (or one byte now and then) holds the connection open indefinitely. Here
every request's headers must be complete within ``header_timeout_s`` of the connection opening or of
the previous response ending; the connection is closed otherwise. The body is not under this
deadline (an upload may take long); h11's header size limit stays as configured in uvicorn.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: seconds a client has to send a request's headers (request line included)
HEADER_TIMEOUT_S = 10.0


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request headers are not complete within
    :attr:`header_timeout_s` (a subclass sets it: :func:`protocol_with_header_timeout`)."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request on this connection (keep-alive) gets the same time for its headers
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        if not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        # h11 leaves IDLE once a request's headers are parsed: a request in progress is left alone
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose request headers were not complete after %.1f s",
                             self.header_timeout_s)
            self.transport.close()


def protocol_with_header_timeout(timeout_s: float) -> type[HeaderDeadlineH11Protocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for a header deadline of ``timeout_s``."""
    if not timeout_s > 0:
        raise ValueError(f"the header timeout must be a positive number of seconds, got {timeout_s}")
    return type("HeaderDeadlineH11Protocol", (HeaderDeadlineH11Protocol,), {"header_timeout_s": float(timeout_s)})
