"""The page's ControlNet section in headless Chromium (Debian's package, driven by Playwright) against a real
`inpaint-serve` of two engines: tiny ones with two ControlNets (inpaint, plain) and without any. Picking a
control image, a scale and guess mode runs Engine.inpaint with those arguments and the seed the page reads
back, pixel for pixel; a control image of another size is stretched to the picture's before it is sent; the
section follows the chosen model and mode; a refusal shows its field and fix next to its control."""
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
from browser_helpers import BLOB_AS_BASE64, decoded, open_page, paint, screenshot  # noqa: E402
from pictures import sample_image  # noqa: E402
from controlnet_helpers import edge_picture  # noqa: E402
from serve_helpers import running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)")

WIDTH, HEIGHT = 96, 64

# every part of every job POSTed, files as base64 (Chromium does not show multipart bodies with files)
RECORD_PARTS = """() => {
  window.sentParts = [];
  const original = window.fetch;
  const base64 = async (blob) => {
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let text = ""; for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text);
  };
  window.fetch = async (path, options = {}) => {
    if (options.method === "POST" && options.body instanceof FormData) {
      const parts = [];
      for (const [name, value] of options.body) parts.push([name, typeof value === "string" ? value : await base64(value)]);
      window.sentParts.push(parts);
    }
    return original(path, options);
  };
}"""


def sent(page, name: str) -> list:
    """The last job's parts of that name, in order (files as bytes)."""
    parts = page.evaluate("() => window.sentParts[window.sentParts.length - 1]")
    return [value if name not in ("image", "mask_image", "control_image", "image_prompt") else base64.b64decode(value)
            for part, value in parts if part == name]


@pytest.fixture(scope="module")
def served(controlnet_exported, engines):
    """The two-ControlNet engine (the default model) and the plain 9-channel one, in one server."""
    with running_server(controlnet_exported["engines"][9], "--engine", str(engines[9])) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, served):
    page = open_page(browser, served, 1280, 800)
    page.wait_for_function("() => document.querySelectorAll('#controlnet-list .unit').length === 2")
    yield page
    page.close()


@pytest.fixture(scope="module")
def engine(controlnet_exported):
    from inpaintrt import Engine

    return Engine.load(controlnet_exported["engines"][9])


def open_picture(page, tmp_path, width=WIDTH, height=HEIGHT):
    sample_picture(width, height)[0].save(tmp_path / "input.png")
    page.set_input_files("#image-file", str(tmp_path / "input.png"))
    page.wait_for_function(f"() => window.inpaintrt.editor.width === {width} && !window.inpaintrt.editor.overlay")
    page.click("#clear")
    paint(page, [(20, 30), (60, 26), (80, 40)])


def run_and_wait(page):
    done = page.evaluate("() => window.inpaintrt.state.results.length")
    page.click("#run")
    page.wait_for_function(f"() => window.inpaintrt.state.results.length === {done + 1} || "
                           "document.getElementById('status').classList.contains('error')", timeout=120_000)
    assert page.evaluate("() => window.inpaintrt.state.results.length") == done + 1, page.inner_text("#status")


def engine_result(page, engine, **guides) -> np.ndarray:
    """Engine.inpaint with what the page sent: its picture, mask, fields and the seed it reads back."""
    seed = page.evaluate("() => window.inpaintrt.state.current.seed")
    result = engine.inpaint(sent(page, "image")[0], sent(page, "mask_image")[0], prompt=page.input_value("#prompt"), generator=seed, progress=False,
                            num_inference_steps=int(page.input_value("#num_inference_steps")),
                            guidance_scale=float(page.input_value("#guidance_scale")),
                            **({"keep_unmasked": True} if sent(page, "keep_unmasked") == ["true"] else {}), **guides)
    return np.asarray(result.images[0])


def test_control_image_scale_and_guess_mode_run_engine_inpaint(page, engine, tmp_path):
    info = page.evaluate("async () => (await (await fetch('/v1/info')).json()).model")
    kinds = [net["kind"] for net in info["controlnets"]]
    assert kinds == ["inpaint", "plain"]
    titles = page.locator("#controlnet-list .unit-title").all_inner_texts()
    assert [title.split(". ")[1].split(",")[0] for title in titles] == kinds, "one picker per ControlNet, in order"
    scales = [page.input_value(f"#controlnet_conditioning_scale-{i}") for i in range(2)]
    assert scales == [str(info["default_controlnet_scale"])] * 2, "the scales start at the model's default"
    assert "built from the picture and its mask" in page.locator("#controlnet-0 .note").inner_text()

    open_picture(page, tmp_path)
    edges = edge_picture(WIDTH, HEIGHT)
    edges.save(tmp_path / "edges.png")
    page.set_input_files("#control_image-1", str(tmp_path / "edges.png"))  # the plain ControlNet's
    page.wait_for_function("() => !document.querySelector('#controlnet-1 .thumb').hidden")
    assert page.locator("#controlnet-1 .note").inner_text() == f"{WIDTH}×{HEIGHT}."
    page.fill("#controlnet_conditioning_scale-1", "0.8")
    page.check("#guess_mode")
    page.fill("#prompt", "a red bench")
    page.fill("#num_inference_steps", "3")
    page.evaluate(RECORD_PARTS)
    run_and_wait(page)

    controls = sent(page, "control_image")
    assert controls[0] == b"" and controls[1] == (tmp_path / "edges.png").read_bytes(), \
        "an empty part keeps the inpaint ControlNet's place; the picked file goes as it is"
    assert sent(page, "controlnet_conditioning_scale") == ["0.5", "0.8"] and sent(page, "guess_mode") == ["true"]
    got = decoded(page.evaluate(BLOB_AS_BASE64, "result"))
    expected = engine_result(page, engine, control_image=[None, controls[1]], controlnet_conditioning_scale=[0.5, 0.8],
                             guess_mode=True)
    assert np.array_equal(got, expected), "the page's picture is Engine.inpaint's with the same arguments and seed"
    free = engine_result(page, engine, controlnet_conditioning_scale=[0.0, 0.0])
    assert not np.array_equal(got, free), "the ControlNets steered"
    page.locator("#controlnet-fields").scroll_into_view_if_needed()
    screenshot(page, tmp_path, "serve-page-controlnet.png")
    assert page.errors == []


def test_a_control_image_of_another_size_is_stretched_to_the_picture(page, engine, tmp_path):
    open_picture(page, tmp_path)
    edge_picture(2 * WIDTH, HEIGHT + 8, seed=5).save(tmp_path / "wide.png")
    page.set_input_files("#control_image-1", str(tmp_path / "wide.png"))
    page.wait_for_function("() => document.querySelector('#controlnet-1 .note').textContent.includes('stretched')")
    assert page.locator("#controlnet-1 .note").inner_text() == \
        f"{2 * WIDTH}×{HEIGHT + 8}: stretched to the picture's {WIDTH}×{HEIGHT} when sent."
    page.uncheck("#guess_mode")
    page.fill("#controlnet_conditioning_scale-0", "0.5")  # set here: the page is shared with the other tests
    page.fill("#controlnet_conditioning_scale-1", "0.8")
    page.fill("#control_guidance_end", "0.6")
    page.evaluate(RECORD_PARTS)
    run_and_wait(page)

    control = sent(page, "control_image")[1]
    assert Image.open(io.BytesIO(control)).size == (WIDTH, HEIGHT)
    assert sent(page, "control_guidance_end") == ["0.6"] and sent(page, "guess_mode") == ["false"]
    expected = engine_result(page, engine, control_image=[None, control], controlnet_conditioning_scale=[0.5, 0.8],
                             control_guidance_end=0.6)
    assert np.array_equal(decoded(page.evaluate(BLOB_AS_BASE64, "result")), expected)

    page.click("#controlnet-1 .remove")  # back to none: no control_image part at all
    assert page.locator("#controlnet-1 .note").inner_text() == "None: this ControlNet does not run."
    page.fill("#control_guidance_end", "1")
    assert page.errors == []


def test_the_section_follows_the_model_and_the_mode(page, tmp_path):
    assert page.locator("#controlnet-fields").is_visible()
    assert not page.locator("#image-prompt-fields").is_visible(), "no image prompts on a Stable Diffusion engine"
    page.select_option("#model", "engine9")
    assert not page.locator("#controlnet-fields").is_visible(), "hidden for an engine without ControlNets"
    open_picture(page, tmp_path)
    page.evaluate(RECORD_PARTS)
    run_and_wait(page)
    names = {name for name, _ in page.evaluate("() => window.sentParts[0]")}
    assert not names & {"control_image", "controlnet_conditioning_scale", "control_guidance_start", "guess_mode"}
    assert page.evaluate("() => window.inpaintrt.state.current.model") == "engine9"

    page.select_option("#model", "cn-9")
    assert page.locator("#controlnet-fields").is_visible()
    assert page.locator("#controlnet-list .unit").count() == 2
    page.select_option("#mode", "outpaint")
    assert not page.locator("#controlnet-fields").is_visible(), "outpaint sends no control images"
    page.select_option("#mode", "inpaint")
    assert page.locator("#controlnet-fields").is_visible()
    for i in range(2):  # every control has a label a screen reader reads
        assert page.get_by_label(f"Choose the control image of ControlNet {i + 1}", exact=False).count() == 1
    assert page.get_by_label("Guess mode").count() == 1 and page.get_by_label("Guidance start").count() == 1
    assert page.errors == []


def test_a_refusal_shows_its_field_and_fix_next_to_the_control(page, tmp_path):
    open_picture(page, tmp_path)
    page.fill("#control_guidance_start", "0.7")
    page.fill("#control_guidance_end", "0.4")
    page.click("#run")
    note = page.locator(".field-error")
    note.wait_for()
    assert note.get_attribute("data-field") == "control_guidance_start"
    assert note.inner_text().startswith("control_guidance_start: send 0 <= control_guidance_start <")
    assert page.evaluate("() => document.getElementById('control_guidance_start').closest('label')"
                         ".nextElementSibling.classList.contains('field-error')"), "right under its control"
    assert page.get_attribute("#control_guidance_start", "aria-invalid") == "true"
    assert page.get_attribute("#control_guidance_start", "aria-describedby") == note.get_attribute("id")
    assert "is not before control_guidance_end" in page.locator("#status").inner_text()
    page.fill("#control_guidance_start", "0")
    assert note.count() == 0 and page.get_attribute("#control_guidance_start", "aria-invalid") is None, \
        "editing the field clears its error"
    page.fill("#control_guidance_end", "1")
    page.evaluate("() => { document.getElementById('num_inference_steps').max = ''; }")
    page.fill("#num_inference_steps", "100000")  # above the server's max_steps: the steps field's error
    page.click("#run")
    page.locator(".field-error[data-field='num_inference_steps']").wait_for()
    assert page.get_attribute("#num_inference_steps", "aria-invalid") == "true"
    page.fill("#num_inference_steps", "3")
    # the server names one of several control images in its message: the note goes to that picker
    page.evaluate("() => window.inpaintrt.fieldErrors.show('control_image', 'send each control image at exactly "
                  "the image\\'s size', 'control_image: control_image[1] is 200x72 but image is 96x64')")
    assert page.locator("#controlnet-1 .field-error").inner_text().startswith("control_image: send each")
    assert page.get_attribute("#controlnet-1 .pick", "aria-invalid") == "true"
    page.evaluate("() => window.inpaintrt.fieldErrors.clear()")
    # the page's refusals come back in the console as failed requests; nothing else went wrong
    assert all("422" in error for error in page.errors), page.errors


@pytest.fixture(scope="module")
def kandinsky_page(browser, kandinsky):
    """A server of a Kandinsky 2.2 engine with the prior's image encoder and a decoder-only one without."""
    with running_server(kandinsky.engine, "--engine", str(kandinsky.decoder_engine)) as server:
        page = open_page(browser, server, 1280, 800)
        page.wait_for_function("() => window.inpaintrt.state.models")
        yield page
        page.close()


def test_kandinsky_image_prompts_with_weights_run_engine_inpaint(kandinsky_page, kandinsky, tmp_path):
    from inpaintrt import Engine

    page = kandinsky_page
    assert page.locator("#image-prompt-fields").is_visible() and not page.locator("#controlnet-fields").is_visible()
    assert page.locator("#mode option[value=outpaint]").is_disabled(), "Kandinsky engines have no outpaint"
    open_picture(page, tmp_path, 64, 64)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"style{i}.png")
        sample_image(48 + 8 * i, 40, seed=30 + i).save(paths[-1])
    page.set_input_files("#image_prompt", [str(p) for p in paths[:2]])
    page.wait_for_function("() => window.inpaintrt.imagePrompts.entries.length === 2")
    page.fill("#image_prompt_weight-1", "0.4")
    page.fill("#prompt_weight", "0.6")
    page.fill("#prompt", "a red bench")
    page.fill("#num_inference_steps", "3")
    page.evaluate(RECORD_PARTS)
    run_and_wait(page)

    pictures = sent(page, "image_prompt")
    names = {name for name, _ in page.evaluate("() => window.sentParts[0]")}
    assert not names & {"keep_unmasked", "mask_mode", "masked_content", "blur_factor", "mask_grow"}, \
        "Stable Diffusion-only fields are hidden and not sent for a Kandinsky model"
    assert not page.locator("#keep_unmasked").is_visible() and not page.locator("#strength").is_visible()
    assert pictures == [p.read_bytes() for p in paths[:2]], "the pictures go as they are, in order"
    assert sent(page, "image_prompt_weight") == ["1", "0.4"] and sent(page, "prompt_weight") == ["0.6"]
    engine = Engine.load(kandinsky.engine)
    expected = engine_result(page, engine, image_prompts=list(zip(pictures, [1.0, 0.4])), prompt_weight=0.6)
    got = decoded(page.evaluate(BLOB_AS_BASE64, "result"))
    assert np.array_equal(got, expected), "the page's picture is KandinskyEngine.inpaint's for the same seed"
    assert not np.array_equal(got, engine_result(page, engine)), "the image prompts counted"

    page.set_input_files("#image_prompt", [str(p) for p in paths[2:]])  # 3 more: only 2 fit
    page.wait_for_function("() => window.inpaintrt.imagePrompts.entries.length === 4")
    assert page.locator("#add-image-prompt").is_disabled() and page.locator("#image-prompt-count").inner_text() == "4 of 4"
    page.get_by_label("Remove image prompt 1", exact=False).click()
    assert not page.locator("#add-image-prompt").is_disabled()
    assert page.get_by_label("Weight of image prompt 1", exact=False).input_value() == "0.4", "the rest move up"

    page.select_option("#model", "decoder-engine")  # exported without the image encoder: nothing to pick
    assert not page.locator("#image-prompt-fields").is_visible()
    page.select_option("#model", "engine")
    assert page.locator("#image-prompt-fields").is_visible()
    assert page.errors == []
