"""The image files a client may name: the file types the server reads, and paths inside the
``--data`` folders (never outside them, whatever the path or a symbolic link says)."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

from nnunet_isrg.server.errors import http_error

#: file name endings an upload or a data-folder file may have (a .zip holds a DICOM series or one image)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".nhdr")
UPLOAD_SUFFIXES = IMAGE_SUFFIXES + (".zip",)
#: at most this many entries in GET /files
MAX_LISTED_FILES = 2000


def upload_suffix(name: str) -> str:
    """The ending of ``name`` among :data:`UPLOAD_SUFFIXES` (case-insensitive), or ``""``."""
    low = name.lower()
    for s in UPLOAD_SUFFIXES:
        if low.endswith(s):
            return s
    return ""


def is_image_file(name: str) -> bool:
    return upload_suffix(name) in IMAGE_SUFFIXES


def _check_relative(rel: str) -> None:
    """Refuses what no data folder can hold: an empty, absolute or '..' path."""
    if not rel or not rel.strip():
        raise http_error(400, "empty path; give a path relative to a data folder (see GET /files)")
    if "\x00" in rel:
        raise http_error(400, "a null byte in the path is refused: no file name can contain one")
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or rel.startswith(("\\", "~")) \
            or PureWindowsPath(rel).drive:
        raise http_error(400, f"absolute path '{rel}' refused: give a path relative to one of the data folders "
                              f"(see GET /files)")
    if ".." in PurePosixPath(rel.replace("\\", "/")).parts:
        raise http_error(403, f"path '{rel}' refused: '..' (leaving the data folder) is not allowed")


def _look_up(root: Path, rel: str) -> tuple[Path, bool]:
    """``root / rel`` with its symbolic links followed (one leaving the folder is caught by the caller),
    and whether it exists; 400 for a path the file system refuses to look up."""
    try:
        target = (root / rel).resolve()
        return target, target.exists()
    except (OSError, RuntimeError) as e:  # a name over the file system's length limit, a link loop
        # the reason without the server's own path in it
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise http_error(400, f"path '{rel}' cannot be looked up: {why}") from None


def resolve_data_path(data_roots: Sequence[Path], rel: str, data_dir: int | None) -> tuple[Path, str]:
    """The file ``rel`` names in data folder ``data_dir`` (default: the first that holds it), as
    (resolved path, ``rel``); 400/403/404 for a path that is refused or not there."""
    if not data_roots:
        raise http_error(403, "this server has no data folders (isrg serve --data DIR); upload the image instead")
    _check_relative(rel)
    if data_dir is not None and not 0 <= data_dir < len(data_roots):
        raise http_error(404, f"no data folder {data_dir}; there are {len(data_roots)} (0..{len(data_roots) - 1})")
    roots = [data_roots[data_dir]] if data_dir is not None else data_roots
    for root in roots:
        target, exists = _look_up(root, rel)
        if not target.is_relative_to(root):
            raise http_error(403, f"path '{rel}' resolves outside the data folder '{root.name}' (a symbolic link "
                                  f"leaving it?); only files inside the --data folders can be opened")
        if exists:
            return target, rel
    raise http_error(404, f"'{rel}' not found in the data folder(s) {[r.name for r in roots]} (see GET /files)")


def list_data_files(data_roots: Sequence[Path]) -> dict:
    """``{"files": [{"data_dir", "path", "kind"}], "truncated"}``: image files, and folders holding
    ``.dcm`` files (DICOM series), at most :data:`MAX_LISTED_FILES`."""
    out = []
    for i, root in enumerate(data_roots):
        for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked folders
            dirnames.sort()
            d = Path(dirpath)
            if any(f.lower().endswith(".dcm") for f in filenames):
                out.append({"data_dir": i, "path": d.relative_to(root).as_posix(), "kind": "dicom"})
            for f in sorted(filenames):
                p = d / f
                # a linked file may point anywhere: list it only if it stays inside the folder
                if is_image_file(f) and p.resolve().is_relative_to(root):
                    out.append({"data_dir": i, "path": p.relative_to(root).as_posix(), "kind": "image"})
            if len(out) >= MAX_LISTED_FILES:
                return {"files": out[:MAX_LISTED_FILES], "truncated": True}
    return {"files": out, "truncated": False}
