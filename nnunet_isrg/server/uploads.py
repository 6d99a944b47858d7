"""Receiving an uploaded image: the request body streamed to the session's folder under a size
limit, and a zip (a DICOM series, or one image) unpacked safely."""
from __future__ import annotations

import secrets
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from fastapi import HTTPException, Request

from nnunet_isrg.files import atomic_path
from nnunet_isrg.inference.session import SessionError
from nnunet_isrg.server.data_files import UPLOAD_SUFFIXES, is_image_file, upload_suffix
from nnunet_isrg.server.errors import http_error

#: a zip may unpack to at most this many times the upload limit (zip bombs)
ZIP_EXPANSION_LIMIT = 4
#: what unpacking a damaged or unusual zip raises
_UNPACK_ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, ValueError, EOFError, zlib.error)


def checked_upload_suffix(filename: str) -> str:
    """The reader-picking ending of ``filename``; 415 for a file type the server cannot read."""
    suffix = upload_suffix(filename)
    if not suffix:
        raise http_error(415, f"'{filename}': unsupported file type; upload one of {list(UPLOAD_SUFFIXES)} "
                              f"(a DICOM series as a .zip)")
    return suffix


def _too_large(max_bytes: int) -> HTTPException:
    # close the connection: the client may still be sending the rest of a body we will not read
    return HTTPException(413, f"upload too large: the limit is {max_bytes / 2**20:.0f} MiB (isrg serve "
                              f"--max-upload-mb)", headers={"Connection": "close"})


async def receive_upload(request: Request, folder: Path, suffix: str, max_bytes: int) -> Path:
    """Streams the request body into a new file in ``folder`` and returns its path: 413 as soon as it
    is (or declares to be) over ``max_bytes``, 400 when it is empty; nothing is left behind on failure."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    path = folder / f"upload-{secrets.token_hex(8)}{suffix}"  # unique: uploads to one session may overlap
    size = 0
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            f.write(chunk)
        if size == 0:
            raise http_error(400, "empty upload: send the file's bytes as the request body")
    return path


def _extract_inside(zf: zipfile.ZipFile, name: str, dest: Path, max_bytes: int) -> None:
    """Extracts ``zf`` into ``dest`` unless it is too large or a member would land outside ``dest``."""
    members = [m for m in zf.infolist() if not m.is_dir()]
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise SessionError(f"{name}: unpacks to {total / 2**20:.0f} MiB, more than the allowed "
                           f"{max_bytes / 2**20:.0f} MiB")
    try:
        for m in members:
            target = (dest / m.filename).resolve()
            if PurePosixPath(m.filename).is_absolute() or not target.is_relative_to(dest):
                raise SessionError(f"{name}: member '{m.filename}' would unpack outside its folder; refused")
        zf.extractall(dest)
    except SessionError:
        raise
    except _UNPACK_ERRORS as e:  # a damaged, encrypted or oddly compressed zip, a name the disk refuses
        # the reason without the server's own path in it
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise SessionError(f"{name}: cannot be unpacked ({why})") from None


def unpack_zip(path: Path, dest: Path, max_bytes: int, name: str | None = None) -> Path:
    """Extracts an uploaded zip safely (no member outside ``dest``, at most ``max_bytes`` in all) and
    returns the image inside: the only image file, else the folder with the most files (a DICOM series).
    Messages call the zip ``name`` (the client's file name; default: its own)."""
    name = name or path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        raise SessionError(f"{name}: not a readable zip file ({type(e).__name__})") from None
    dest = dest.resolve()
    with zf:
        _extract_inside(zf, name, dest, max_bytes)
    images = [p for p in dest.rglob("*") if p.is_file() and is_image_file(p.name)]
    if len(images) == 1:
        return images[0]
    folders: dict[Path, int] = {}
    for p in dest.rglob("*"):
        if p.is_file():
            folders[p.parent] = folders.get(p.parent, 0) + 1
    if not folders:
        raise SessionError(f"{name}: the zip holds no files")
    return max(folders, key=folders.get)
