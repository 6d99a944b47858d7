"""The viewer page in real headless Chromium (Debian's ``chromium``, driven by Playwright's Python
package with that executable; no ``playwright install`` download): open a phantom case, scroll to the
lesion, click it, see the overlay and the report, correct, override an attribute, export, and save a
screenshot to ``test-artifacts/viewer.png``.

Needs: ``apt-get install -y chromium`` and ``pip install playwright`` (skipped with that reason otherwise).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("ISRG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed "
                                                              "(pip install playwright; no browser download needed)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"Chromium not found at {CHROMIUM}: install Debian's package (apt-get install -y chromium) or set "
                f"ISRG_CHROMIUM to a Chromium executable", allow_module_level=True)


def _lesion_case(phantom_raw: Path) -> tuple[str, np.ndarray, list[int]]:
    """The phantom case with the largest lesion: path relative to the raw folder, mask, interior point."""
    from scipy.ndimage import distance_transform_edt

    best = None
    for img in sorted((phantom_raw / "imagesTr").glob("*_0000.nii.gz")):
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_raw / "labelsTr" / (img.name[:-12] + ".nii.gz")))) > 0
        if best is None or lab.sum() > best[1].sum():
            best = (img.relative_to(phantom_raw).as_posix(), lab)
    d = distance_transform_edt(best[1])
    return best[0], best[1], [int(v) for v in np.unravel_index(np.argmax(d), d.shape)]


@pytest.fixture(scope="module")
def viewer_data(request) -> tuple:
    """(model, raw dataset): ISRG_VIEWER_MODEL / ISRG_VIEWER_DATA (a trained model folder and its raw
    phantom dataset, used to make the README's screenshot), else the debug model's plans with a
    click-driven stand-in network, whose masks are known to be non-empty."""
    model, data = os.environ.get("ISRG_VIEWER_MODEL"), os.environ.get("ISRG_VIEWER_DATA")
    if model and data:
        return Path(model), Path(data)
    from stand_ins import stand_in_model

    return stand_in_model(request.getfixturevalue("debug_model")), request.getfixturevalue("phantom_raw")


@pytest.fixture(scope="module")
def server(viewer_data):
    from nnunet_isrg.server.app import create_app, serve_in_background

    torch.set_num_threads(1)
    app = create_app(viewer_data[0], data_dirs=[viewer_data[1]])
    with serve_in_background(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


def _canvas_rgb(page, plane: str) -> np.ndarray:
    data = page.evaluate("""(plane) => {
        const c = document.getElementById('canvas-' + plane);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        return {w: c.width, h: c.height, px: Array.from(d.data)};
    }""", plane)
    return np.asarray(data["px"], np.uint8).reshape(data["h"], data["w"], 4)[..., :3]


def _wait_idle(page, extra: str = "true") -> None:
    page.wait_for_function(f"document.body.dataset.busy === undefined && ({extra})", timeout=60_000)


def _open_case(page, rel: str) -> None:
    """Opens the case ``rel`` from the data folder in a ready page; the page polls until it is prepared."""
    page.select_option("#file-select", value=json.dumps([0, rel], separators=(",", ":")))
    page.click("#open-btn")
    page.wait_for_function(f"document.body.dataset.image === {json.dumps(rel)}", timeout=60_000)
    _wait_idle(page, "document.body.dataset.revision !== undefined")


def _ready_page(browser, server: str, errors: list, **kwargs):
    """A new page on the viewer, ready, whose script errors go to ``errors``."""
    page = browser.new_page(viewport={"width": 1600, "height": 960}, **kwargs)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page


def _open_and_click(page, rel: str, point, then: str = "refreshLesions()") -> None:
    """Opens the case ``rel`` from the data folder in a ready page and sends one positive click at
    ``point`` (z, y, x) through the page's own API helper, then runs ``then`` in the page."""
    _open_case(page, rel)
    sid = page.evaluate("state.sid")
    page.evaluate(f"api('POST', 'sessions/{sid}/clicks', {{point: {list(point)}, positive: true}}).then(() => {then})")


def test_viewer_click_report_override_export(server, browser, viewer_data, tmp_path):
    rel, mask, (z, y, x) = _lesion_case(viewer_data[1])
    errors: list[str] = []
    page = _ready_page(browser, server, errors, accept_downloads=True)
    _open_case(page, rel)
    shape = mask.shape
    assert page.inner_text("#views .view[data-plane='axial'] .slice-label") == f"z {shape[0] // 2 + 1}/{shape[0]}"

    # scroll the axial view with the mouse wheel to the lesion's slice
    canvas = page.locator("#canvas-axial")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(abs(z - shape[0] // 2)):
        page.mouse.wheel(0, 100 if z > shape[0] // 2 else -100)
    page.wait_for_function(f"document.querySelector(\"#views .view[data-plane='axial'] .slice-label\").textContent"
                           f" === 'z {z + 1}/{shape[0]}'", timeout=10_000)
    _wait_idle(page)
    before = _canvas_rgb(page, "axial")
    red = lambda rgb: (rgb[..., 0].astype(int) - rgb[..., 1] > 40) & (rgb[..., 0].astype(int) - rgb[..., 2] > 40)
    assert not red(before).any()  # no overlay yet

    # left click on the lesion: overlay, lesion list and report fill
    sx, sy = box["width"] / shape[2], box["height"] / shape[1]
    page.mouse.click(box["x"] + (x + 0.5) * sx, box["y"] + (y + 0.5) * sy)
    page.wait_for_selector("#report-panel[data-lesion='1']", timeout=60_000)
    _wait_idle(page)
    assert not errors, errors
    assert page.locator("#error").is_hidden()

    # the overlay on the canvas against the server's label map, voxel centre by voxel centre
    sid = page.evaluate("state.sid")
    import httpx

    labels_png = httpx.get(f"{server}/sessions/{sid}/export/labels.nii.gz", timeout=60)
    (tmp_path / "labels.nii.gz").write_bytes(labels_png.content)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    after = _canvas_rgb(page, "axial")
    h, w = after.shape[:2]
    rows = ((np.arange(shape[1]) + 0.5) * h / shape[1]).astype(int)
    cols = ((np.arange(shape[2]) + 0.5) * w / shape[2]).astype(int)
    centres = after[rows][:, cols]                       # (Y, X, 3) canvas colour at each voxel centre
    keep = np.ones(shape[1:], bool)                      # away from the crosshair and the click marker
    keep[max(0, y - 1):y + 2, :] = False
    keep[:, max(0, x - 1):x + 2] = False
    inside = labels[z] == 1
    assert inside.any(), "the model's mask misses the clicked slice"
    assert red(centres)[inside & keep].all()
    grey = centres[~inside & keep].astype(int)
    assert (grey.max(axis=1) - grey.min(axis=1) <= 2).all()

    rows_lesions = page.locator("#lesion-table tbody tr")
    assert rows_lesions.count() == 1 and "1 (current)" in rows_lesions.first.inner_text()
    text = page.inner_text("#report-text")
    assert text.endswith(".") and ";" in text
    assert page.locator("#attr-table tbody tr[data-attribute]").count() == 5
    assert "mL" in page.inner_text("#measure-table")

    # override the density with a class the model did not choose
    density = page.locator("#attr-table select[data-attribute='density']")
    model_label = density.locator("option").first.inner_text()
    choice = next(v for v in page.evaluate("state.info.schema.density") if not model_label.startswith(v))
    density.select_option(choice)
    page.wait_for_function("document.querySelector(\"#attr-table tr[data-attribute='density'] td:last-child\")"
                           ".textContent === 'reader'", timeout=30_000)
    _wait_idle(page)
    assert f"{choice} lesion" in page.inner_text("#report-text")

    # a negative click (right button) elsewhere on the slice corrects the lesion
    page.mouse.click(box["x"] + 2.5 * sx, box["y"] + 2.5 * sy, button="right")
    page.wait_for_function("document.querySelector('#lesion-table tbody tr td:nth-child(3)').textContent === '2'",
                           timeout=60_000)
    _wait_idle(page, "document.getElementById('report-panel').dataset.lesion === '1'")
    # Ctrl+click only moves the crosshair (back onto the lesion): no click is added
    page.keyboard.down("Control")
    page.mouse.click(box["x"] + (x + 0.5) * sx, box["y"] + (y + 0.5) * sy)
    page.keyboard.up("Control")
    page.wait_for_function(f"document.querySelector(\"#views .view[data-plane='sagittal'] .slice-label\")"
                           f".textContent === 'x {x + 1}/{shape[2]}'", timeout=10_000)
    _wait_idle(page)
    assert page.locator("#lesion-table tbody tr td:nth-child(3)").inner_text() == "2"

    # export: the JSON keeps the reader's override, the mask is a NIfTI of the image's grid
    with page.expect_download() as dl:
        page.click("#exp-json")
    doc = json.loads(Path(dl.value.path()).read_text())
    assert doc["lesions"][0]["attributes"]["density"]["value"] == choice
    assert doc["lesions"][0]["attributes"]["density"]["source"] == "reader"
    assert len(doc["lesions"][0]["clicks"]) == 2 and doc["lesions"][0]["clicks"][1]["positive"] is False
    with page.expect_download() as dl:
        page.click("#exp-labels")
    assert dl.value.suggested_filename.endswith("_lesions.nii.gz")
    dl.value.save_as(tmp_path / dl.value.suggested_filename)
    assert sitk.ReadImage(str(tmp_path / dl.value.suggested_filename)).GetSize() == tuple(reversed(shape))
    assert not errors, errors

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)
    assert (ARTIFACTS / "viewer.png").stat().st_size > 10_000
    page.close()


def test_viewer_shows_server_errors(server, browser):
    """A refused request shows the server's message in the page (here: a token-less page is fine, but a
    path outside the data folders is not offered, so ask for one directly)."""
    page = browser.new_page()
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.evaluate("""() => { const s = document.getElementById('file-select');
                             s.add(new Option('evil', JSON.stringify([0, '../../etc/passwd']))); s.value = s.options[s.options.length - 1].value; }""")
    page.click("#open-btn")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    msg = page.inner_text("#error-text")
    assert "'..'" in msg and "HTTP 403" in msg
    page.close()


def test_viewer_with_a_token_keeps_it_out_of_urls_and_logs(viewer_data, browser, tmp_path):
    """A server with a token, opened as /#token=T (the fragment never reaches the server): the page sends
    the token in a header, downloads exports through fetch, and no access log line holds it."""
    import logging

    from nnunet_isrg.server.app import create_app, serve_in_background

    token = "br0wser-t0ken-never-logged"
    rel, mask, (z, y, x) = _lesion_case(viewer_data[1])
    app = create_app(viewer_data[0], data_dirs=[viewer_data[1]], token=token)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    with serve_in_background(app, log_level="info") as url:
        logging.getLogger("uvicorn.access").addHandler(handler)
        try:
            page = browser.new_page(accept_downloads=True)
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            page.goto(f"{url}/#token={token}")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            assert token not in page.url  # taken out of the address bar
            _open_and_click(page, rel, (z, y, x))
            page.wait_for_function("!document.getElementById('exp-json').disabled", timeout=60_000)
            with page.expect_download() as dl:
                page.click("#exp-json")
            doc = json.loads(Path(dl.value.path()).read_text())
            assert len(doc["lesions"]) == 1 and dl.value.suggested_filename.endswith("_report.json")
            page.close()
        finally:
            logging.getLogger("uvicorn.access").removeHandler(handler)
    assert any("/export/report.json" in line for line in lines) and any("/clicks" in line for line in lines), lines
    assert not [line for line in lines if token in line], lines
    assert not [u for u in requested if token in u], requested


def test_viewer_greys_out_attributes_the_model_did_not_learn(viewer_data, browser):
    """A model whose record says it never had labels for two attributes, and few for a third: the
    report panel greys those two out with the reason, offers no model class for them, marks the low
    support, and still lets the reader set one."""
    import dataclasses

    from nnunet_isrg.attributes import LOW_SUPPORT_CASES
    from nnunet_isrg.inference.model_loading import LoadedModel
    from nnunet_isrg.server.app import create_app, serve_in_background

    if not isinstance(viewer_data[0], LoadedModel):
        pytest.skip("needs the stand-in model (ISRG_VIEWER_MODEL points at a trained folder)")
    support = {"shape": 40, "invasion": 0, "density": 40, "heterogeneity": 0, "surface": LOW_SUPPORT_CASES - 15}
    model = dataclasses.replace(viewer_data[0], attribute_support=support)
    rel, mask, (z, y, x) = _lesion_case(viewer_data[1])
    with serve_in_background(create_app(model, data_dirs=[viewer_data[1]])) as url:
        page = browser.new_page(viewport={"width": 1600, "height": 960})
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        _open_and_click(page, rel, (z, y, x), then="refreshLesions().then(() => loadReport())")
        page.wait_for_selector("#report-panel[data-lesion='1']", timeout=60_000)
        _wait_idle(page)
        rows = {name: page.locator(f"#attr-table tr[data-attribute='{name}']") for name in support}
        for name in ("invasion", "heterogeneity"):
            assert "not-assessed" in rows[name].get_attribute("class")
            assert rows[name].get_attribute("title").startswith("not assessed by the model")
            first_option = rows[name].locator("select option").first.inner_text()
            assert first_option == "not assessed by the model"
            opacity = rows[name].locator("td").first.evaluate("td => getComputedStyle(td).opacity")
            assert float(opacity) < 1
        for name in ("shape", "density"):
            assert "not-assessed" not in (rows[name].get_attribute("class") or "")
            assert rows[name].locator("select option").first.inner_text().endswith("(model)")
        assert "low support (5 cases)" in rows["surface"].locator("td").nth(3).inner_text()
        assert "Heterogeneous" not in page.inner_text("#report-text")  # an untrained class is no finding
        # the reader may still set it
        rows["heterogeneity"].locator("select").select_option("Homogeneous")
        page.wait_for_function("document.querySelector(\"#attr-table tr[data-attribute='heterogeneity'] td:nth-child(4)\")"
                               ".textContent === 'reader'", timeout=30_000)
        assert "Homogeneous" in page.inner_text("#report-text")
        page.close()


def test_viewer_draws_a_box_a_scribble_and_a_lasso_and_the_mask_appears(server, browser, viewer_data):
    """Drag on the axial view: a box (the mask appears, the box is drawn and listed), Alt+drag a
    negative scribble, then the lasso tool; each goes to POST /prompts and comes back in the lesion."""
    rel, mask, (z, y, x) = _lesion_case(viewer_data[1])
    errors: list[str] = []
    page = _ready_page(browser, server, errors)
    _open_case(page, rel)
    page.evaluate(f"setSlice('axial', {z})")
    _wait_idle(page)
    canvas = page.locator("#canvas-axial")
    box = canvas.bounding_box()
    shape = mask.shape
    sx, sy = box["width"] / shape[2], box["height"] / shape[1]
    at = lambda yy, xx: (box["x"] + (xx + 0.5) * sx, box["y"] + (yy + 0.5) * sy)  # noqa: E731

    def drag(points, button="left", modifiers=()):
        for key in modifiers:
            page.keyboard.down(key)
        page.mouse.move(*at(*points[0]))
        page.mouse.down(button=button)
        for p in points[1:]:
            page.mouse.move(*at(*p), steps=4)
        page.mouse.up(button=button)
        for key in modifiers:
            page.keyboard.up(key)

    drag([(y - 4, x - 4), (y + 4, x + 4)])                       # a box around the lesion's middle
    page.wait_for_selector("#report-panel[data-lesion='1']", timeout=60_000)
    _wait_idle(page)
    prompts = page.evaluate("state.lesions[0].prompts")
    assert prompts[0]["kind"] == "box" and prompts[0]["corners_voxel_zyx"] == [[z, y - 4, x - 4], [z, y + 4, x + 4]]
    rgb = _canvas_rgb(page, "axial")
    red = (rgb[..., 0].astype(int) - rgb[..., 1] > 40) & (rgb[..., 0].astype(int) - rgb[..., 2] > 40)
    cy, cx = int((y + 0.5) * sy), int((x + 0.5) * sx)
    assert red[cy - 3:cy + 4, cx - 3:cx + 4].any()               # the mask under the box
    green = (rgb[..., 1].astype(int) - rgb[..., 0] > 80) & (rgb[..., 1].astype(int) - rgb[..., 2] > 40)
    assert green.any()                                           # the box outline

    drag([(y - 2, x - 6), (y - 2, x + 6)], button="right", modifiers=("Alt",))   # a negative scribble
    page.wait_for_function("state.lesions[0].prompts.length === 2", timeout=60_000)
    page.click("#lasso-btn")
    assert page.get_attribute("#lasso-btn", "aria-pressed") == "true"
    drag([(y + 1, x - 3), (y + 1, x + 3), (y + 5, x + 3), (y + 5, x - 3)])
    page.wait_for_function("state.lesions[0].prompts.length === 3", timeout=60_000)
    _wait_idle(page)
    kinds = page.evaluate("state.lesions[0].prompts.map(p => [p.kind, p.positive])")
    assert kinds == [["box", True], ["scribble", False], ["lasso", True]]
    assert not errors, errors
    assert page.locator("#error").is_hidden()
    page.close()
