"""IOPaint's own web page (from the installed iopaint package) driving `inpaint-serve --page iopaint` in headless
Chromium (Debian's, through Playwright), with a tiny Stable Diffusion engine (the default), a LaMa eraser and a
Segment Anything engine: the page loads (not blank), a picture is uploaded, steps and sampler set, a stroke drawn
and run, and the picture shown is Engine.inpaint's for the mask and settings the page sent and the seed the server
answered; a click with InteractiveSeg gives Engine.segment's mask; the eraser, picked in the page's settings,
erases a stroke. No request is answered 4xx / 5xx except Socket.IO's progress, which this server leaves out."""
from __future__ import annotations

import base64
import io
import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
if __import__("importlib.util").util.find_spec("iopaint") is None:
    pytest.skip("IOPaint's page is not installed: pip install --no-deps iopaint", allow_module_level=True)

from serve_helpers import picture, running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)")
SIZE = (160, 120)
CAPTURED = ("/api/v1/inpaint", "/api/v1/run_plugin_gen_mask", "/api/v1/model")


@pytest.fixture(scope="module")
def server(engine_dir, eraser_engine_dir, sam_engine_dir):
    with running_server(engine_dir, "--engine", str(eraser_engine_dir), "--engine", str(sam_engine_dir),
                        "--page", "iopaint") as s:
        yield s


@pytest.fixture(scope="module")
def loaded(engine_dir, eraser_engine_dir, sam_engine_dir):
    from inpaintrt import Engine

    return {"sd": Engine.load(engine_dir), "lama": Engine.load(eraser_engine_dir), "sam": Engine.load(sam_engine_dir)}


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.errors, page.refused, page.calls = [], [], []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error"
                and "/socket.io/" not in (m.location or {}).get("url", "") else None)
        page.on("response", lambda r: page.refused.append(f"{r.status} {r.url}")
                if r.status >= 400 and "/socket.io/" not in r.url else None)

        def through(route):  # the request the page sent and the server's answer, passed on unchanged
            answer = route.fetch()
            body = answer.body()
            page.calls.append((route.request.method, route.request.url, json.loads(route.request.post_data or "null"),
                               answer.status, answer.headers, body))
            route.fulfill(response=answer)

        for path in CAPTURED:
            page.route(f"**{path}", through)
        page.goto(server.url + "/")
        folder = tmp_path_factory.mktemp("iopaint-page")
        picture(*SIZE, seed=3).save(folder / "input.png")
        page.input_file = str(folder / "input.png")
        yield page
        browser.close()


def decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def painted(mask_url: str) -> np.ndarray:
    """The mask as IOPaint's server reads it: grey level (alpha ignored) above 127."""
    return np.where(np.asarray(decoded(mask_url).convert("L")) > 127, 255, 0).astype(np.uint8)


def call(page, path: str, seconds: float = 60):
    """The first captured POST to `path` not looked at yet: (request JSON, status, headers, body)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i, (method, url, sent, status, headers, body) in enumerate(page.calls):
            if method == "POST" and url.endswith(path):
                del page.calls[i]
                return sent, status, headers, body
        page.wait_for_timeout(100)
    raise AssertionError(f"the page sent no {path} request")


def shown(page, expected: np.ndarray, seconds: float = 10) -> np.ndarray:
    """The editor's picture canvas once it shows `expected` (or after `seconds`: what it shows then)."""
    end = time.monotonic() + seconds
    while True:
        url = page.evaluate("() => document.querySelector('canvas').toDataURL()")
        found = np.asarray(decoded(url).convert("RGB"))
        if (found.shape == expected.shape and np.array_equal(found, expected)) or time.monotonic() > end:
            return found
        page.wait_for_timeout(100)


def settled_box(page) -> dict:
    """The editor canvas's box once it stays put (the page re-centres it, animated, when its panels change)."""
    box = None
    for _ in range(50):
        page.wait_for_timeout(100)
        found = page.locator("canvas").last.bounding_box()
        if found == box:
            return box
        box = found
    return box


def stroke(page, points):
    """A brush stroke through picture pixels `points` on the editor's canvas."""
    box = settled_box(page)
    scale = box["width"] / SIZE[0]
    at = [(box["x"] + x * scale, box["y"] + y * scale) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for point in at[1:]:
        page.mouse.move(*point, steps=8)
    page.mouse.up()


def test_the_page_inpaints_with_the_engines_picture(page, loaded, engine_dir):
    page.get_by_role("button", name="Paint").wait_for()
    page.get_by_text(engine_dir.name, exact=True).wait_for()  # not blank: GET /api/v1/model's name in the side panel
    assert page.get_by_text("Sampler", exact=True).is_visible(), "the diffusion settings"
    page.set_input_files("header input[type=file]", page.input_file)
    page.locator("canvas").first.wait_for()
    page.get_by_placeholder("I want to repaint of...").fill("a red bench")
    page.fill("#steps", "2")
    page.keyboard.press("Enter")
    page.click("button[role=combobox]")
    page.get_by_role("option", name="Euler a", exact=True).click()
    stroke(page, [(40, 60), (90, 50), (120, 70)])
    page.get_by_role("button", name="Paint").click()

    sent, status, headers, body = call(page, "/api/v1/inpaint")
    assert status == 200 and headers["content-type"] == "image/png"
    assert (sent["sd_steps"], sent["sd_sampler"], sent["prompt"], sent["sd_seed"]) == (2, "Euler a", "a red bench", -1)
    mask, seed = painted(sent["mask"]), int(headers["x-seed"])
    assert 200 < (mask == 255).sum() < mask.size / 2, "the stroke, in the page's brush colour"
    image = decoded(sent["image"]).convert("RGB")
    expected = loaded["sd"].inpaint(
        image, Image.fromarray(mask), prompt=sent["prompt"], negative_prompt=sent["negative_prompt"],
        num_inference_steps=2, guidance_scale=sent["sd_guidance_scale"], strength=sent["sd_strength"],
        scheduler="euler_a", generator=seed, blur_factor=0.3 * (sent["sd_mask_blur"] - 1) + 0.8, keep_unmasked=True,
        height=SIZE[1], width=SIZE[0], progress=False).images[0]
    expected = np.asarray(expected.convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), expected)
    assert np.array_equal(shown(page, expected), expected), "the page shows Engine.inpaint's picture"
    assert page.input_value("input#seed") == str(seed), "the page shows the seed the server answered"
    assert page.refused == [] and page.errors == []


def test_a_click_gives_segment_anythings_mask(page, loaded):
    page.mouse.click(42, 87)  # the plugins menu, top left of the editor
    page.get_by_role("menuitem", name="Interactive Segmentation").click()
    box = page.locator("canvas").last.bounding_box()
    page.mouse.click(box["x"] + 50 * box["width"] / SIZE[0], box["y"] + 40 * box["height"] / SIZE[1])

    sent, status, headers, body = call(page, "/api/v1/run_plugin_gen_mask")
    assert status == 200 and sent["name"] == "InteractiveSeg" and len(sent["clicks"]) == 1
    x, y, label = sent["clicks"][0][:3]
    assert abs(x - 50) <= 1 and abs(y - 40) <= 1 and label == 1
    image = decoded(sent["image"]).convert("RGB")
    inside = loaded["sam"].segment(image, points=[[x, y]], labels=[1]).masks[0]
    grown = np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(9))) > 0
    answered = np.asarray(Image.open(io.BytesIO(body)))
    assert answered.shape == (SIZE[1], SIZE[0], 4) and grown.any()
    assert np.array_equal(answered[..., 3] > 0, grown), "Engine.segment's mask, grown as IOPaint grows it"
    page.get_by_role("button", name="Cancel").click()
    assert page.refused == [] and page.errors == []


def test_the_eraser_picked_in_settings_erases_a_stroke(page, loaded, eraser_engine_dir):
    page.mouse.click(1237, 30)  # the settings gear
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    page.get_by_text(eraser_engine_dir.name, exact=True).click()
    page.get_by_role("button", name="Ok").click()
    sent, status, _, body = call(page, "/api/v1/model")
    assert status == 200 and sent == {"name": eraser_engine_dir.name} and json.loads(body)["model_type"] == "inpaint"
    page.get_by_text(f"Switch to {eraser_engine_dir.name} success", exact=True).wait_for()  # the page's toast
    # the page takes the new model just after its toast: an eraser has no prompt, and runs as a stroke ends
    page.get_by_placeholder("I want to repaint of...").wait_for(state="hidden")
    stroke(page, [(20, 20), (60, 30), (100, 90)])
    sent, status, headers, body = call(page, "/api/v1/inpaint")
    assert status == 200, body
    mask, image = painted(sent["mask"]), decoded(sent["image"]).convert("RGB")
    assert 200 < (mask == 255).sum() < mask.size / 2
    expected = np.asarray(loaded["lama"].inpaint(image, Image.fromarray(mask), progress=False).images[0])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), expected)
    kept = mask == 0
    assert np.array_equal(expected[kept], np.asarray(image)[kept]), "every unpainted pixel is the picture's"
    assert np.array_equal(shown(page, expected), expected), "the page shows EraserEngine.inpaint's picture"
    assert page.refused == [] and page.errors == []
