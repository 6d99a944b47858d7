"""The HTTP API on a real uvicorn server (loopback port, thread) with the debug model trained by
nnUNetv2_train: the click-report-override-export cycle, concurrent sessions, and every refusal
(path traversal, symlink escape, oversized upload, token, unknown session, click outside)."""
from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from nnunet_isrg.server.app import create_app, serve_in_background

N_CLIENTS = 8
CLICKS_PER_CLIENT = 20
CONCURRENT_TIME_LIMIT_S = 120.0
TOKEN = "t0ken-for-tests"
#: the header API clients send so that the server takes their POST/PUT/DELETE as not cross-site (the
#: viewer sends X-ISRG-Client: viewer); tests of that rule are in test_server_safety.py
CLIENT_HEADERS = {"X-ISRG-Client": "tests"}


def _interior_point(mask: np.ndarray) -> list[int]:
    from scipy.ndimage import distance_transform_edt

    d = distance_transform_edt(mask)
    return [int(v) for v in np.unravel_index(np.argmax(d), mask.shape)]


@pytest.fixture(scope="module")
def cases(phantom_raw) -> list[dict]:
    """Phantom cases with a lesion: path relative to the raw folder, HU array, label mask, interior point."""
    out = []
    for img in sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz")):
        lab_path = phantom_raw / "labelsTr" / (img.name[: -len("_0000.nii.gz")] + ".nii.gz")
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_path))) > 0
        if lab.sum() < 20:
            continue
        image = sitk.ReadImage(str(img))
        out.append({"rel": img.relative_to(phantom_raw).as_posix(), "path": img, "image": image,
                    "hu": sitk.GetArrayFromImage(image).astype(np.float32), "mask": lab, "point": _interior_point(lab)})
    assert len(out) >= N_CLIENTS, f"only {len(out)} phantom cases with a lesion"
    return out


@pytest.fixture(scope="module")
def extra_data(tmp_path_factory, cases) -> Path:
    """A second data folder holding one real case, a symlink leaving the folder and a secret outside it."""
    root = tmp_path_factory.mktemp("srv")
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    (root / "secret.nii.gz").write_bytes(cases[0]["path"].read_bytes())
    (data / "sub" / "inside.nii.gz").write_bytes(cases[0]["path"].read_bytes())
    os.symlink(root / "secret.nii.gz", data / "escape.nii.gz")
    os.symlink(root, data / "escape_dir")
    return data


@pytest.fixture(scope="module")
def app(debug_model, phantom_raw, extra_data):
    """The debug model's plans with a click-driven stand-in network, so masks are known to be non-empty
    (the server's mechanics are under test here, not what a few debug iterations learnt)."""
    from stand_ins import stand_in_model

    torch.set_num_threads(1)
    return create_app(stand_in_model(debug_model), data_dirs=[phantom_raw, extra_data], max_upload_mb=1,
                      session_ttl_s=600)


@pytest.fixture(scope="module")
def base(app) -> str:
    with serve_in_background(app) as url:
        yield url


@pytest.fixture(scope="module")
def token_base(app, phantom_raw) -> str:
    # same loaded model, a second server that needs a token
    tapp = create_app(app.state.model, data_dirs=[phantom_raw], token=TOKEN)
    with serve_in_background(tapp) as url:
        yield url


@pytest.fixture()
def client(base):
    with httpx.Client(base_url=base, timeout=120, headers=CLIENT_HEADERS) as c:
        yield c


def _open(c: httpx.Client, rel: str, wait: bool = True) -> str:
    sid = c.post("/sessions").json()["session_id"]
    r = c.post(f"/sessions/{sid}/open", params={"wait": wait}, json={"path": rel})
    assert r.status_code in (200, 202), r.text
    return sid


def _png(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)))


def _window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    return np.clip(np.rint((hu - (level - width / 2)) / width * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- the cycle
def test_full_click_report_override_export_cycle(client, cases, tmp_path):
    from pydicom import dcmread

    from nnunet_isrg.report.structured import validate_report

    case = cases[0]
    c = client
    sid = c.post("/sessions").json()["session_id"]
    r = c.post(f"/sessions/{sid}/open", json={"path": case["rel"]})
    assert r.status_code == 202 and r.json()["status"] in ("preparing", "ready")
    t0 = time.monotonic()
    while (s := c.get(f"/sessions/{sid}").json())["status"] == "preparing" or s["busy"]:
        assert time.monotonic() - t0 < 60, s
        time.sleep(0.05)
    assert s["status"] == "ready", s
    info = s["image"]
    assert info["shape_zyx"] == list(case["hu"].shape)
    assert info["spacing_zyx"] == pytest.approx(list(reversed(case["image"].GetSpacing())))
    assert info["planes"]["coronal"]["size"] == [case["hu"].shape[0], case["hu"].shape[2]]

    # slices against an independent windowing of the same file (soft 400/40, lung 1500/-600, custom)
    z, y, x = case["point"]
    np.testing.assert_array_equal(_png(c.get(f"/sessions/{sid}/slice/axial/{z}")), _window(case["hu"][z], 400, 40))
    np.testing.assert_array_equal(_png(c.get(f"/sessions/{sid}/slice/coronal/{y}?window=lung")),
                                  _window(case["hu"][::-1, y, :], 1500, -600))
    np.testing.assert_array_equal(_png(c.get(f"/sessions/{sid}/slice/sagittal/{x}",
                                             params={"window": "custom", "level": 100, "width": 50})),
                                  _window(case["hu"][::-1, :, x], 50, 100))

    # a positive click, then a negative one, undo
    r = c.post(f"/sessions/{sid}/clicks", json={"point": case["point"], "positive": True})
    assert r.status_code == 200, r.text
    les = r.json()["lesion"]
    assert les["lesion_id"] == 1 and les["n_clicks"] == 1 and les["n_voxels"] > 0
    assert les["clicks"][0]["voxel_zyx"] == pytest.approx(case["point"]) and les["clicks"][0]["positive"]
    n1 = les["n_voxels"]
    neg = [min(v + 3, n - 1) for v, n in zip(case["point"], case["hu"].shape)]
    les2 = c.post(f"/sessions/{sid}/clicks", json={"point": neg, "positive": False}).json()["lesion"]
    assert les2["n_clicks"] == 2 and les2["clicks"][1]["positive"] is False
    les3 = c.post(f"/sessions/{sid}/undo").json()["lesion"]
    assert les3["n_clicks"] == 1 and les3["n_voxels"] == n1

    # the exported label map is the oracle for the overlay: lesion voxels coloured, all others grey
    r = c.get(f"/sessions/{sid}/export/labels.nii.gz")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    (tmp_path / "labels.nii.gz").write_bytes(r.content)
    lab_img = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert lab_img.GetSpacing() == pytest.approx(case["image"].GetSpacing())
    assert lab_img.GetOrigin() == pytest.approx(case["image"].GetOrigin())
    labels = sitk.GetArrayFromImage(lab_img)
    assert set(np.unique(labels)) <= {0, 1} and int((labels == 1).sum()) == n1
    zs = int(np.argmax((labels == 1).sum(axis=(1, 2))))
    rgb = _png(c.get(f"/sessions/{sid}/slice/axial/{zs}?overlay=1"))
    grey = _window(case["hu"][zs], 400, 40)
    inside = labels[zs] == 1
    outside = ~inside
    assert rgb.shape == grey.shape + (3,)
    for ch in range(3):
        np.testing.assert_array_equal(rgb[..., ch][outside], grey[outside])
    assert (rgb[..., 0][inside].astype(int) > rgb[..., 2][inside].astype(int)).all()  # red: the current lesion

    # report, override, back to the model
    r = c.get(f"/sessions/{sid}/lesions/1/report")
    assert r.status_code == 200, r.text
    rep = r.json()
    validate_report(rep["report"])
    schema = c.get("/info").json()["schema"]
    assert list(rep["report"]["attributes"]) == list(schema)
    assert rep["report"]["measurements"]["n_voxels"] == n1
    assert rep["text"].endswith(".") and rep["markdown"].startswith("###")
    model_density = rep["report"]["attributes"]["density"]["value"]
    other = next(v for v in schema["density"] if v != model_density)
    r = c.put(f"/sessions/{sid}/lesions/1/attributes/density", json={"value": other})
    assert r.status_code == 200, r.text
    dens = r.json()["report"]["attributes"]["density"]
    assert dens["value"] == other and dens["source"] == "reader" and dens["model"]["value"] == model_density
    assert f"{other} lesion" in r.json()["text"]
    r = c.put(f"/sessions/{sid}/lesions/1/attributes/density", json={"value": "Blue"})
    assert r.status_code == 422 and "Blue" in r.json()["detail"] and "Hypodense" in r.json()["detail"]
    r = c.put(f"/sessions/{sid}/lesions/1/attributes/colour", json={"value": "red"})
    assert r.status_code == 422 and "unknown attribute" in r.json()["detail"]

    # exports: JSON (the override kept), Markdown, mask, key image, DICOM SEG + SR
    doc = json.loads(c.get(f"/sessions/{sid}/export/report.json").content)
    assert doc["image"] == case["rel"] and len(doc["lesions"]) == 1
    validate_report(doc["lesions"][0])
    assert doc["lesions"][0]["attributes"]["density"] == dens
    md = c.get(f"/sessions/{sid}/export/report.md").text
    assert f"| density | {other} |" in md
    r = c.get(f"/sessions/{sid}/export/lesions/1/mask.nii.gz")
    (tmp_path / "m.nii.gz").write_bytes(r.content)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.nii.gz"))), labels == 1)
    r = c.get(f"/sessions/{sid}/export/lesions/1/key_image.png")
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(r.content)).size[0] == 512
    r = c.get(f"/sessions/{sid}/export/dicom.zip")
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = set(zf.namelist())
        assert {"seg.dcm", "sr.dcm"} <= names
        seg = dcmread(io.BytesIO(zf.read("seg.dcm")))
        sr = dcmread(io.BytesIO(zf.read("sr.dcm")))
    assert seg.Modality == "SEG" and sr.Modality == "SR" and len(seg.SegmentSequence) == 1

    # a second lesion never overwrites the first; selecting the first again
    r = c.post(f"/sessions/{sid}/lesions")
    assert r.status_code == 201 and r.json()["lesion"]["lesion_id"] == 2
    far = [int(n) - 1 - v for v, n in zip(case["point"], case["hu"].shape)]
    les = c.post(f"/sessions/{sid}/clicks", json={"point": far}).json()["lesion"]
    assert les["lesion_id"] == 2
    lst = c.get(f"/sessions/{sid}/lesions").json()
    assert [l["lesion_id"] for l in lst["lesions"]] == [1, 2] and lst["current_lesion"] == 2
    assert lst["lesions"][0]["n_voxels"] == n1
    assert c.post(f"/sessions/{sid}/lesions/1/select").json()["lesion"]["current"] is True
    assert c.get(f"/sessions/{sid}/lesions/7/report").status_code == 404
    assert c.delete(f"/sessions/{sid}").status_code == 204
    assert c.get(f"/sessions/{sid}").status_code == 404


def test_upload_opens_the_image(client, cases):
    case = cases[1]
    sid = client.post("/sessions").json()["session_id"]
    r = client.post(f"/sessions/{sid}/upload", params={"filename": "mine.nii.gz", "wait": True},
                    content=case["path"].read_bytes())
    assert r.status_code == 200, r.text
    assert r.json()["image"]["name"] == "mine.nii.gz" and r.json()["image"]["shape_zyx"] == list(case["hu"].shape)
    r = client.post(f"/sessions/{sid}/clicks", json={"point": case["point"]})
    assert r.status_code == 200 and r.json()["lesion"]["n_voxels"] > 0


# --------------------------------------------------------------------------------------------- concurrency
def test_concurrent_sessions_are_isolated(base, cases):
    """8 clients x 20 clicks on 8 images in parallel, plus one client that keeps failing: no errors, each
    session holds exactly its own clicks, and the failing one disturbs nobody."""
    results: dict[int, dict] = {}
    errors: list[str] = []

    def client_run(k: int) -> None:
        case = cases[k]
        rng = np.random.default_rng(k)
        try:
            with httpx.Client(base_url=base, timeout=120, headers=CLIENT_HEADERS) as c:
                sid = _open(c, case["rel"])
                sent = []
                for i in range(CLICKS_PER_CLIENT):
                    p = np.clip(np.asarray(case["point"]) + (rng.integers(-3, 4, 3) if i else 0), 0,
                                np.asarray(case["hu"].shape) - 1).tolist()
                    pos = i == 0 or i % 3 != 0
                    r = c.post(f"/sessions/{sid}/clicks", json={"point": p, "positive": pos})
                    if r.status_code != 200:
                        errors.append(f"client {k} click {i}: {r.status_code} {r.text}")
                        return
                    les = r.json()["lesion"]
                    if les["n_clicks"] != i + 1 or les["clicks"][-1]["voxel_zyx"] != p:
                        errors.append(f"client {k} click {i}: got {les['n_clicks']} clicks, last "
                                      f"{les['clicks'][-1]}, sent {p}")
                        return
                    sent.append((p, pos))
                    if i % 5 == 4:  # viewers fetch slices between clicks
                        _png(c.get(f"/sessions/{sid}/slice/axial/{p[0]}?overlay=1"))
                results[k] = {"sid": sid, "sent": sent, "state": c.get(f"/sessions/{sid}").json()}
        except Exception as e:  # noqa: BLE001
            errors.append(f"client {k}: {type(e).__name__}: {e}")

    def saboteur() -> None:
        with httpx.Client(base_url=base, timeout=120, headers=CLIENT_HEADERS) as c:
            sid = _open(c, cases[0]["rel"])
            for _ in range(10):
                r = c.post(f"/sessions/{sid}/clicks", json={"point": [999, 0, 0]})
                assert r.status_code == 422
                r = c.post(f"/sessions/{sid}/clicks", json={"point": cases[0]["point"], "positive": False})
                assert r.status_code == 422 and "first click" in r.json()["detail"]

    t0 = time.monotonic()
    threads = [threading.Thread(target=client_run, args=(k,)) for k in range(N_CLIENTS)]
    threads.append(threading.Thread(target=saboteur))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=CONCURRENT_TIME_LIMIT_S)
    elapsed = time.monotonic() - t0
    assert not errors, "\n".join(errors)
    assert elapsed < CONCURRENT_TIME_LIMIT_S, f"{N_CLIENTS} x {CLICKS_PER_CLIENT} clicks took {elapsed:.0f} s"
    assert sorted(results) == list(range(N_CLIENTS))
    assert len({r["sid"] for r in results.values()}) == N_CLIENTS
    for k, res in results.items():
        st = res["state"]
        assert st["status"] == "ready" and st["image"]["name"] == cases[k]["rel"]
        assert [l["lesion_id"] for l in st["lesions"]] == [1]
        got = [(c["voxel_zyx"], c["positive"]) for c in st["lesions"][0]["clicks"]]
        assert got == [(list(map(float, p)), pos) for p, pos in res["sent"]], f"client {k}: clicks differ"


# --------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("path, status, words", [
    ("../Dataset990_TestPhantom/imagesTr/case_0000_0000.nii.gz", 403, "'..'"),
    ("imagesTr/../../../etc/passwd", 403, "'..'"),
    ("/etc/passwd", 400, "absolute path"),
    ("escape.nii.gz", 403, "outside the data folder"),
    ("escape_dir/secret.nii.gz", 403, "outside the data folder"),
    ("imagesTr/nope.nii.gz", 404, "not found"),
])
def test_paths_outside_the_data_folders_are_refused(client, path, status, words):
    sid = client.post("/sessions").json()["session_id"]
    r = client.post(f"/sessions/{sid}/open", json={"path": path})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.get(f"/sessions/{sid}").json()["status"] == "empty"


def test_file_listing_and_inside_symlinks(client):
    files = client.get("/files").json()["files"]
    paths = {(f["data_dir"], f["path"]) for f in files}
    assert (1, "sub/inside.nii.gz") in paths and (0, "imagesTr/case_0000_0000.nii.gz") in paths
    assert not any("escape" in p for _, p in paths)  # links leaving the folder are not offered
    sid = client.post("/sessions").json()["session_id"]
    r = client.post(f"/sessions/{sid}/open", params={"wait": True}, json={"path": "sub/inside.nii.gz", "data_dir": 1})
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_uploads_refused(client, tmp_path):
    sid = client.post("/sessions").json()["session_id"]
    r = client.post(f"/sessions/{sid}/upload", params={"filename": "big.nii.gz"}, content=b"\0" * (2 * 2**20))
    assert r.status_code == 413 and "limit is 1 MiB" in r.json()["detail"]
    r = client.post(f"/sessions/{sid}/upload", params={"filename": "notes.txt"}, content=b"hello")
    assert r.status_code == 415 and ".nii.gz" in r.json()["detail"]
    r = client.post(f"/sessions/{sid}/upload", params={"filename": "junk.nii.gz", "wait": True}, content=b"junk")
    assert r.status_code == 422 and "junk.nii.gz" in r.json()["detail"] and "not a readable image" in r.json()["detail"]
    assert str(tmp_path.anchor) + "tmp" not in r.json()["detail"]  # no server path in the message
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.nii.gz", b"x")
    r = client.post(f"/sessions/{sid}/upload", params={"filename": "slip.zip", "wait": True}, content=buf.getvalue())
    assert r.status_code == 422 and "outside its folder" in r.json()["detail"]
    st = client.get(f"/sessions/{sid}").json()
    assert st["status"] == "error"
    r = client.post(f"/sessions/{sid}/clicks", json={"point": [1, 1, 1]})
    assert r.status_code == 409 and "could not be opened" in r.json()["detail"]


def test_token_required(token_base):
    with httpx.Client(base_url=token_base, timeout=30, headers=CLIENT_HEADERS) as c:
        r = c.post("/sessions")
        assert r.status_code == 401 and "needs a token" in r.json()["detail"]
        r = c.post("/sessions", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong token"
        assert c.get("/info", params={"token": "nope"}).status_code == 401
        assert c.post("/sessions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
        assert c.get("/info", headers={"X-ISRG-Token": TOKEN}).status_code == 200
        # the token is never taken from a URL (it would end up in access logs and histories)
        assert c.get("/files", params={"token": TOKEN}).status_code == 401
        assert c.get("/").status_code == 200 and "<canvas" in c.get("/").text  # the page itself is open
        assert c.get("/static/app.js").status_code == 200


def test_unknown_session_and_bad_requests(client, cases):
    for method, path in [("GET", "/sessions/nope"), ("POST", "/sessions/nope/undo"),
                         ("GET", "/sessions/nope/slice/axial/0"), ("GET", "/sessions/nope/export/report.json")]:
        r = client.request(method, path)
        assert r.status_code == 404 and "unknown session 'nope'" in r.json()["detail"], (method, path, r.text)
    case = cases[2]
    sid = _open(client, case["rel"])
    shape = case["hu"].shape
    r = client.post(f"/sessions/{sid}/clicks", json={"point": [shape[0] + 5, 1, 1]})
    assert r.status_code == 422 and "outside the image" in r.json()["detail"] and case["rel"] in r.json()["detail"]
    r = client.post(f"/sessions/{sid}/clicks", json={"point": [1e6, 0, 0], "space": "world"})
    assert r.status_code == 422 and "outside the image" in r.json()["detail"]
    r = client.post(f"/sessions/{sid}/clicks", json={"point": [1, 2]})
    assert r.status_code == 422
    r = client.get(f"/sessions/{sid}/slice/axial/{shape[0]}")
    assert r.status_code == 422 and f"0..{shape[0] - 1}" in r.json()["detail"]
    r = client.get(f"/sessions/{sid}/slice/axial/0?window=custom&level=10")
    assert r.status_code == 422 and "width" in r.json()["detail"]
    r = client.get(f"/sessions/{sid}/slice/axial/0?window=liver")
    assert r.status_code == 422 and "unknown window" in r.json()["detail"]
    r = client.get(f"/sessions/{sid}/lesions/1/report")
    assert r.status_code == 409 and "no mask yet" in r.json()["detail"]
    r = client.post(f"/sessions/{sid}/undo")
    assert r.status_code == 422 and "nothing to undo" in r.json()["detail"]
    # a world click inside works (the image centre in mm)
    centre = case["image"].TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in case["image"].GetSize()])
    r = client.post(f"/sessions/{sid}/clicks", json={"point": list(centre), "space": "world"})
    assert r.status_code == 200
    assert r.json()["lesion"]["clicks"][0]["voxel_zyx"] == pytest.approx([(s - 1) / 2 for s in shape])
    paths = client.get("/openapi.json").json()["paths"]
    for p in ["/sessions", "/sessions/{sid}/open", "/sessions/{sid}/upload", "/sessions/{sid}/clicks",
              "/sessions/{sid}/slice/{plane}/{index}", "/sessions/{sid}/lesions/{lid}/attributes/{name}",
              "/sessions/{sid}/export/dicom.zip"]:
        assert p in paths


def test_idle_sessions_expire_busy_ones_stay(app, client, cases):
    store = app.state.store
    idle = _open(client, cases[3]["rel"])
    busy = _open(client, cases[4]["rel"])
    entry = store.get(busy)
    later = time.monotonic() + store.ttl_s + 1
    with entry.lock:  # a request in progress
        dropped = store.sweep(now=later)
    assert idle in dropped and busy not in dropped
    r = client.get(f"/sessions/{idle}")
    assert r.status_code == 404 and "expired" in r.json()["detail"]
    assert client.get(f"/sessions/{busy}").json()["status"] == "ready"


def test_serve_refuses_exposed_host_without_token(capsys, debug_model):
    import argparse

    from nnunet_isrg.server.cli import add_serve_arguments, is_loopback, run_serve_from_args

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    args = p.parse_args(["--model", str(debug_model), "--host", "0.0.0.0"])
    args.token = None  # independent of an ISRG_TOKEN in the environment
    assert run_serve_from_args(args) == 2
    assert "refusing to bind to 0.0.0.0 without a token" in capsys.readouterr().err


def test_boxes_scribbles_and_lassos_through_the_api(client, cases):
    """POST /sessions/{sid}/prompts takes the three kinds (a discriminated body), the lesion lists them,
    undo takes the last back, and a malformed prompt is a 422 naming the field."""
    case = cases[0]
    sid = _open(client, case["rel"])
    z, y, x = case["point"]
    r = client.post(f"/sessions/{sid}/prompts", json={"kind": "box", "corners": [[z - 3, y - 4, x - 4],
                                                                                  [z + 3, y + 4, x + 4]]})
    assert r.status_code == 200, r.text
    lesion = r.json()["lesion"]
    assert lesion["prompts"][0]["kind"] == "box" and lesion["n_voxels"] >= 7 * 9 * 9
    r = client.post(f"/sessions/{sid}/prompts", json={"kind": "scribble", "points": [[z, y, x - 8], [z, y, x + 8]],
                                                      "positive": False})
    assert r.status_code == 200, r.text
    r = client.post(f"/sessions/{sid}/prompts", json={"kind": "lasso", "slice_axis": "z", "slice_index": z,
                                                      "polygon": [[y - 2, x - 2], [y - 2, x + 2], [y + 2, x + 2]]})
    assert r.status_code == 200
    assert [p["kind"] for p in r.json()["lesion"]["prompts"]] == ["box", "scribble", "lasso"]
    undone = client.post(f"/sessions/{sid}/undo").json()["lesion"]
    assert [p["kind"] for p in undone["prompts"]] == ["box", "scribble"]
    for body, field in [({"kind": "box", "corners": [[1, 2, 3]]}, "corners"),
                        ({"kind": "lasso", "slice_axis": "w", "slice_index": 1, "polygon": [[1, 1]] * 3}, "slice_axis"),
                        ({"kind": "circle"}, "kind")]:
        r = client.post(f"/sessions/{sid}/prompts", json=body)
        assert r.status_code == 422 and field in r.text, r.text
    r = client.post(f"/sessions/{sid}/prompts", json={"kind": "lasso", "slice_axis": "z", "slice_index": 999,
                                                      "polygon": [[1, 1], [1, 3], [3, 3]]})
    assert r.status_code == 422 and "lasso slice 999 is outside axis z" in r.json()["detail"]
