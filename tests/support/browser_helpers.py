"""Helpers of the browser tests: pages, mouse strokes in picture pixels, canvas pixels, what the page sent."""
from __future__ import annotations

import base64
import io
import os

import numpy as np
from PIL import Image

BLOB_AS_BASE64 = """async (which) => {
  const blob = which === "mask" ? await window.inpaintrt.editor.maskBlob() : window.inpaintrt.state.current.result;
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let text = ""; for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}"""


def decoded(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def open_page(browser, server, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")
    return page


def screenshot(page, tmp_path, name: str):
    """Into tmp_path, and into INPAINTRT_SCREENSHOT_DIR (the docs' pictures) when that is set."""
    page.screenshot(path=str(tmp_path / name))
    assert (tmp_path / name).stat().st_size > 10_000
    if os.environ.get("INPAINTRT_SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["INPAINTRT_SCREENSHOT_DIR"], name))


CANVAS_PIXEL = """([x, y]) => {
  const c = document.getElementById("view");
  return Array.from(c.getContext("2d").getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3));
}"""


def canvas_pixel(page, x: int, y: int) -> list[int]:
    """What the canvas shows at the centre of picture pixel (x, y) (device pixel ratio 1)."""
    box = page.locator("#view").bounding_box()
    sx, sy = to_screen(page, x + 0.5, y + 0.5)
    return page.evaluate(CANVAS_PIXEL, [sx - box["x"], sy - box["y"]])


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


RECORD_FORMS = """() => {  // the text fields of every job POSTed (Chromium does not show multipart bodies with files)
  window.sentForms = [];
  const original = window.fetch;
  window.fetch = (path, options = {}) => {
    if (options.method === "POST" && options.body instanceof FormData) {
      window.sentForms.push(Object.fromEntries([...options.body].filter(([, v]) => typeof v === "string")));
    }
    return original(path, options);
  };
}"""


def part(form: dict, name: str) -> str | None:
    return form.get(name)


def in_view(page, selector: str, width: int, height: int) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width \
        and box["y"] + box["height"] <= height


RECORD_CANVAS = """() => {  // the canvas as each overlay (a preview, then the result) is drawn
  const editor = window.inpaintrt.editor, original = editor.setOverlay.bind(editor);
  window.canvasShots = [];
  editor.setOverlay = (image, box) => {
    original(image, box);
    window.canvasShots.push([image instanceof HTMLImageElement ? "preview" : "result",
      document.getElementById("view").toDataURL()]);
  };
}"""
