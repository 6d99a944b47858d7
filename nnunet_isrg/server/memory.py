"""The server's memory budget: what an image will hold once a session opens it, estimated from the
image's header before a voxel is read, against a budget per session and one for all sessions.

A session holds its image as float32 whatever the file's type, and what it derives from it (the label
map the overlay and the exports share, masks for reports and exports). Measured on a 256^3 int16
NIfTI (peak RSS above the empty process, ``VmHWM`` reset between the steps, glibc malloc; the
crop-sized work of clicks does not grow with the volume): opening it peaks at 6.1 B/voxel, a
session with an overlay and exports done holds 7.6 B/voxel, a report takes it to 15.9 B/voxel for
the request's duration. So a session is charged :data:`WORKING_FACTOR` times its float32 image (16 B/voxel); a
DICOM SEG + SR export peaks higher (28 B/voxel), which is why those exports run one at a time
(``routes/exports.py``). A file type wider than float32 (float64) is charged at its own width.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

#: bytes per voxel of the image a session works on (float32)
WORKING_BYTES_PER_VOXEL = 4
#: what a session holds, as a multiple of its float32 image (see the module docstring for the figures)
WORKING_FACTOR = 4
#: default budgets: one session, and all sessions together
DEFAULT_SESSION_BYTES = 2 * 2**30
DEFAULT_TOTAL_BYTES = 6 * 2**30
#: the embedding cache each server session gets (and is charged for besides its image): 36 views of the
#: ``tiny`` preset (3.5 MB each), a zoomed-out lesion's views and border tiles with room to spare
DEFAULT_SESSION_CACHE_BYTES = 128 * 2**20


class MemoryBudgetError(Exception):
    """An image the budget has no room for; ``status`` is the HTTP answer."""

    status = 503


class ImageTooLargeError(MemoryBudgetError):
    """One image needs more than a session may hold: no waiting makes room for it."""

    status = 413


class ServerMemoryFullError(MemoryBudgetError):
    """The sessions already open hold so much that this image does not fit now."""

    status = 503


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``300 MiB``: sizes as a person reads them."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB"


@dataclass(frozen=True)
class ImageFootprint:
    """An image's size as its header states it, and what a session holding it is charged."""

    size: tuple[int, ...]        # voxels along each axis as SimpleITK states them (x, y, z[, t])
    file_bytes_per_voxel: int    # the file's pixel type times its components

    @property
    def voxels(self) -> int:
        return math.prod(self.size)

    @property
    def decompressed_bytes(self) -> int:
        return self.voxels * self.file_bytes_per_voxel

    @property
    def charge(self) -> int:
        """Bytes the budget counts for a session holding this image."""
        return self.voxels * max(self.file_bytes_per_voxel, WORKING_BYTES_PER_VOXEL) * WORKING_FACTOR

    def describe(self) -> str:
        return (f"{' x '.join(map(str, self.size))} voxels ({format_bytes(self.decompressed_bytes)} decompressed) "
                f"need about {format_bytes(self.charge)} in a session ({WORKING_FACTOR} x the image as float32)")


def _header_footprint(path: Path, n_files: int = 1) -> ImageFootprint:
    """The footprint of ``path`` read from its header alone (RuntimeError if SimpleITK cannot read it),
    ``n_files`` times over (the slices of a DICOM series, each file one slice or frame stack)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # the header only: no voxel is decompressed
    size = tuple(int(s) for s in reader.GetSize())
    try:
        component = sitk.Image([1] * len(size), reader.GetPixelID()).GetSizeOfPixelComponent()
    except RuntimeError:
        component = 8  # a pixel type SimpleITK cannot allocate: counted at the widest scalar
    if n_files > 1:
        size = size[:2] + (n_files * math.prod(size[2:]),)
    return ImageFootprint(size, component * max(1, reader.GetNumberOfComponents()))


def image_footprint(source: Path) -> ImageFootprint | None:
    """The footprint of an image file or DICOM series folder, or None for a folder with no DICOM series
    (the session's reader refuses it itself). RuntimeError: a file whose header cannot be read."""
    if not source.is_dir():
        return _header_footprint(source)
    reader = sitk.ImageSeriesReader()
    series = [reader.GetGDCMSeriesFileNames(str(source), uid) for uid in reader.GetGDCMSeriesIDs(str(source))]
    series = [files for files in series if files]
    if not series:
        return None
    # the session opens one series (the CT with most slices); the largest one bounds it
    return max((_header_footprint(Path(files[0]), len(files)) for files in series), key=lambda f: f.charge)


class MemoryBudget:
    """Bytes each session is charged for its image, within a budget per session and one in total.

    A session's charge is set before its image is read (:meth:`reserve`) and dropped when the image
    or the session goes (:meth:`release`). Thread-safe.
    """

    def __init__(self, per_session_bytes: int = DEFAULT_SESSION_BYTES, total_bytes: int = DEFAULT_TOTAL_BYTES,
                 session_cache_bytes: int = 0):
        if per_session_bytes <= 0 or total_bytes <= 0:
            raise ValueError(f"memory budgets must be positive, got per session {per_session_bytes} B and total "
                             f"{total_bytes} B")
        if per_session_bytes > total_bytes:
            raise ValueError(f"the per-session memory budget ({format_bytes(per_session_bytes)}) is larger than the "
                             f"total ({format_bytes(total_bytes)})")
        if session_cache_bytes < 0 or session_cache_bytes >= per_session_bytes:
            raise ValueError(f"a session's embedding cache ({format_bytes(session_cache_bytes)}) must be at least 0 "
                             f"and leave room for an image in the per-session budget "
                             f"({format_bytes(per_session_bytes)})")
        self.per_session_bytes = int(per_session_bytes)
        #: what every session holds besides its image, charged with it: its embedding cache at its bound
        self.session_cache_bytes = int(session_cache_bytes)
        self.total_bytes = int(total_bytes)
        self._charges: dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve(self, sid: str, footprint: ImageFootprint, name: str) -> None:
        """Charges session ``sid`` for ``footprint`` (replacing its former charge), or raises
        :class:`ImageTooLargeError` / :class:`ServerMemoryFullError` and leaves its charge as it was."""
        need = footprint.charge + self.session_cache_bytes
        if need > self.per_session_bytes:
            raise ImageTooLargeError(f"{name}: {footprint.describe()}{self._cache_text()}, more than the per-session "
                                     f"memory budget of "
                                     f"{format_bytes(self.per_session_bytes)} (isrg serve --session-memory)")
        with self._lock:
            others = sum(b for s, b in self._charges.items() if s != sid)
            if others + need > self.total_bytes:
                raise ServerMemoryFullError(
                    f"{name}: {footprint.describe()}{self._cache_text()}, but the open sessions hold {format_bytes(others)} of the "
                    f"server's {format_bytes(self.total_bytes)} (isrg serve --total-memory); close a session "
                    f"(DELETE /sessions/ID), wait until idle ones expire, or try again later")
            self._charges[sid] = need

    def _cache_text(self) -> str:
        return f" (+ {format_bytes(self.session_cache_bytes)} of embedding cache)" if self.session_cache_bytes else ""

    def release(self, sid: str) -> None:
        """Drops session ``sid``'s charge (its image is gone, or the session is)."""
        with self._lock:
            self._charges.pop(sid, None)

    def charged(self, sid: str) -> int:
        with self._lock:
            return self._charges.get(sid, 0)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._charges.values())
