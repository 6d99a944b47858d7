"""The server's limits and its defences against other web pages and misbehaving clients, each on a real
uvicorn server (loopback port, thread) with the click-driven stand-in network:

- memory: an image is charged to a budget (per session, and in all) from its header before a voxel is
  read: a 255 KB .nii.gz that decompresses to 512^3 voxels gets 413, a full server 503, a closed
  session gives its charge back; uploaded files are deleted once read;
- browsers: a foreign Host (DNS rebinding) gets 421, a POST without a client header (a cross-site form
  or simple request) 403; the token never appears in the access log;
- inputs: null bytes (400), non-strict JSON types (422), numpy reprs in messages;
- connections: a click whose client left is not applied; a client that sends partial headers is
  dropped after the header timeout.
"""
from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from nnunet_isrg.server.app import create_app, serve_in_background
from nnunet_isrg.server.memory import WORKING_FACTOR, ImageFootprint

CLIENT_HEADERS = {"X-ISRG-Client": "tests"}
TOKEN = "s3cret-t0ken-in-no-log"
PHANTOM_CHARGE = ImageFootprint((48, 48, 48), 2).charge  # the phantom cases: 48^3 int16
MIB = 2**20
CACHE = 4 * MIB   # each test server session's embedding cache


def _zero_nifti_gz(path: Path, shape_xyz: tuple[int, int, int]) -> Path:
    """An int16 NIfTI of zeros, compressed: a few hundred KB on disk for 512^3 voxels (256 MiB), written
    in chunks so the test never holds the volume."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape_xyz)
    header.set_data_dtype(np.int16)
    header.set_zooms((1.0, 1.0, 1.0))
    header["vox_offset"] = 352
    chunk = bytes(MIB)
    left = int(np.prod(shape_xyz)) * 2
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header.binaryblock + b"\0\0\0\0")
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return path


def _header_only_nifti(path: Path, shape_xyz: tuple[int, int, int]) -> Path:
    """A NIfTI header claiming ``shape_xyz`` with no voxels after it: reading it fails, reading its header does not."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape_xyz)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0\0\0\0")
    return path


@pytest.fixture(scope="module")
def model(debug_model):
    from stand_ins import stand_in_model

    torch.set_num_threads(1)
    return stand_in_model(debug_model)


@pytest.fixture(scope="module")
def case(phantom_raw) -> dict:
    img = sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz"))[0]
    return {"rel": img.relative_to(phantom_raw).as_posix(), "path": img}


@pytest.fixture(scope="module")
def data(tmp_path_factory, case) -> Path:
    """A data folder with the phantom case, a 512^3 gzip bomb and 128^3 images."""
    folder = tmp_path_factory.mktemp("safety-data")
    (folder / "case.nii.gz").write_bytes(case["path"].read_bytes())
    _zero_nifti_gz(folder / "bomb.nii.gz", (512, 512, 512))
    _header_only_nifti(folder / "claims_512.nii", (512, 512, 512))
    for k in range(4):
        _zero_nifti_gz(folder / f"medium{k}.nii.gz", (128, 128, 128))
    return folder


@pytest.fixture(scope="module")
def app(model, data):
    # 40 MiB a session: a 128^3 image (32 MiB charged) and 4 MiB of embedding cache fit; 116 MiB in all:
    # three of them do, a fourth does not
    return create_app(model, data_dirs=[data], session_memory_bytes=40 * MIB, total_memory_bytes=116 * MIB,
                      embedding_cache_bytes=CACHE)


@pytest.fixture(scope="module")
def base(app) -> str:
    with serve_in_background(app) as url:
        yield url


@pytest.fixture()
def client(base):
    with httpx.Client(base_url=base, timeout=120, headers=CLIENT_HEADERS) as c:
        yield c


def _session(c: httpx.Client, path: str | None = None) -> str:
    sid = c.post("/sessions").json()["session_id"]
    if path is not None:
        r = c.post(f"/sessions/{sid}/open", params={"wait": True}, json={"path": path})
        assert r.status_code == 200, r.text
    return sid


# --------------------------------------------------------------------------------------------- memory
def test_a_small_upload_that_decompresses_to_512_cubed_is_refused_before_it_is_read(app, client, data):
    bomb = (data / "bomb.nii.gz").read_bytes()
    assert len(bomb) < 1 * MIB  # the tester's case: a few hundred KB
    sid = _session(client)
    t0 = time.monotonic()
    r = client.post(f"/sessions/{sid}/upload", params={"filename": "bomb.nii.gz", "wait": True}, content=bomb)
    elapsed = time.monotonic() - t0
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    for figure in ("bomb.nii.gz", "512 x 512 x 512 voxels", "256 MiB decompressed", "2.00 GiB", "40 MiB",
                   "+ 4 MiB of embedding cache", "per-session memory budget"):
        assert figure in detail, (figure, detail)
    assert elapsed < 10, f"refusing took {elapsed:.1f} s: were the voxels read?"
    assert client.get(f"/sessions/{sid}").json()["status"] == "empty"  # the session is as it was
    assert list(app.state.store.get(sid).workdir.iterdir()) == []  # the refused upload is gone
    # by path too; and a header without voxels is refused the same way: only the header was read
    for name in ("bomb.nii.gz", "claims_512.nii"):
        r = client.post(f"/sessions/{sid}/open", params={"wait": True}, json={"path": name})
        assert r.status_code == 413 and "512 x 512 x 512" in r.json()["detail"], r.text
    assert app.state.server.budget.charged(sid) == 0


def test_the_total_budget_refuses_with_503_and_a_closed_session_gives_its_charge_back(model, data):
    app = create_app(model, data_dirs=[data], session_memory_bytes=40 * MIB, total_memory_bytes=116 * MIB,
                     embedding_cache_bytes=CACHE)
    charge = ImageFootprint((128, 128, 128), 2).charge + CACHE   # the image and the session's embedding cache
    assert charge == 36 * MIB
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=120, headers=CLIENT_HEADERS) as c:
        sids = [_session(c, f"medium{k}.nii.gz") for k in range(3)]
        assert c.get("/info").json()["memory"]["used_bytes"] == 3 * charge
        last = _session(c)
        r = c.post(f"/sessions/{last}/open", params={"wait": True}, json={"path": "medium3.nii.gz"})
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert "108 MiB" in detail and "116 MiB" in detail and "32 MiB" in detail and "+ 4 MiB" in detail
        # opening another image in a session replaces its charge (the former image goes first)
        r = c.post(f"/sessions/{sids[0]}/open", params={"wait": True}, json={"path": "case.nii.gz"})
        assert r.status_code == 200 and app.state.server.budget.used_bytes == 2 * charge + PHANTOM_CHARGE + CACHE
        assert c.post(f"/sessions/{last}/open", params={"wait": True},
                      json={"path": "medium3.nii.gz"}).status_code == 200
        assert c.delete(f"/sessions/{sids[1]}").status_code == 204
        assert app.state.server.budget.used_bytes == 2 * charge + PHANTOM_CHARGE + CACHE
        info = c.get("/info").json()["memory"]
        assert info["session_bytes"] == 40 * MIB and info["total_bytes"] == 116 * MIB
        assert info["embedding_cache_bytes"] == CACHE
        # what is charged is what the session's cache is bounded by
        assert app.state.store.get(sids[2]).session._predictor.cache.max_bytes == CACHE
        assert info["bytes_per_voxel"] == 4 * WORKING_FACTOR


def test_uploaded_files_are_deleted_once_read(app, client, case):
    import io
    import zipfile

    sid = _session(client)
    r = client.post(f"/sessions/{sid}/upload", params={"filename": "mine.nii.gz", "wait": True},
                    content=case["path"].read_bytes())
    assert r.status_code == 200, r.text
    workdir = app.state.store.get(sid).workdir
    assert list(workdir.iterdir()) == []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("series/ct.nii.gz", case["path"].read_bytes())
    r = client.post(f"/sessions/{sid}/upload", params={"filename": "mine.zip", "wait": True}, content=buf.getvalue())
    assert r.status_code == 200 and r.json()["image"]["name"] == "mine.zip", r.text
    assert list(workdir.iterdir()) == []
    assert client.post(f"/sessions/{sid}/clicks", json={"point": [24, 24, 24]}).status_code == 200


# --------------------------------------------------------------------------------------------- browsers
@pytest.mark.parametrize("host, status", [("evil.example", 421), ("evil.example:80", 421), ("127.0.0.1.nip.io", 421),
                                          ("localhost", 200), ("127.0.0.1", 200), ("[::1]", 200),
                                          ("isrg.lan", 200)])
def test_only_the_servers_own_host_names_are_answered(model, data, host, status):
    app = create_app(model, data_dirs=[data], allowed_hosts=["isrg.lan"])
    with serve_in_background(app) as url:
        port = url.rsplit(":", 1)[1]
        named = host if host.endswith(":80") else f"{host}:{port}"
        r = httpx.get(f"{url}/info", headers={"Host": named})
        assert r.status_code == status, r.text
        if status == 421:
            assert "not a name of this server" in r.json()["detail"] and "--allowed-host" in r.json()["detail"]
            assert httpx.get(f"{url}/", headers={"Host": named}).status_code == 421  # the page too


def test_state_changing_requests_need_a_header_a_cross_site_page_cannot_send(base):
    # what a form or a fetch without preflight from another site can send
    for headers, body in [({"Content-Type": "text/plain"}, "{}"),
                          ({"Content-Type": "application/x-www-form-urlencoded"}, "a=1"),
                          ({"Content-Type": "multipart/form-data; boundary=x"}, "--x--")]:
        r = httpx.post(f"{base}/sessions", headers=headers, content=body)
        assert r.status_code == 403 and "X-ISRG-Client" in r.json()["detail"], r.text
    sid = httpx.post(f"{base}/sessions", headers={"X-ISRG-Client": "viewer"}).json()["session_id"]
    r = httpx.post(f"{base}/sessions/{sid}/clicks", headers={"Content-Type": "text/plain"},
                   content=json.dumps({"point": [1, 1, 1]}))
    assert r.status_code == 403
    assert httpx.delete(f"{base}/sessions/{sid}").status_code == 403
    assert httpx.delete(f"{base}/sessions/{sid}", headers={"Authorization": "Bearer x"}).status_code == 204
    assert httpx.get(f"{base}/info").status_code == 200  # reading needs no header


def test_the_token_is_in_no_access_log_line(model, data, case):
    app = create_app(model, data_dirs=[data], token=TOKEN)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    with serve_in_background(app, log_level="info") as url:
        logging.getLogger("uvicorn.access").addHandler(handler)
        try:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=url, timeout=60, headers=auth) as c:
                assert c.get("/").status_code == 200
                sid = c.post("/sessions").json()["session_id"]
                assert c.post(f"/sessions/{sid}/open", params={"wait": True},
                              json={"path": "case.nii.gz"}).status_code == 200
                assert c.post(f"/sessions/{sid}/clicks", json={"point": [24, 24, 24]}).status_code == 200
                assert c.get(f"/sessions/{sid}/export/report.json").status_code == 200
                assert c.get("/info", headers={"Authorization": "", "X-ISRG-Token": TOKEN}).status_code == 200
            # an old bookmark with the token in its URL: refused, and the log line redacted
            assert httpx.get(f"{url}/info", params={"token": TOKEN}).status_code == 401
            assert httpx.get(f"{url}/", params={"token": TOKEN}).status_code == 200
        finally:
            logging.getLogger("uvicorn.access").removeHandler(handler)
    assert len(lines) >= 8 and any("/export/report.json" in line for line in lines), lines
    assert not [line for line in lines if TOKEN in line], lines
    assert any("token=[redacted]" in line for line in lines), lines


# --------------------------------------------------------------------------------------------- inputs
def test_null_bytes_are_refused_with_400(client):
    sid = _session(client)
    for method, path, kwargs in [
        ("POST", f"/sessions/{sid}/open", {"json": {"path": "case\x00.nii.gz"}}),
        ("POST", f"/sessions/{sid}/open", {"json": {"path": "\x00"}}),
        ("GET", "/sessions/%00", {}),
        ("GET", f"/sessions/{sid}/slice/axial/0%00", {}),
        ("POST", f"/sessions/{sid}/upload", {"params": {"filename": "a\x00.nii.gz"}, "content": b"x"}),
        ("PUT", f"/sessions/{sid}/lesions/1/attributes/den%00sity", {"json": {"value": None}}),
    ]:
        r = client.request(method, path, **kwargs)
        assert r.status_code == 400 and "null byte" in r.json()["detail"], (method, path, r.status_code, r.text)
    r = client.post(f"/sessions/{sid}/open", json={"path": "x" * 300 + ".nii.gz"})  # longer than a file name may be
    assert r.status_code == 400 and "cannot be looked up" in r.json()["detail"], r.text


def test_json_types_are_strict_and_messages_hold_plain_numbers(client):
    sid = _session(client, "case.nii.gz")
    for body in [{"point": [24, 24, 24], "positive": "yes"}, {"point": [24, 24, 24], "positive": 1},
                 {"point": [True, 24, 24]}, {"point": ["24", 24, 24]}, {"point": [24, 24, 24], "positive": None}]:
        r = client.post(f"/sessions/{sid}/clicks", json=body)
        assert r.status_code == 422, (body, r.text)
    for body in [{"path": "case.nii.gz", "data_dir": "0"}, {"path": "case.nii.gz", "data_dir": False}, {"path": 7}]:
        assert client.post(f"/sessions/{sid}/open", json=body).status_code == 422, body
    r = client.put(f"/sessions/{sid}/lesions/1/attributes/density", json={"value": 3})
    assert r.status_code == 422
    # NaN is no JSON, but Python's parser takes it: the answer must still be JSON, not a 500
    r = client.post(f"/sessions/{sid}/clicks", content=b'{"point": [NaN, Infinity]}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    lesions = client.get(f"/sessions/{sid}/lesions").json()["lesions"]
    assert lesions[0]["n_clicks"] == 0  # none of those was taken as a click
    r = client.post(f"/sessions/{sid}/clicks", json={"point": [64, 1.5, 1]})
    assert r.status_code == 422 and "(64.0, 1.5, 1.0)" in r.json()["detail"] and "np." not in r.json()["detail"]
    r = client.post(f"/sessions/{sid}/clicks", json={"point": [1e4, 0, 0], "space": "world"})
    assert r.status_code == 422 and "np." not in r.json()["detail"], r.text


# --------------------------------------------------------------------------------------------- connections
def test_a_click_whose_client_disconnected_is_not_applied(app, base, client):
    sid = _session(client, "case.nii.gz")
    entry = app.state.store.get(sid)
    dropped = threading.Event()
    handler = logging.Handler()
    handler.emit = lambda record: dropped.set() if "disconnected" in record.getMessage() else None
    log = logging.getLogger("nnunet_isrg.server")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    body = json.dumps({"point": [24, 24, 24]}).encode()
    host, port = base.removeprefix("http://").rsplit(":", 1)
    try:
        with entry.lock:  # the session is busy with an earlier request: the click waits for it
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(f"POST /sessions/{sid}/clicks HTTP/1.1\r\nHost: {host}\r\nX-ISRG-Client: tests\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                time.sleep(0.5)  # the request is read and waits for the lock
            time.sleep(0.5)  # the client has gone; the server notices
        assert dropped.wait(10), "the server did not report dropping the click"
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    lesions = client.get(f"/sessions/{sid}/lesions").json()["lesions"]
    assert lesions[0]["n_clicks"] == 0, lesions
    assert client.post(f"/sessions/{sid}/clicks", json={"point": [24, 24, 24]}).json()["lesion"]["n_clicks"] == 1


def test_a_client_sending_partial_headers_is_dropped_after_the_header_timeout(model, data):
    app = create_app(model, data_dirs=[data])
    timeout_s = 1.0
    with serve_in_background(app, header_timeout_s=timeout_s) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for drip in (False, True):  # silence after a partial header, and one byte now and then
            with socket.create_connection((host, int(port)), timeout=10) as s:
                t0 = time.monotonic()
                s.sendall(b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                closed = None
                while time.monotonic() - t0 < 8:
                    s.settimeout(0.25)
                    try:
                        if s.recv(1024) == b"":
                            closed = time.monotonic() - t0
                            break
                    except socket.timeout:
                        if drip:
                            try:
                                s.sendall(b"a")
                            except OSError:
                                closed = time.monotonic() - t0
                                break
                    except OSError:
                        closed = time.monotonic() - t0
                        break
            assert closed is not None and closed < timeout_s + 1.5, f"drip={drip}: open after {closed} s"
        # a client that sends its request in time is served, on a kept-alive connection too
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/info").status_code == 200
            assert c.get("/files").status_code == 200
