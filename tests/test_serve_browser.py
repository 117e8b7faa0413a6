"""The web page in headless Chromium (Debian's package, driven by Playwright): upload a picture,
paint a stroke with the mouse, run, and check the result keeps every unpainted pixel."""
from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from inpaintrt.sample import sample_picture  # noqa: E402
from serve_helpers import running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)")

BLOB_AS_BASE64 = """async (which) => {
  const blob = which === "mask" ? await window.inpaintrt.editor.maskBlob() : window.inpaintrt.state.current.blob;
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let text = ""; for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}"""


def decoded(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


@pytest.fixture(scope="module")
def server(engines):
    with running_server(engines[9]) as s:
        yield s


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 640})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.goto(server.url + "/")
        yield page
        browser.close()


def to_screen(page, x: float, y: float) -> tuple[float, float]:
    """Client coordinates of picture pixel (x, y) under the editor's current zoom and pan."""
    box = page.locator("#view").bounding_box()
    view = page.evaluate("() => window.inpaintrt.editor.view")
    return box["x"] + view["x"] + x * view["scale"], box["y"] + view["y"] + y * view["scale"]


def paint(page, points):
    page.mouse.move(*to_screen(page, *points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*to_screen(page, *point), steps=8)
    page.mouse.up()


def test_paint_run_and_keep_unmasked_pixels(page, tmp_path):
    source = sample_picture(192, 128)[0]  # the quick start's landscape, small
    source.save(tmp_path / "input.png")
    page.set_input_files("#image-file", str(tmp_path / "input.png"))
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#scheduler option").count() > 5, "the scheduler list comes from /v1/info"

    page.locator("#brush-size").fill("10")
    page.keyboard.press("]")  # 10 * 1.25 + 1
    assert page.evaluate("() => window.inpaintrt.editor.size") == 14
    paint(page, [(60, 70), (100, 55), (150, 85)])
    assert page.evaluate("() => window.inpaintrt.editor.hasMask()")
    page.keyboard.press("Control+z")
    assert not page.evaluate("() => window.inpaintrt.editor.hasMask()"), "undo removes the stroke"
    page.keyboard.press("Control+Shift+z")
    assert page.evaluate("() => window.inpaintrt.editor.hasMask()"), "redo brings it back"

    page.fill("#prompt", "a wooden bench")
    page.fill("#num_inference_steps", "3")
    page.click("#run")
    page.wait_for_selector("body[data-result]", timeout=120_000)
    assert page.locator("#progress").evaluate("p => p.value") == 1
    assert page.locator("#seed-used").inner_text().startswith("seed ")

    mask = decoded(page.evaluate(BLOB_AS_BASE64, "mask"))[..., 0]
    result = decoded(page.evaluate(BLOB_AS_BASE64, "result"))
    painted = mask == 255
    assert set(np.unique(mask)) == {0, 255} and 150 < painted.sum() < mask.size / 2
    assert result.shape == np.asarray(source).shape, "keep_unmasked gives the picture's own size"
    assert np.array_equal(result[~painted], np.asarray(source)[~painted]), "unpainted pixels are the input's"
    assert (result[painted] != np.asarray(source)[painted]).any(), "the stroke was repainted"
    assert page.locator("#history li").count() == 1

    page.screenshot(path=str(tmp_path / "page.png"))  # README's docs/serve-page.png is one of these
    assert (tmp_path / "page.png").stat().st_size > 10_000
    assert page.errors == []


def test_invert_clear_and_chaining(page):
    page.click("#invert")
    full = page.evaluate("() => window.inpaintrt.editor.snapshot().data.filter((v, i) => i % 4 == 3 && v > 0).length")
    assert full > 192 * 128 / 2, "invert paints what was unpainted"
    page.click("#clear")
    assert not page.evaluate("() => window.inpaintrt.editor.hasMask()")
    page.click("#undo")
    assert page.evaluate("() => window.inpaintrt.editor.hasMask()"), "clear is undoable"
    page.click("#use-result")  # the result becomes the picture, the mask stays: inpaint again
    page.wait_for_function("() => window.inpaintrt.state.pictureBlob === window.inpaintrt.state.current.blob")
    page.click("#reuse-seed")
    page.click("#run")
    page.wait_for_function("() => window.inpaintrt.state.results.length === 2", timeout=120_000)
    assert page.locator("#history li").count() == 2
    assert page.errors == []


DROP = """async (dataUrl) => {
  const blob = await (await fetch(dataUrl)).blob();
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], "dropped.png", { type: "image/png" }));
  document.getElementById("stage").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
}"""
PAINTED = "() => window.inpaintrt.editor.snapshot().data.filter((v, i) => i % 4 == 3 && v >= 128).length"


def test_drop_mask_file_eraser_and_zoom(page, tmp_path):
    import io as _io

    picture, mask = sample_picture(160, 96)
    buffer = _io.BytesIO()
    picture.save(buffer, format="PNG")
    page.evaluate(DROP, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    page.wait_for_function("() => window.inpaintrt.editor.width === 160 && window.inpaintrt.editor.height === 96")
    assert not page.evaluate("() => window.inpaintrt.editor.hasMask()"), "a new picture starts without a mask"

    mask.save(tmp_path / "mask.png")
    page.set_input_files("#mask-file", str(tmp_path / "mask.png"))
    page.wait_for_function("() => window.inpaintrt.editor.hasMask()")
    sent = decoded(page.evaluate(BLOB_AS_BASE64, "mask"))[..., 0]
    assert np.array_equal(sent, np.where(np.asarray(mask) >= 128, 255, 0)), "the mask file is sent as it was"

    before = page.evaluate(PAINTED)
    page.keyboard.press("e")
    paint(page, [(30, 58), (85, 58)])  # across the mask's ellipse
    assert 0 < page.evaluate(PAINTED) < before, "the eraser removes mask"
    page.keyboard.press("b")

    scale = page.evaluate("() => window.inpaintrt.editor.view.scale")
    page.mouse.move(*to_screen(page, 80, 48))
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"() => window.inpaintrt.editor.view.scale > {scale}")
    page.keyboard.press("0")
    assert page.evaluate("() => window.inpaintrt.editor.view.scale") == pytest.approx(scale)
    assert page.errors == []


def test_outpaint_mode_grows_the_picture_and_chains(page, tmp_path):
    source = sample_picture(96, 64)[0]
    source.save(tmp_path / "small.png")
    page.set_input_files("#image-file", str(tmp_path / "small.png"))
    page.wait_for_function("() => window.inpaintrt.editor.width === 96 && window.inpaintrt.editor.height === 64")
    page.select_option("#mode", "outpaint")
    assert page.locator("#outpaint-fields").is_visible() and not page.locator("#keep_unmasked").is_visible()
    assert page.locator("#run").inner_text() == "Outpaint"
    page.fill("#right", "32")
    page.fill("#bottom", "16")
    page.select_option("#fill", "mirror")
    page.fill("#num_inference_steps", "2")
    assert page.evaluate("() => window.inpaintrt.editor.extension") == {"left": 0, "right": 32, "top": 0, "bottom": 16}
    done = page.evaluate("() => window.inpaintrt.state.results.length")
    page.click("#run")  # no mask painted: outpaint needs none
    page.wait_for_function(f"() => window.inpaintrt.state.results.length === {done + 1}", timeout=120_000)
    result = decoded(page.evaluate(BLOB_AS_BASE64, "result"))
    assert result.shape == (64 + 16, 96 + 32, 3), "the result is the grown picture"
    kept = np.asarray(source)[:30, :62]  # farther than the overlap (32) from the new area: the input's bytes
    assert np.array_equal(result[:30, :62], kept)
    seed = page.evaluate("() => window.inpaintrt.state.current.seed")
    assert page.locator("#history li").first.inner_text().endswith(f"outpaint seed {seed}")

    page.click("#use-result")  # chaining: the grown picture becomes the input
    page.wait_for_function("() => window.inpaintrt.editor.width === 128 && window.inpaintrt.editor.height === 80")
    page.select_option("#mode", "inpaint")
    assert page.evaluate("() => window.inpaintrt.editor.extension") is None
    assert page.errors == []
