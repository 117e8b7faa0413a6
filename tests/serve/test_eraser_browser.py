"""The page's Erase mode in headless Chromium (Debian's package, driven by Playwright), on a server with an
eraser engine (the default) and a diffusion engine: no prompt or diffusion settings, the brush as for inpaint,
the result shown in place and equal, pixel for pixel, to EraserEngine.inpaint of the same picture and painted
mask; choosing the model switches the form between Erase and Inpaint."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from inpaintrt.sample import sample_picture  # noqa: E402
from serve_helpers import running_server  # noqa: E402
from browser_helpers import BLOB_AS_BASE64, RECORD_FORMS, canvas_pixel, decoded, open_page, paint, part  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)")

DIFFUSION_CONTROLS = ("#prompt", "#negative_prompt", "#num_inference_steps", "#guidance_scale", "#seed", "#scheduler",
                      "#width", "#batch_count", "#mask_mode", "#keep_unmasked")


@pytest.fixture(scope="module")
def server(eraser_engine_dir, engine_dir):
    with running_server(eraser_engine_dir, "--engine", str(engine_dir)) as s:
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
    page.wait_for_function("() => window.inpaintrt.state.models")  # /v1/info read: the models are in the form
    yield page
    page.close()


@pytest.fixture(scope="module")
def eraser(eraser_engine_dir):
    from inpaintrt import Engine

    return Engine.load(eraser_engine_dir)


def visible(page, selector: str) -> bool:
    return page.locator(selector).is_visible()


def test_erase_mode_shows_the_engines_picture_in_place(page, tmp_path, eraser, eraser_engine_dir):
    assert page.input_value("#model") == eraser_engine_dir.name, "the server's first engine is the default"
    assert page.input_value("#mode") == "erase" and page.locator("#run").inner_text() == "Erase"
    assert not any(visible(page, selector) for selector in DIFFUSION_CONTROLS), "no prompt, no diffusion settings"
    assert visible(page, "#hd_strategy") and visible(page, "#mask_grow"), "the eraser's own settings and mask edits"

    source = sample_picture(100, 76)[0]  # not multiples of LaMa's 8: the engine pads and crops back
    source.save(tmp_path / "input.png")
    page.set_input_files("#image-file", str(tmp_path / "input.png"))
    page.wait_for_selector("body[data-ready='1']")
    page.locator("#brush-size").fill("12")
    paint(page, [(30, 40), (55, 30), (80, 50)])
    page.evaluate(RECORD_FORMS)
    page.click("#run")
    page.wait_for_selector("body[data-result]", timeout=120_000)

    sent = page.evaluate("() => window.sentForms")[-1]
    assert part(sent, "model") == eraser_engine_dir.name and part(sent, "hd_strategy") == "crop"
    assert not {"prompt", "num_inference_steps", "guidance_scale", "seed", "keep_unmasked"} & set(sent), sent
    mask = decoded(page.evaluate(BLOB_AS_BASE64, "mask"))[..., 0]
    result = decoded(page.evaluate(BLOB_AS_BASE64, "result"))
    painted = mask == 255
    assert set(np.unique(mask)) == {0, 255} and 100 < painted.sum() < mask.size / 2
    reference = eraser.inpaint(source, Image.fromarray(mask), progress=False).images[0]
    assert np.array_equal(result, np.asarray(reference.convert("RGB"))), "the page shows EraserEngine.inpaint's picture"
    assert np.array_equal(result[~painted], np.asarray(source)[~painted])

    for x, y in [(55, 30), (80, 50), (5, 5), (95, 70)]:  # in place, pixel for pixel (zoom > 1: no smoothing)
        assert canvas_pixel(page, x, y) == result[y, x].tolist()
    assert page.locator("#seed-used").inner_text() == "" and not visible(page, "#reuse-seed"), "an eraser uses no seed"
    assert page.locator("#history li").first.inner_text().endswith("erase")
    assert page.errors == []


def test_choosing_the_model_switches_the_form(page, engine_dir, eraser_engine_dir):
    page.select_option("#model", engine_dir.name)
    assert page.input_value("#mode") == "inpaint" and page.locator("#run").inner_text() == "Inpaint"
    assert visible(page, "#prompt") and visible(page, "#num_inference_steps") and not visible(page, "#hd_strategy")
    assert page.locator("#mode option[value=erase]").is_disabled(), "a diffusion model has no Erase mode"
    page.fill("#prompt", "a wooden bench")
    page.fill("#num_inference_steps", "2")
    page.evaluate(RECORD_FORMS)
    done = page.evaluate("() => window.inpaintrt.state.results.length")
    page.click("#run")  # the mask painted for the eraser is kept: inpaint it with the diffusion engine
    page.wait_for_function(f"() => window.inpaintrt.state.results.length === {done + 1}", timeout=120_000)
    sent = page.evaluate("() => window.sentForms")[-1]
    assert part(sent, "prompt") == "a wooden bench" and part(sent, "hd_strategy") is None, sent
    assert page.locator("#seed-used").inner_text().startswith("seed ")

    page.select_option("#model", eraser_engine_dir.name)
    assert page.input_value("#mode") == "erase" and not visible(page, "#prompt")
    assert page.locator("#mode option[value=inpaint]").is_disabled() and visible(page, "#eraser-fields")
    assert page.errors == []
