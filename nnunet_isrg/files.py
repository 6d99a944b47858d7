"""Writing files so that no reader ever sees half of one, and the JSON they hold.

Every file the package writes goes through :func:`atomic_path`: the content is written to a
temporary name in the destination folder and renamed into place (``os.replace`` is atomic on
one file system), and the temporary file is removed if writing fails.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
