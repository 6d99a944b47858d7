"""Server-side session store: one :class:`ISRGSession` per browser tab / API client, isolated.

Each :class:`SessionEntry` owns its ISRGSession, a lock and a private temporary folder (uploads,
exports). Requests of one session hold its lock, so they run one after the other in arrival order;
requests of different sessions only share the (read-only, eval-mode) network and run in parallel.
A session unused for ``ttl_s`` seconds is dropped together with its folder; one that is busy (its
lock held) is never dropped mid-request.
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

#: what ``status`` can be: no image yet, image being read and checked, usable, last open failed
STATUSES = ("empty", "preparing", "ready", "error")


class UnknownSessionError(KeyError):
    """No session with that id (never created, deleted, or expired after idle time)."""

    def __init__(self, sid: str):
        super().__init__(sid)
        self.sid = sid

    def __str__(self) -> str:
        return (f"unknown session '{self.sid}': it was never created, was deleted or expired after idle time; "
                f"create one with POST /sessions")


class TooManySessionsError(RuntimeError):
    """The store is full of sessions that are still in use."""


@dataclass
class SessionEntry:
    """One client's state. ``session`` is an ISRGSession (created by the store's factory)."""

    sid: str
    session: object
    workdir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    status: str = "empty"
    message: str = "no image opened yet"
    image_name: str | None = None
    #: increases with every change of the lesions or the image; keys the label-map cache
    revision: int = 0
    _labels: tuple | None = None   # (revision, label map)
    prepare_thread: threading.Thread | None = None

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def changed(self) -> None:
        """Call after anything that changes the image or a lesion mask."""
        self.revision += 1

    def replace_session(self, session: object) -> None:
        """Puts a fresh session in place of the current one (call with the lock held): opening another
        image drops the former one and everything derived from it before the new one is read, so a
        session never holds two images."""
        self.session, self._labels = session, None
        self.changed()

    def label_map(self) -> np.ndarray:
        """The session's label map, cached until the next :meth:`changed` (call with the lock held)."""
        if self._labels is None or self._labels[0] != self.revision:
            self._labels = (self.revision, self.session.label_map())
        return self._labels[1]


class SessionStore:
    """Thread-safe map session id -> :class:`SessionEntry`, with idle expiry.

    Args:
        factory: builds a fresh ISRGSession (typically sharing one loaded model).
        ttl_s: idle time after which a session is dropped.
        max_sessions: at most this many live sessions; creating one more first drops expired ones,
            then refuses with :class:`TooManySessionsError`.
        sweep_interval_s: how often a background thread looks for expired sessions (None: only on
            :meth:`create` and :meth:`sweep`).
        on_drop: called with the id of every session that goes (deleted, expired, store closed), e.g.
            to release its memory charge.
    """

    def __init__(self, factory: Callable[[], object], ttl_s: float = 3600.0, max_sessions: int = 64,
                 sweep_interval_s: float | None = None, on_drop: Callable[[str], None] | None = None):
        self._factory = factory
        self._on_drop = on_drop
        self.ttl_s = float(ttl_s)
        self.max_sessions = int(max_sessions)
        self._entries: dict[str, SessionEntry] = {}
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="isrg-serve-"))
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._sweep_interval_s = max(1.0, min(60.0, self.ttl_s / 4)) if sweep_interval_s is None else sweep_interval_s
        self.open()

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Starts the sweeper and makes the sessions' folder, again after :meth:`close` (an app served a
        second time, e.g. by a second server in a notebook or a test, gets its store back)."""
        self._root.mkdir(mode=0o700, exist_ok=True)
        # a stopped sweeper may still be finishing: a new one with its own stop event takes over
        if self._sweep_interval_s > 0 and (self._sweeper is None or self._stop.is_set()):
            self._stop = threading.Event()
            self._sweeper = threading.Thread(target=self._sweep_loop, args=(self._sweep_interval_s, self._stop),
                                             daemon=True, name="isrg-session-sweeper")
            self._sweeper.start()

    def create(self) -> SessionEntry:
        self.sweep()
        with self._lock:
            if len(self._entries) >= self.max_sessions:
                raise TooManySessionsError(f"{len(self._entries)} sessions are open (the limit is "
                                           f"{self.max_sessions}); close one (DELETE /sessions/ID) or wait "
                                           f"until idle ones expire after {self.ttl_s:.0f} s")
        session = self._factory()  # outside the store lock: may take a moment
        sid = secrets.token_urlsafe(16)
        workdir = Path(tempfile.mkdtemp(prefix=f"{sid[:8]}-", dir=self._root))
        entry = SessionEntry(sid=sid, session=session, workdir=workdir)
        with self._lock:
            self._entries[sid] = entry
        return entry

    def new_session(self) -> object:
        """A fresh session from the store's factory (sharing the loaded model)."""
        return self._factory()

    def get(self, sid: str) -> SessionEntry:
        with self._lock:
            entry = self._entries.get(sid)
        if entry is None:
            raise UnknownSessionError(sid)
        entry.touch()
        return entry

    @contextmanager
    def use(self, sid: str) -> Iterator[SessionEntry]:
        """The entry with its lock held (requests of one session run one at a time)."""
        entry = self.get(sid)
        with entry.lock:
            # it may have been deleted while we waited for the lock
            with self._lock:
                if self._entries.get(sid) is not entry:
                    raise UnknownSessionError(sid)
            try:
                yield entry
            finally:
                entry.touch()

    def delete(self, sid: str) -> None:
        with self._lock:
            entry = self._entries.pop(sid, None)
        if entry is None:
            raise UnknownSessionError(sid)
        self._dropped(entry)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    # ------------------------------------------------------------------ expiry
    def sweep(self, now: float | None = None) -> list[str]:
        """Drops sessions idle for longer than ``ttl_s`` and not busy; returns their ids."""
        now = time.monotonic() if now is None else now
        dropped = []
        with self._lock:
            for sid, entry in list(self._entries.items()):
                if now - entry.last_used <= self.ttl_s:
                    continue
                if not entry.lock.acquire(blocking=False):
                    continue  # busy: a request (or an image preparation) is running
                try:
                    del self._entries[sid]
                    dropped.append(entry)
                finally:
                    entry.lock.release()
        for entry in dropped:
            self._dropped(entry)
        return [e.sid for e in dropped]

    def _dropped(self, entry: SessionEntry) -> None:
        """What goes with a session once it left the map: its files and, through ``on_drop``, its charge."""
        shutil.rmtree(entry.workdir, ignore_errors=True)
        if self._on_drop is not None:
            self._on_drop(entry.sid)

    def _sweep_loop(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 (the sweeper must survive anything)
                pass

    def close(self) -> None:
        """Stops the sweeper and drops every session with its folder (:meth:`open` starts the store again)."""
        self._stop.set()
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            self._dropped(entry)
        shutil.rmtree(self._root, ignore_errors=True)
