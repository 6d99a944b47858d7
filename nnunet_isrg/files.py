"""Writing files so that no reader ever sees half of one, and the JSON they hold.

Every file the package writes goes through :func:`atomic_path`: the content is written to a
temporary name in the destination folder and renamed into place (``os.replace`` is atomic on
one file system), and the temporary file is removed if writing fails. A set of files that must
agree with each other (``isrg predict``'s outputs of one image) goes through :func:`atomic_folder`:
written into a temporary folder that then replaces the old one whole. Files and folders get the
modes a plain ``open``/``mkdir`` would give them (0644 and 0755 under the usual umask 022), not
the private modes of :mod:`tempfile`.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, which races with threads
    creating files); 0o022 where ``/proc`` does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _public_mode(path: Path, is_dir: bool) -> None:
    os.chmod(path, (0o777 if is_dir else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` when the block succeeds.

    ``suffix`` defaults to the destination's own suffixes (``.nii.gz``, ``.png``), so writers that
    pick their format from the file name (SimpleITK, matplotlib) write the right format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _public_mode(Path(tmp), is_dir=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_PARTIAL = ".partial"


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a new empty folder beside ``path``; when the block succeeds it replaces ``path`` whole.

    A reader sees the old folder or the new one, never a mix: on Linux the two are swapped in one
    step, elsewhere the old one is renamed aside first (a process killed between the two renames
    leaves it as ``.<name>.*.old``, put back by the next call). A block that fails, or a process
    killed inside it, leaves the old folder untouched; the temporary ``.<name>.*.partial`` folders of
    killed runs are removed by the next call for the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*{_PARTIAL}"):
        shutil.rmtree(stale, ignore_errors=True)
    if not path.exists():
        aside = sorted(path.parent.glob(f".{path.name}.*.old"))
        if aside:
            os.replace(aside[-1], path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_PARTIAL, dir=path.parent))
    try:
        yield tmp
        _public_mode(tmp, is_dir=True)
        if not path.exists():
            os.replace(tmp, path)
        elif path.is_dir() and _exchange(tmp, path):
            shutil.rmtree(tmp)              # now the old folder
        else:
            old = tmp.with_name(tmp.name[: -len(_PARTIAL)] + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` in plain JSON types: numpy scalars and arrays to Python, tuples to lists,
    mapping keys to strings (order kept), NaN and infinities to None (JSON has neither)."""
    if isinstance(obj, Mapping):
        return OrderedDict((str(k), json_safe(v)) for k, v in obj.items())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Writes ``obj`` as JSON to ``path`` atomically; returns the path. Pass ``json_safe(obj)`` when
    it may hold numpy values or non-finite floats."""
    return write_text_atomic(path, json.dumps(obj, indent=indent))
