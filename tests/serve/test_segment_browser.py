"""The page's mask makers in headless Chromium (Debian's package, driven by Playwright), on a server with a LaMa
eraser (the default), a Segment Anything and a CLIPSeg engine: the Click tool's left and right clicks make the mask
the page holds (its mask canvas, what /v1/inpaint receives) equal, pixel for pixel, to SamEngine.segment of those
clicks in picture pixels; the brush then edits that mask and the eraser erases exactly it; "Mask from text" gives
ClipSegEngine.segment's mask; mask makers are not offered as models to run."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from inpaintrt.sample import sample_picture  # noqa: E402
from serve_helpers import running_server  # noqa: E402
from browser_helpers import BLOB_AS_BASE64, decoded, open_page, paint, to_screen  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)")
SIZE = (100, 76)
CLICKS = [((30, 40), "left"), ((62, 25), "right")]  # picture pixels, and the mouse button


@pytest.fixture(scope="module")
def server(eraser_engine_dir, sam_engine_dir, clipseg_engine_dir):  # noqa: F811
    with running_server(eraser_engine_dir, "--engine", str(sam_engine_dir), "--engine", str(clipseg_engine_dir)) as s:
        yield s


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = open_page(browser, server, 1280, 800)
        page.wait_for_function("() => window.inpaintrt.state.models")
        path = tmp_path_factory.mktemp("segment-page") / "input.png"
        source().save(path)
        page.set_input_files("#image-file", str(path))
        page.wait_for_selector("body[data-ready='1']")
        yield page
        browser.close()


@pytest.fixture(scope="module")
def engines(eraser_engine_dir, sam_engine_dir, clipseg_engine_dir):  # noqa: F811
    from inpaintrt import Engine

    return {name: Engine.load(path) for name, path in
            (("eraser", eraser_engine_dir), ("sam", sam_engine_dir), ("clipseg", clipseg_engine_dir))}


def source() -> Image.Image:
    return sample_picture(*SIZE)[0]


def page_mask(page) -> np.ndarray:
    """The mask the page would send with its next job (white = repaint), as 0 / 255."""
    return decoded(page.evaluate(BLOB_AS_BASE64, "mask"))[..., 0]


def click(page, x: int, y: int, button: str, drawn: int) -> None:
    """A click at the centre of picture pixel (x, y); returns once the page has drawn its `drawn`-th mask."""
    page.mouse.click(*to_screen(page, x + 0.5, y + 0.5), button=button)
    page.wait_for_function(f"() => window.inpaintrt.maskMakers.made === {drawn}", timeout=30_000)


def test_mask_makers_are_tools_not_models(page, eraser_engine_dir):
    assert [o.get_attribute("value") for o in page.locator("#model option").all()] == [eraser_engine_dir.name]
    assert page.locator("#tool-click").is_visible() and page.locator("#mask-from-text").is_visible()
    assert page.input_value("#mode") == "erase", "the default engine, the eraser, runs the jobs"


def test_clicks_make_the_engines_mask_and_the_brush_edits_it(page, engines):
    page.click("#tool-click")
    points, labels = [], []
    for drawn, ((x, y), button) in enumerate(CLICKS, start=1):
        click(page, x, y, button, drawn)
        points.append([x, y])
        labels.append(1 if button == "left" else 0)
        want = np.asarray(engines["sam"].segment(source(), points=points, labels=labels).mask_image())
        assert np.array_equal(page_mask(page), want), f"the mask of clicks {points} with labels {labels}"
    made = page_mask(page)
    assert 0 < (made == 255).mean() < 1 and page.locator("#click-count").inner_text() == "2 clicks (1 taking away)"
    prevented = page.evaluate("() => !document.getElementById('view').dispatchEvent("
                              "new MouseEvent('contextmenu', {bubbles: true, cancelable: true}))")
    assert prevented, "a right click on the picture is a point, not a context menu"

    page.click("#tool-brush")
    page.locator("#brush-size").fill("6")
    row = int(np.argmin((made == 255).sum(axis=1)))  # the row the mask covers least: the stroke shows there
    paint(page, [(10, row), (90, row)])
    edited = page_mask(page)
    assert (edited[made == 255] == 255).all(), "the brush adds to the made mask"
    assert (edited[row, 15:86] == 255).all() and (edited[made == 0] == 255).sum() > 50
    far = np.abs(np.arange(SIZE[1]) - row)[:, None] > 8
    assert np.array_equal(edited[far.repeat(SIZE[0], 1)], made[far.repeat(SIZE[0], 1)]), "and changes only the stroke"
    assert page.locator("#click-count").inner_text() == "", "painting ends the clicked object"

    page.click("#run")  # Erase: the default engine gets exactly the mask on the canvas
    page.wait_for_selector("body[data-result]", timeout=60_000)
    result = decoded(page.evaluate(BLOB_AS_BASE64, "result"))
    want = engines["eraser"].inpaint(source(), Image.fromarray(edited), progress=False).images[0]
    assert np.array_equal(result, np.asarray(want.convert("RGB")))
    assert page.errors == []


def test_mask_from_text_is_clipsegs_mask(page, engines):
    page.click("#hide-result")
    page.click("#clear")
    made = page.evaluate("() => window.inpaintrt.maskMakers.made")
    page.fill("#segment-text", "the sky")
    page.fill("#segment-threshold", "0.45")
    page.click("#mask-from-text")
    page.wait_for_function(f"() => window.inpaintrt.maskMakers.made === {made + 1}", timeout=30_000)
    want = np.asarray(engines["clipseg"].segment(source(), text="the sky", threshold=0.45).mask_image())
    got = page_mask(page)
    assert np.array_equal(got, want) and (got == 255).any()
    page.fill("#segment-text", "")
    page.press("#segment-text", "Enter")  # asks for the mask, not the form's run
    assert "Say what to mask" in page.locator("#status").inner_text()
    assert page.errors == []
