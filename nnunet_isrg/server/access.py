"""What a request may work on: a session that has an image (else 409) and a lesion it holds (else 404)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from nnunet_isrg.inference.session import ISRGSession
from nnunet_isrg.server.errors import http_error
from nnunet_isrg.server.sessions import SessionEntry, SessionStore


def _session_with_image(entry: SessionEntry) -> ISRGSession:
    """The entry's session; 409 while it has no usable image."""
    if entry.status == "ready":
        return entry.session
    if entry.status == "error":
        raise http_error(409, f"the last image could not be opened ({entry.message}); open another one")
    raise http_error(409, "no image is open in this session: open one with POST /sessions/{sid}/open (a path in "
                          "a data folder) or POST /sessions/{sid}/upload")


@contextmanager
def ready_session(store: SessionStore, sid: str) -> Iterator[tuple[SessionEntry, ISRGSession]]:
    """Session ``sid``'s entry, with its lock held for the block, and its session (which has an image)."""
    with store.use(sid) as entry:
        yield entry, _session_with_image(entry)


def known_lesion(session: ISRGSession, lid: int) -> int:
    """``lid``; 404 unless it is one of the session's lesions (the current one, maybe still empty, included)."""
    if lid not in session.lesion_ids and lid != session.current_lesion_id:
        raise http_error(404, f"no lesion {lid} in this session; lesions: {session.lesion_ids}")
    return lid
