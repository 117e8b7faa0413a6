"""The web page in headless Chromium (Debian's package, driven by Playwright): upload a picture,
paint a stroke with the mouse, run, and check the result keeps every unpainted pixel and shows on the
canvas; the run button in sight at 1366x720, Ctrl+Enter, history across reloads, size and batch fields,
live previews.
INPAINTRT_SCREENSHOT_DIR=docs writes the docs' screenshots there."""
from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from inpaintrt.sample import sample_picture  # noqa: E402
from serve_helpers import running_server  # noqa: E402
from browser_helpers import (BLOB_AS_BASE64, RECORD_CANVAS, RECORD_FORMS, canvas_pixel, decoded,  # noqa: E402
                             in_view, open_page, paint, part, screenshot, to_screen)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(engines):
    with running_server(engines[9]) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, server):
    page = open_page(browser, server, 1280, 800)
    yield page
    page.close()


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
    tinted = canvas_pixel(page, 100, 55)  # on the stroke: the picture under the red mask
    page.click("#run")
    page.wait_for_selector("body[data-result]", timeout=120_000)
    assert page.locator("#progress").evaluate("p => p.value") == 1
    assert page.locator("#seed-used").inner_text().startswith("seed ")
    events = page.evaluate("() => window.inpaintrt.state.events")
    assert {e["steps"] for e in events} == {3}, "progress counts the steps asked for, not the model calls"
    assert events[-1]["steps_done"] == 3 and all(e["steps_done"] <= 3 for e in events)

    mask = decoded(page.evaluate(BLOB_AS_BASE64, "mask"))[..., 0]
    result = decoded(page.evaluate(BLOB_AS_BASE64, "result"))
    painted = mask == 255
    assert set(np.unique(mask)) == {0, 255} and 150 < painted.sum() < mask.size / 2
    assert result.shape == np.asarray(source).shape, "keep_unmasked gives the picture's own size"
    assert np.array_equal(result[~painted], np.asarray(source)[~painted]), "unpainted pixels are the input's"
    assert (result[painted] != np.asarray(source)[painted]).any(), "the stroke was repainted"
    assert page.locator("#history li").count() == 1

    # the result is on the canvas, pixel for pixel (zoom > 1 draws without smoothing); C shows the input
    for x, y in [(100, 55), (150, 85), (20, 20), (180, 120)]:
        assert canvas_pixel(page, x, y) == result[y, x].tolist()
    assert canvas_pixel(page, 100, 55) != tinted
    page.keyboard.down("c")
    assert canvas_pixel(page, 100, 55) == tinted, "holding C shows the input and its mask"
    page.keyboard.up("c")
    assert canvas_pixel(page, 100, 55) == result[55, 100].tolist()
    assert page.evaluate("() => window.inpaintrt.editor.hasMask()"), "the mask is kept for another run"

    screenshot(page, tmp_path, "serve-page.png")
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
    page.wait_for_function("() => window.inpaintrt.state.pictureBlob === window.inpaintrt.state.current.result")
    assert page.evaluate("() => window.inpaintrt.editor.overlay") is None, "the canvas shows the new input"
    page.click("#reuse-seed")
    page.uncheck("#keep_mask")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")  # runs from the prompt field
    page.wait_for_function("() => window.inpaintrt.state.results.length === 2", timeout=120_000)
    assert page.locator("#history li").count() == 2
    assert not page.evaluate("() => window.inpaintrt.editor.hasMask()"), "keep mask off: cleared after the run"
    page.click("#undo")
    assert page.evaluate("() => window.inpaintrt.editor.hasMask()"), "and undo brings it back"
    page.check("#keep_mask")
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
    assert canvas_pixel(page, 96 + 20, 64 + 8) == result[64 + 8, 96 + 20].tolist(), "the grown result is drawn"
    status = page.locator("#status").bounding_box()
    assert status["y"] + status["height"] <= 800, "the status line stays in sight in Outpaint mode"

    page.click("#use-result")  # chaining: the grown picture becomes the input
    page.wait_for_function("() => window.inpaintrt.editor.width === 128 && window.inpaintrt.editor.height === 80")
    page.select_option("#mode", "inpaint")
    assert page.evaluate("() => window.inpaintrt.editor.extension") is None
    assert page.errors == []


def test_width_height_and_batch_reach_the_server(page, tmp_path):
    sample_picture(96, 64)[0].save(tmp_path / "p.png")
    page.set_input_files("#image-file", str(tmp_path / "p.png"))
    page.wait_for_function("() => window.inpaintrt.editor.width === 96 && window.inpaintrt.editor.height === 64")
    info = page.evaluate("async () => (await (await fetch('/v1/info')).json()).model")
    assert page.get_attribute("#width", "placeholder") == str(info["default_width"]), "the model's, from /v1/info"
    paint(page, [(20, 30), (70, 30)])
    page.uncheck("#keep_unmasked")
    page.fill("#width", "48")
    page.fill("#height", "32")
    page.fill("#batch_count", "2")
    page.fill("#seed", "7")
    page.fill("#num_inference_steps", "2")
    page.evaluate(RECORD_FORMS)
    done = page.evaluate("() => window.inpaintrt.state.results.length")
    page.click("#run")
    page.wait_for_function(f"() => window.inpaintrt.state.results.length === {done + 2}", timeout=120_000)
    page.wait_for_function("() => !window.inpaintrt.state.job")
    sent = page.evaluate("() => window.sentForms")
    assert [(part(b, "width"), part(b, "height"), part(b, "seed")) for b in sent] == [("48", "32", "7"), ("48", "32", "8")]
    assert part(sent[0], "batch_count") is None, "the batch runs on the page, one job per picture"
    entries = page.evaluate("() => window.inpaintrt.state.results.slice(-2).map(e => [e.seed, e.width, e.height])")
    assert entries == [[7, 48, 32], [8, 48, 32]]
    assert decoded(page.evaluate(BLOB_AS_BASE64, "result")).shape == (32, 48, 3)

    page.check("#keep_input_size")  # the picture's size: width and height are not sent
    assert page.locator("#width").is_disabled()
    page.fill("#batch_count", "1")
    page.click("#run")
    page.wait_for_function(f"() => window.inpaintrt.state.results.length === {done + 3}", timeout=120_000)
    sent = page.evaluate("() => window.sentForms")
    assert part(sent[-1], "width") is None and part(sent[-1], "keep_input_size") == "true"
    assert page.evaluate("() => [window.inpaintrt.state.current.width, window.inpaintrt.state.current.height]") == [96, 64]
    page.uncheck("#keep_input_size")
    page.check("#keep_unmasked")
    for name in ("width", "height", "seed"):
        page.fill(f"#{name}", "")
    assert page.errors == []


def open_painted(page, tmp_path, width, height, strokes):
    """A new sample picture on the canvas, with these strokes painted on it."""
    sample_picture(width, height)[0].save(tmp_path / "p.png")
    page.set_input_files("#image-file", str(tmp_path / "p.png"))
    page.wait_for_function(f"() => window.inpaintrt.editor.width === {width} && "
                           f"window.inpaintrt.editor.height === {height} && !window.inpaintrt.editor.overlay")
    paint(page, strokes)


def test_history_survives_a_reload(page, tmp_path):
    """Its own two runs first: the page is shared, and this test must not need the others' history."""
    open_painted(page, tmp_path, 96, 64, [(20, 30), (70, 30)])
    page.fill("#num_inference_steps", "2")
    page.fill("#batch_count", "1")
    before = page.locator("#history li").count()
    for seed, prompt in ((11, "a first bench"), (12, "a second bench")):
        page.fill("#seed", str(seed))
        page.fill("#prompt", prompt)
        done = page.evaluate("() => window.inpaintrt.state.results.length")
        page.click("#run")
        page.wait_for_function(f"() => window.inpaintrt.state.results.length === {done + 1}", timeout=120_000)
        page.wait_for_function("() => !window.inpaintrt.state.job")
    count = page.locator("#history li").count()
    assert count == min(before + 2, 50)
    newest = page.evaluate("() => { const h = window.inpaintrt.history.entries; return h[h.length - 1].params; }")
    page.reload()
    page.wait_for_function(f"() => document.querySelectorAll('#history li').length === {count}")
    page.fill("#prompt", "")
    page.locator("#history li").first.click()  # the newest: shown on the canvas over its input
    page.wait_for_function("() => window.inpaintrt.editor.overlay !== null")
    result = decoded(page.evaluate(BLOB_AS_BASE64, "result"))
    assert page.evaluate("() => [window.inpaintrt.editor.width, window.inpaintrt.editor.height]") == [96, 64]
    page.click("#zoom-fit")
    page.click("#restore-params")
    assert page.input_value("#prompt") == newest["prompt"] and page.input_value("#seed") == newest["seed"]
    assert page.is_checked("#keep_input_size") == newest["keep_input_size"]
    assert result.shape == (64, 96, 3)

    page.once("dialog", lambda d: d.accept())
    page.click("#clear-history")
    page.wait_for_function("() => document.querySelectorAll('#history li').length === 0")
    page.reload()
    page.wait_for_selector("body[data-history='loaded']", state="attached")
    assert page.locator("#history li").count() == 0, "cleared for good"
    assert page.errors == []


def test_run_button_in_sight_at_1366x720(browser, server, tmp_path):
    page = open_page(browser, server, 1366, 720)
    try:
        assert page.evaluate("() => document.scrollingElement.scrollHeight") <= 720, "the page itself never scrolls"
        for selector in ("#run", "#progress", "#status"):
            assert in_view(page, selector, 1366, 720), f"{selector} is in sight without scrolling"
        sample_picture(192, 128)[0].save(tmp_path / "p.png")
        page.set_input_files("#image-file", str(tmp_path / "p.png"))
        page.wait_for_selector("body[data-ready='1']")
        paint(page, [(40, 90), (90, 80), (150, 95)])
        page.fill("#prompt", "a stone wall")
        page.fill("#num_inference_steps", "3")
        page.keyboard.press("Meta+Enter")  # Cmd+Enter on a Mac
        page.wait_for_selector("body[data-result]", timeout=120_000)
        assert page.evaluate("() => window.inpaintrt.editor.overlay !== null")
        for selector in ("#run", "#progress", "#status"):
            assert in_view(page, selector, 1366, 720)
        page.select_option("#mode", "outpaint")
        assert in_view(page, "#status", 1366, 720), "Outpaint mode's longer form too"
        page.select_option("#mode", "inpaint")
        screenshot(page, tmp_path, "serve-page-1366x720.png")
        assert page.errors == []
    finally:
        page.close()


def test_live_previews_draw_on_the_canvas_before_the_result(page, tmp_path):
    open_painted(page, tmp_path, 128, 96, [(20, 40), (100, 50)])
    page.fill("#num_inference_steps", "25")
    page.fill("#padding_mask_crop", "")
    before = page.evaluate("() => document.getElementById('view').toDataURL()")
    page.evaluate(RECORD_CANVAS)
    done = page.evaluate("() => window.inpaintrt.state.results.length")
    page.click("#run")
    page.wait_for_function(f"() => window.inpaintrt.state.results.length === {done + 1}", timeout=120_000)
    events = page.evaluate("() => window.inpaintrt.state.events")
    previews = [e["preview"] for e in events if e.get("preview")]
    assert previews and all(p.startswith("data:image/png;base64,") for p in previews)
    info = page.evaluate("async () => (await (await fetch('/v1/info')).json()).model")
    size = (info["default_height"] // 8, info["default_width"] // 8, 3)
    assert decoded(previews[-1].split(",", 1)[1]).shape == size, "one pixel per latent"
    shots = page.evaluate("() => window.canvasShots")
    kinds = [kind for kind, _ in shots]
    assert "preview" in kinds and kinds[-1] == "result" and kinds.index("preview") < kinds.index("result")
    first_preview = shots[kinds.index("preview")][1]
    assert first_preview != before and first_preview != shots[-1][1], "the preview changed the canvas first"
    assert page.evaluate("() => window.inpaintrt.state.previewsShown") >= 1
    assert page.errors == []


def test_history_keeps_the_newest_50(page):
    page.evaluate("""async () => {
      const blob = await new Promise((r) => { const c = document.createElement("canvas"); c.width = c.height = 4;
        c.toBlob(r, "image/png"); });
      const history = window.inpaintrt.history;
      for (let i = 0; i < 55; i++) {
        await history.add({ task: "inpaint", seed: 1000 + i, params: { prompt: `p${i}` }, sides: null, input: blob,
          result: blob, width: 4, height: 4, job: `fake${i}`, time: Date.now() });
      }
    }""")
    seeds = page.evaluate("() => window.inpaintrt.history.entries.map(e => e.seed)")
    assert len(seeds) == 50 and seeds[-1] == 1054 and 1000 not in seeds, "the oldest go first"
    page.reload()
    page.wait_for_selector("body[data-history='loaded']", state="attached")
    assert page.locator("#history li").count() == 50
    assert page.locator("#history li").first.inner_text().endswith("seed 1054")
    page.once("dialog", lambda d: d.accept())
    page.click("#clear-history")
    page.wait_for_function("() => document.querySelectorAll('#history li').length === 0")
    assert page.errors == []
