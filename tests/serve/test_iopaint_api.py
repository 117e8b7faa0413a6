"""IOPaint's /api/v1 routes (`inpaint-serve --page iopaint`) in the real app with real tiny engines (Stable
Diffusion, the default; a LaMa eraser; Segment Anything): every field of IOPaint's ServerConfigResponse, ModelInfo
and InpaintRequest (read from the installed iopaint/schema.py, not imported), the inpaint answer equal pixel for
pixel to Engine.inpaint with the mapped settings and the X-Seed seed, IOPaint's sampler names mapped to schedulers,
settings this engine lacks refused by name with the `errors` text the page shows, the eraser erasing, the model
switch, InteractiveSeg giving Engine.segment's mask, and the CLI's clear error without iopaint installed; bad clicks,
gen-info files and bodies are 4xx naming their field, and refusals read in IOPaint's names."""
from __future__ import annotations

import ast
import base64
import io
import re

import numpy as np
import pytest
from PIL import Image, ImageFilter, PngImagePlugin

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
if __import__("importlib.util").util.find_spec("iopaint") is None:
    pytest.skip("IOPaint's page is not installed: pip install --no-deps iopaint", allow_module_level=True)

from fastapi.testclient import TestClient  # noqa: E402

from serve_helpers import picture  # noqa: E402

from inpaintrt.serve.app import Settings, create_app  # noqa: E402
from inpaintrt.serve.iopaint import web_app_folder  # noqa: E402

SIZE = (72, 56)  # multiples of 8: the engine generates at the picture's own size
BRUSH = (255, 204, 0, 187)  # the page's "#ffcc00bb"


@pytest.fixture(scope="module")
def client(engine_dir, eraser_engine_dir, sam_engine_dir):
    settings = Settings(engine_dir=str(engine_dir), more_engines=[str(eraser_engine_dir), str(sam_engine_dir)],
                        page="iopaint")
    with TestClient(create_app(settings)) as c:  # the lifespan loads every engine
        yield c


@pytest.fixture(scope="module")
def loaded(engine_dir, eraser_engine_dir, sam_engine_dir):
    from inpaintrt import Engine

    return {"sd": Engine.load(engine_dir), "lama": Engine.load(eraser_engine_dir), "sam": Engine.load(sam_engine_dir)}


@pytest.fixture(autouse=True)
def diffusion_first(client, engine_dir):
    yield
    client.post("/api/v1/model", json={"name": engine_dir.name})  # each test starts on the SD engine


def schema() -> dict:
    """{class: {field: default}} of the installed iopaint/schema.py, computed fields under "<class>.computed"."""
    tree = ast.parse((web_app_folder().parent / "schema.py").read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    enums = {name: {s.targets[0].id: s.value.value for s in node.body
                    if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)}
             for name, node in classes.items()}

    def value(node):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Field":
            return value(node.args[0]) if node.args else "?"
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in enums:
            return enums[node.value.id][node.attr]
        return "?"  # defined elsewhere (const.py): not compared

    found = {}
    for name, node in classes.items():
        found[name] = {s.target.id: value(s.value) if s.value is not None else "required" for s in node.body
                       if isinstance(s, ast.AnnAssign)}
        found[name + ".computed"] = [f.name for f in node.body if isinstance(f, ast.FunctionDef)
                                     and any(getattr(d, "id", "") == "computed_field" for d in f.decorator_list)]
    return found


def data_url(image: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def painted(size=SIZE) -> tuple[Image.Image, np.ndarray]:
    """(the page's kind of mask: brush colour on transparent, with faint anti-aliased edge pixels, the engine's
    0 / 255 mask: what IOPaint reads from it, grey above 127 whatever the alpha)."""
    pixels = np.zeros((size[1], size[0], 4), np.uint8)
    pixels[14:40, 20:50] = BRUSH
    pixels[13, 20:50] = (255, 204, 0, 9)  # a stroke's soft edge: still the brush colour, nearly transparent
    pixels[40, 20:50] = (40, 30, 0, 60)  # dark: grey 45, not painted
    grey = np.asarray(Image.fromarray(pixels, "RGBA").convert("L"))
    return Image.fromarray(pixels, "RGBA"), np.where(grey > 127, 255, 0).astype(np.uint8)


def page_request(image: Image.Image, mask: Image.Image, **settings) -> dict:
    """The body IOPaint 1.6's page sends (its misspelt hd_strategy fields included), with `settings` changed."""
    body = {"image": data_url(image), "mask": data_url(mask), "ldm_steps": 30, "ldm_sampler": "ddim",
            "zits_wireframe": True, "cv2_flag": "INPAINT_NS", "cv2_radius": 5, "hd_strategy": "Crop",
            "hd_strategy_crop_triger_size": 640, "hd_strategy_crop_margin": 128, "hd_trategy_resize_imit": 2048,
            "prompt": "a red bench", "negative_prompt": "blurry", "use_croper": False, "croper_x": 0, "croper_y": 0,
            "croper_height": 512, "croper_width": 512, "use_extender": False, "extender_x": 0, "extender_y": 0,
            "extender_height": 512, "extender_width": 512, "sd_mask_blur": 12, "sd_strength": 1, "sd_steps": 2,
            "sd_guidance_scale": 7.5, "sd_sampler": "DPM++ 2M", "sd_seed": -1, "sd_match_histograms": False,
            "sd_lcm_lora": False, "paint_by_example_example_image": None, "p2p_image_guidance_scale": 1.5,
            "enable_controlnet": False, "controlnet_conditioning_scale": 0.4,
            "controlnet_method": "lllyasviel/control_v11p_sd15_canny", "enable_brushnet": False,
            "brushnet_method": "random_mask", "brushnet_conditioning_scale": 1, "enable_powerpaint_v2": False,
            "powerpaint_task": "text-guided"}
    return {**body, **settings}


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def reference(engine, image, mask, seed, scheduler="dpmpp_2m", scheduler_options=None, **more) -> np.ndarray:
    """Engine.inpaint with what the mapping says: keep_unmasked, the picture's size, blur_factor from sd_mask_blur."""
    arguments = dict(prompt="a red bench", negative_prompt="blurry", num_inference_steps=2, guidance_scale=7.5,
                     strength=1.0, blur_factor=0.3 * (12 - 1) + 0.8, keep_unmasked=True, height=SIZE[1],
                     width=SIZE[0], scheduler=scheduler, scheduler_options=scheduler_options)
    result = engine.inpaint(image, Image.fromarray(mask), generator=seed, progress=False, **{**arguments, **more})
    return np.asarray(result.images[0].convert("RGB"))


def refusal(answer, field: str, status: int = 422) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"]["field"] == field, body
    assert body["errors"].startswith(f"{field}: "), "the page's toast shows `errors`"
    return body


def test_server_config_and_model_have_every_iopaint_field(client, engine_dir, eraser_engine_dir, sam_engine_dir):
    fields = schema()
    config = client.get("/api/v1/server-config")
    assert config.status_code == 200, config.text
    assert set(config.json()) == set(fields["ServerConfigResponse"]), "a missing field blanks the page"
    config = config.json()
    assert [m["name"] for m in config["modelInfos"]] == [engine_dir.name, eraser_engine_dir.name]
    assert config["plugins"] == [{"name": "InteractiveSeg", "support_gen_image": False, "support_gen_mask": True}]
    assert config["interactiveSegModels"] == [sam_engine_dir.name] and not config["enableFileManager"]
    assert not config["disableModelSwitch"], "two inpainting engines to switch between (server-wide, as IOPaint's)"
    assert config["samplers"] == client.get("/api/v1/samplers").json()
    assert "DPM++ 2M" in config["samplers"] and "DPM2" not in config["samplers"], "only samplers that map"

    every = set(fields["ModelInfo"]) | set(fields["ModelInfo.computed"])
    model = client.get("/api/v1/model").json()
    assert set(model) == every and model["name"] == engine_dir.name
    assert model["model_type"] == "diffusers_sd_inpaint" and model["need_prompt"] and model["support_strength"]
    assert not model["support_controlnet"] and not model["support_outpainting"], "what this server does"
    eraser = next(m for m in config["modelInfos"] if m["name"] == eraser_engine_dir.name)
    assert set(eraser) == every and eraser["model_type"] == "inpaint" and not eraser["need_prompt"]


def test_inpaint_request_has_iopaints_fields_and_defaults():
    from inpaintrt.serve.iopaint_fields import InpaintRequest

    theirs = schema()["InpaintRequest"]
    ours = {name: field.default for name, field in InpaintRequest.model_fields.items()}
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    differ = {name: (value, ours[name]) for name, value in theirs.items() if value != "?" and ours[name] != value}
    assert not differ, differ


def jobs_run(client) -> float:
    """Inpaint jobs the engines' JobManagers finished (from /metrics)."""
    found = re.search(r'inpaintrt_job_run_seconds_count\{status="done",task="inpaint"\} (\S+)',
                      client.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def test_inpaint_is_the_engines_picture_for_the_answered_seed(client, loaded):
    image, (mask, engine_mask) = picture(*SIZE, seed=3), painted()
    before = jobs_run(client)
    answer = client.post("/api/v1/inpaint", json=page_request(image, mask))
    assert jobs_run(client) == before + 1, "run as a job of the engine's queue"
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    seed = int(answer.headers["X-Seed"])
    assert 1 <= seed <= 99_999_999, "sd_seed -1: a seed drawn as IOPaint draws it"
    result = pixels(answer.content)
    assert np.array_equal(result, reference(loaded["sd"], image, engine_mask, seed))
    kept = engine_mask == 0
    assert (result[~kept] != np.asarray(image)[~kept]).any()

    again = client.post("/api/v1/inpaint", json=page_request(image, mask, sd_seed=seed))
    assert again.headers["X-Seed"] == str(seed) and np.array_equal(pixels(again.content), result), "fixed seed"


@pytest.mark.parametrize("sampler, scheduler, options", [("Euler a", "euler_a", None),
                                                         ("DPM++ 2M Karras", "dpmpp_2m_karras", None),
                                                         ("LMS Karras", "lms", {"use_karras_sigmas": True})])
def test_iopaint_samplers_map_to_the_engines_schedulers(client, loaded, sampler, scheduler, options):
    image, (mask, engine_mask) = picture(*SIZE, seed=4), painted()
    answer = client.post("/api/v1/inpaint", json=page_request(image, mask, sd_sampler=sampler, sd_seed=77,
                                                               sd_strength=0.9, sd_guidance_scale=3.0,
                                                               sd_mask_blur=0))
    assert answer.status_code == 200, answer.text
    expected = reference(loaded["sd"], image, engine_mask, 77, scheduler, options, strength=0.9, guidance_scale=3.0,
                         blur_factor=0)
    assert np.array_equal(pixels(answer.content), expected)


def test_settings_this_engine_lacks_are_refused_by_name(client):
    image, (mask, _) = picture(*SIZE, seed=3), painted()
    for name, value in [("sd_lcm_lora", True), ("use_croper", True), ("enable_controlnet", True),
                        ("sd_match_histograms", True), ("enable_brushnet", True), ("use_extender", True),
                        ("paint_by_example_example_image", data_url(image))]:
        body = refusal(client.post("/api/v1/inpaint", json=page_request(image, mask, **{name: value})), name)
        assert "does not do" in body["error"]["message"]
    refusal(client.post("/api/v1/inpaint", json=page_request(image, mask, sd_sampler="DPM2 a")), "sd_sampler")
    refusal(client.post("/api/v1/inpaint", json=page_request(image, mask, sd_steps=0)), "sd_steps")
    refusal(client.post("/api/v1/inpaint", json=page_request(image, mask, sd_strength=0)), "sd_strength")
    refusal(client.post("/api/v1/inpaint", json=page_request(image, mask, sd_steps=True)), "sd_steps")
    refusal(client.post("/api/v1/inpaint", json=page_request(image, mask, sd_stepz=3)), "sd_stepz")
    refusal(client.post("/api/v1/inpaint", json=page_request(image, mask.resize((40, 40)))), "mask")
    refusal(client.post("/api/v1/inpaint", json={**page_request(image, mask), "image": "data:image/png;base64,@@"}),
            "image")
    refusal(client.post("/api/v1/inpaint", json={**page_request(image, mask), "mask": None}), "mask")
    refusal(client.post("/api/v1/inpaint", content=b"{", headers={"content-type": "application/json"}), "body", 400)
    # ignored as IOPaint ignores them for this model: other models' settings, the unused rectangles
    ignored = page_request(image, mask, ldm_steps=5, cv2_radius=9, croper_x=30, p2p_image_guidance_scale=4.0,
                           hd_strategy="Resize", controlnet_conditioning_scale=0.9, sd_steps=1)
    assert client.post("/api/v1/inpaint", json=ignored).status_code == 200


def test_an_eraser_engine_erases(client, loaded, eraser_engine_dir):
    switched = client.post("/api/v1/model", json={"name": eraser_engine_dir.name})
    assert switched.status_code == 200 and switched.json()["model_type"] == "inpaint"
    assert client.get("/api/v1/model").json()["name"] == eraser_engine_dir.name
    image, (mask, engine_mask) = picture(70, 50, seed=6), painted((70, 50))
    # an eraser takes IOPaint's hd_strategy fields; the diffusion settings the page sends are ignored
    answer = client.post("/api/v1/inpaint", json=page_request(image, mask, hd_strategy="Original", sd_lcm_lora=True))
    assert answer.status_code == 200, answer.text
    expected = loaded["lama"].inpaint(image, Image.fromarray(engine_mask), hd_strategy="original", progress=False)
    result = pixels(answer.content)
    assert np.array_equal(result, np.asarray(expected.images[0].convert("RGB")))
    kept = engine_mask == 0
    assert np.array_equal(result[kept], np.asarray(image)[kept])
    refusal(client.post("/api/v1/inpaint", json=page_request(image, mask, hd_strategy="Tiles")), "hd_strategy")

    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full((50, 70), 200, np.uint8)))
    kept_alpha = client.post("/api/v1/inpaint", json=page_request(rgba, mask))
    assert Image.open(io.BytesIO(kept_alpha.content)).getchannel("A").getextrema() == (200, 200), "alpha put back"
    jpeg = client.post("/api/v1/inpaint", json={**page_request(image, mask), "image": data_url(image, "JPEG")})
    assert jpeg.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.content)).format == "JPEG"


def test_model_switch_names_the_engines(client, engine_dir, sam_engine_dir):
    body = refusal(client.post("/api/v1/model", json={"name": "sd-xl"}), "name")
    assert engine_dir.name in body["error"]["message"]
    refusal(client.post("/api/v1/model", json={"name": sam_engine_dir.name}), "name")  # a mask maker: a plugin
    refusal(client.post("/api/v1/switch_plugin_model", json={"plugin_name": "RemoveBG", "model_name": "u2net"}),
            "plugin_name")
    ok = client.post("/api/v1/switch_plugin_model", json={"plugin_name": "InteractiveSeg",
                                                          "model_name": sam_engine_dir.name})
    assert ok.status_code == 200


def test_interactive_seg_is_the_engines_mask(client, loaded):
    image = picture(*SIZE, seed=8)
    clicks = [[30.5, 20, 1, 0], [60, 44.25, 0, 1]]  # the page's [x, y, label, index]; x, y may be fractional
    answer = client.post("/api/v1/run_plugin_gen_mask", json={"name": "InteractiveSeg", "image": data_url(image),
                                                              "clicks": clicks})
    assert answer.status_code == 200, answer.text
    found = Image.open(io.BytesIO(answer.content))
    assert found.mode == "RGBA" and found.size == SIZE
    inside = loaded["sam"].segment(image, points=[[30.5, 20], [60, 44.25]], labels=[1, 0]).masks[0]
    grown = np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(9))) > 0
    alpha = np.asarray(found)[..., 3]
    assert grown.any() and np.array_equal(alpha > 0, grown), "IOPaint grows the mask by a 9x9 square"
    assert (np.asarray(found)[grown] == (255, 203, 0, 186)).all(), "in the page's brush colour"
    refusal(client.post("/api/v1/run_plugin_gen_mask", json={"name": "InteractiveSeg", "image": data_url(image),
                                                             "clicks": [[500, 5, 1, 0]]}), "clicks")
    refusal(client.post("/api/v1/run_plugin_gen_mask", json={"name": "RemoveBG", "image": data_url(image)}), "name")


def test_gen_info_input_image_adjust_mask_and_no_socket_io(client):
    text = PngImagePlugin.PngInfo()
    text.add_text("parameters", "a cat on a sofa\nNegative prompt: dogs, blur\nSteps: 20, Sampler: Euler a, Seed: 1")
    buffer = io.BytesIO()
    picture(16, 16).save(buffer, format="PNG", pnginfo=text)
    info = client.post("/api/v1/gen-info", files={"file": ("a.png", buffer.getvalue(), "image/png")})
    assert info.json() == {"prompt": "a cat on a sofa", "negative_prompt": "dogs, blur"}
    plain = io.BytesIO()
    picture(16, 16).save(plain, format="PNG")
    assert client.post("/api/v1/gen-info", files={"file": ("b.png", plain.getvalue())}).json() == \
        {"prompt": "", "negative_prompt": ""}
    refusal(client.post("/api/v1/gen-info", files={"file": ("c.png", b"not a picture")}), "file")

    none = client.get("/api/v1/inputimage")
    assert none.status_code == 200 and not none.headers["content-type"].startswith("image"), "IOPaint: 200, no image"
    mask, _ = painted()
    reversed_ = client.post("/api/v1/adjust_mask", json={"mask": data_url(mask), "operate": "reverse"})
    alpha = np.asarray(Image.open(io.BytesIO(reversed_.content)))[..., 3]
    assert alpha[0, 0] == 186 and alpha[20, 30] == 0
    grown = client.post("/api/v1/adjust_mask", json={"mask": data_url(mask), "operate": "expand", "kernel_size": 2})
    assert (np.asarray(Image.open(io.BytesIO(grown.content)))[..., 3] > 0).sum() > (np.asarray(mask)[..., 3] > 0).sum()
    progress = client.get("/socket.io/", params={"EIO": 4, "transport": "polling"})
    assert progress.status_code == 404 and progress.json()["error"]["field"] == "socket.io"
    assert client.get("/").text.count("/assets/") >= 2, "IOPaint's own page at /"


def test_the_cli_names_the_install_line_without_iopaint(monkeypatch, capsys, engine_dir):
    import importlib.util

    from inpaintrt.serve import app, cli

    def started(*_):
        raise AssertionError("the server started")

    monkeypatch.setattr(app, "create_app", started)  # a check that let it through fails here, never hangs
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iopaint" else real(name, *a))
    assert cli.main(["--engine", str(engine_dir), "--page", "iopaint"]) == 2
    assert "install it with: pip install --no-deps iopaint" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert cli.main(["--engine", str(engine_dir), "--page", "iopaint", "--token", "t"]) == 2
    assert "sends no Authorization header" in capsys.readouterr().err


def plugin_body(image: Image.Image, clicks: str) -> bytes:
    """A run_plugin_gen_mask body as raw JSON text, so it can hold what Python's JSON reads as NaN or infinity."""
    return f'{{"name": "InteractiveSeg", "image": "{data_url(image)}", "clicks": {clicks}}}'.encode()


@pytest.mark.parametrize("clicks", ["[[10, 10, NaN]]", "[[10, 10, Infinity]]", "[[10, 10, 1e999]]",
                                    "[[NaN, 10, 1]]", "[[true, 5, 1]]", '[[10, "5", 1]]', "[[10, 10, 0.5]]",
                                    "[[10, 10, 2]]", "[[10, 10]]", "[]"])
def test_clicks_that_are_not_finite_numbers_or_labels_are_refused_naming_clicks(client, clicks):
    """A NaN or infinite label was a 500 (int() of it); true inside a click was read as 1."""
    answer = client.post("/api/v1/run_plugin_gen_mask", content=plugin_body(picture(*SIZE, seed=8), clicks),
                         headers={"content-type": "application/json"})
    assert "click" in refusal(answer, "clicks")["error"]["fix"], "the fix says what a click is"


def huge_png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (its IHDR rewritten, checksum included)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    picture(8, 8).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 4  # the signature, then the chunk's length: "IHDR" and its 13 bytes follow
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def test_gen_info_checks_the_picture_as_every_upload(client):
    """A header over PIL's bomb limit was a 500 (DecompressionBombError); over --max-pixels it was read anyway."""
    for width, height in ((20_000, 20_000), (5_000, 5_000)):  # PIL's bomb; over the 4096 x 4096 default
        answer = client.post("/api/v1/gen-info", files={"file": ("big.png", huge_png_header(width, height))})
        assert "pixels" in refusal(answer, "file", 413)["error"]["fix"]


def test_gen_info_over_the_upload_cap_is_a_413(engine_dir):
    """A body streamed past --max-upload-mb (no Content-Length to refuse it by) was turned into a 400."""
    app = create_app(Settings(engine_dir=str(engine_dir), page="iopaint", max_upload_mb=0.01))
    client = TestClient(app)  # no lifespan: the route reads no engine
    boundary = "xyz"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"x" * 40_000 + f"\r\n--{boundary}--\r\n".encode()
    chunks = (body[start:start + 4096] for start in range(0, len(body), 4096))  # chunked: no Content-Length
    answer = client.post("/api/v1/gen-info", content=chunks,
                         headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    refusal(answer, "body", 413)


def test_interactive_seg_without_engines_is_refused_at_once(client, sam_engine_dir):
    """No engine to lend (the Ray Serve ingress has none that segment): the plugin waited for ever."""
    import threading

    served_engine = client.app.state.manager.models[sam_engine_dir.name]
    kept = served_engine.manager.engines, served_engine.segment_pool
    served_engine.manager.engines, served_engine.segment_pool = [], None
    answers = []
    try:
        asking = threading.Thread(target=lambda: answers.append(client.post(
            "/api/v1/run_plugin_gen_mask", json={"name": "InteractiveSeg", "image": data_url(picture(*SIZE)),
                                                 "clicks": [[5, 5, 1, 0]]})), daemon=True)
        asking.start()
        asking.join(30)
        assert answers, "the request is answered, not left waiting for an engine"
    finally:
        served_engine.manager.engines, served_engine.segment_pool = kept
    assert "cannot segment" in refusal(answers[0], "name")["error"]["message"]


def test_a_renamed_refusal_reads_in_iopaints_names(client, engine_dir):
    """Only names written as fields are renamed: a memory refusal of the generated size names sd_scale, the
    field the page sends, and its text keeps height=56 or width=72 (sd_scale=56 would be nonsense, and was)."""
    image, (mask, _) = picture(*SIZE, seed=3), painted()
    body = refusal(client.post("/api/v1/inpaint", json=page_request(image, mask, sd_strength=0)), "sd_strength")
    assert body["error"]["message"].startswith("sd_strength=0.0") and body["error"]["fix"].startswith(
        "send sd_strength as"), body
    settings = Settings(engine_dir=str(engine_dir), page="iopaint", max_request_memory_mb=0.001)
    with TestClient(create_app(settings)) as small:
        body = refusal(small.post("/api/v1/inpaint", json=page_request(image, mask)), "sd_scale")
        assert small.get("/api/v1/server-config").json()["disableModelSwitch"], "one inpainting engine: no switch"
    assert "sd_scale=" not in body["errors"] and re.search(r"\b(height=56|width=72)\b", body["errors"]), body


def test_mpo_uploads_are_answered_as_jpeg():
    """PIL reads many phone cameras' JPEGs as MPO: the answer is a JPEG, not a PNG."""
    from inpaintrt.serve.iopaint_pictures import encode_answer, read_upload

    image, buffer = picture(*SIZE, seed=2), io.BytesIO()
    image.save(buffer, format="MPO", save_all=True, append_images=[image])
    upload = read_upload("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), "image", 10**6)
    content, kind = encode_answer(image, upload)
    assert kind == "image/jpeg" and Image.open(io.BytesIO(content)).format == "JPEG"


def test_settings_refuse_the_iopaint_page_with_a_token(engine_dir):
    """Every create_app caller, not only the CLI: the page sends no Authorization header."""
    with pytest.raises(ValueError, match="sends no Authorization header"):
        Settings(engine_dir=str(engine_dir), page="iopaint", token="t")
